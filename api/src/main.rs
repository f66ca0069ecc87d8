//! `keel-api`: see the library crate.
// mimalloc, not glibc malloc: under glibc the API's RSS rose with every
// burst of requests in flight and never came down (47 → 263 MiB in a
// 15-minute `keel-bench soak`); under mimalloc it returns what a burst took.
// The worker and scheduler stay on glibc: flat there, and smaller.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    keel_api::cli::main()
}
