//! `keel-bench`: see the library crate.
fn main() -> std::process::ExitCode {
    keel_bench::main()
}
