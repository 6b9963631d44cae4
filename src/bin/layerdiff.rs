//! `layerdiff`: same as `layerkit diff`.
fn main() -> std::process::ExitCode {
    layerkit::cli::main(layerkit::cli::Personality::Diff)
}
