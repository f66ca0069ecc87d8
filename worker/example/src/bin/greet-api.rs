//! `keel-api`, offering the `greet` kind beside Keel's own.
fn main() -> std::process::ExitCode {
    keel_api::cli::main_with_kinds(keel_example::registry())
}
