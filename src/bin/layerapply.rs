//! `layerapply`: same as `layerkit apply`.
fn main() -> std::process::ExitCode {
    layerkit::cli::main(layerkit::cli::Personality::Apply)
}
