//! `layerkit`: the multi-command entry point.
fn main() -> std::process::ExitCode {
    layerkit::cli::main(layerkit::cli::Personality::Layerkit)
}
