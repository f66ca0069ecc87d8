//! `keel-api`: see the library crate.
fn main() -> std::process::ExitCode {
    keel_api::cli::main()
}
