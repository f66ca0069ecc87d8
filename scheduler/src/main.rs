//! `keel-scheduler`: see the library crate.
fn main() -> std::process::ExitCode {
    keel_scheduler::cli::main()
}
