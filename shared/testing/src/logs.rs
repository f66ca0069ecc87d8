//! The suite's logs and the secrets its tests used, for the secrets check.

/// Where the suite keeps its logs and the secrets its tests used
/// (`KEEL_TEST_LOG_DIR`, which the test command sets), so that a last
/// test can prove no log holds a secret. `None` outside the test command.
pub fn log_dir() -> Option<std::path::PathBuf> {
    std::env::var_os("KEEL_TEST_LOG_DIR").map(std::path::PathBuf::from)
}

/// Appends `line` to `name` in the log directory, if there is one.
pub(crate) fn append(name: &str, line: &str) {
    use std::io::Write as _;
    let Some(dir) = log_dir() else { return };
    let _ = std::fs::create_dir_all(&dir);
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(name))
    {
        // One write per line: lines from parallel tests never interleave.
        let _ = file.write_all(format!("{line}\n").as_bytes());
    }
}

/// Notes a secret a test used (a password, token, API key, 2FA code) for
/// the suite's last test, which looks for it in every log.
pub fn record_secret(secret: &str) {
    let secret = secret.trim();
    if !secret.is_empty() && !secret.contains('\n') {
        append(&format!("secrets-{}.txt", std::process::id()), secret);
    }
}

/// Sends this test process's `tracing` output, at `debug` for Keel's own
/// crates, to a file in the log directory — what an in-process app logs.
/// Does nothing outside the test command or when a subscriber is set.
pub fn log_in_process() {
    use tracing_subscriber::{EnvFilter, layer::SubscriberExt as _, util::SubscriberInitExt as _};
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Some(dir) = log_dir() else { return };
        let _ = std::fs::create_dir_all(&dir);
        let Ok(file) =
            std::fs::File::create(dir.join(format!("in-process-{}.log", std::process::id())))
        else {
            return;
        };
        let _ = tracing_subscriber::registry()
            .with(EnvFilter::new(
                "info,keel_api=debug,keel_shared=debug,keel_worker=debug,keel_scheduler=debug",
            ))
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::sync::Mutex::new(file)),
            )
            .try_init();
    });
}
