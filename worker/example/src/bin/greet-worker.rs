//! `keel-worker`, running the `greet` kind beside Keel's own.
fn main() -> std::process::ExitCode {
    keel_worker::cli::main_with_kinds(keel_example::registry())
}
