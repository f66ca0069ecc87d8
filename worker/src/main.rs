//! `keel-worker`: see the library crate.
fn main() -> std::process::ExitCode {
    keel_worker::cli::main()
}
