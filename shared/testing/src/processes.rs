//! Child processes: Keel's binaries with a clean environment, a guard that
//! kills them and keeps their output, and waiting for them to answer.

use std::net::TcpListener;

use crate::logs::append;

/// A TCP port free at the time of asking, for processes that cannot report theirs.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Runs one of Keel's binaries with a clean environment (only `PATH`), so
/// the developer's own variables never leak into a test.
pub fn command(binary: &str) -> std::process::Command {
    let mut command = std::process::Command::new(binary);
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        // A free port for `/metrics`: tests run side by side.
        .env("METRICS_PORT", "0");
    command.current_dir(std::env::temp_dir());
    command
}

/// A child process that is killed if the test ends before it does. Its
/// output is drained as it comes (a full pipe would stall a chatty child)
/// and kept for [`ChildGuard::stderr`].
#[derive(Debug)]
pub struct ChildGuard {
    pub child: std::process::Child,
    /// Stdout and stderr, as read so far.
    output: [std::sync::Arc<std::sync::Mutex<String>>; 2],
    drains: Vec<std::thread::JoinHandle<()>>,
}

impl ChildGuard {
    /// Starts `command` with captured output.
    ///
    /// # Panics
    /// When the binary cannot be started.
    pub fn spawn(mut command: std::process::Command) -> Self {
        use std::process::Stdio;
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("binary starts");
        let output: [std::sync::Arc<std::sync::Mutex<String>>; 2] = Default::default();
        // Everything a child says also goes to the suite's logs, for the secrets check.
        let log_name = format!(
            "{}-{}.log",
            std::path::Path::new(command.get_program())
                .file_name()
                .map_or_else(|| "child".into(), |n| n.to_string_lossy()),
            child.id()
        );
        let mut drains = Vec::new();
        let pipes: [Option<Box<dyn std::io::Read + Send>>; 2] = [
            child.stdout.take().map(|p| Box::new(p) as _),
            child.stderr.take().map(|p| Box::new(p) as _),
        ];
        for (pipe, output) in pipes.into_iter().zip(output.iter()) {
            let Some(pipe) = pipe else { continue };
            let output = output.clone();
            let log_name = log_name.clone();
            drains.push(std::thread::spawn(move || {
                use std::io::BufRead as _;
                for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                    append(&log_name, &line);
                    let mut text = output.lock().expect("output buffer");
                    text.push_str(&line);
                    text.push('\n');
                }
            }));
        }
        Self {
            child,
            output,
            drains,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (`TERM`, `INT`, `KILL`, `STOP`, `CONT`) through `kill(1)`.
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} {} failed", self.pid());
    }

    /// Waits up to `timeout` for the process to exit; `None` if it did not.
    pub async fn wait_exit(
        &mut self,
        timeout: std::time::Duration,
    ) -> Option<std::process::ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// What the process wrote to stderr so far; after it exited, all of it.
    pub fn stderr(&mut self) -> String {
        self.read(1)
    }

    /// What the process wrote to stdout so far; after it exited, all of it.
    pub fn stdout(&mut self) -> String {
        self.read(0)
    }

    fn read(&mut self, pipe: usize) -> String {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            for drain in self.drains.drain(..) {
                let _ = drain.join();
            }
        }
        self.output[pipe].lock().expect("output buffer").clone()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `url` until it answers `expected` or `timeout` passes; returns the last response's body.
///
/// # Panics
/// When the status never comes.
pub async fn wait_for_status(url: &str, expected: u16, timeout: std::time::Duration) -> String {
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = String::from("no answer");
    while tokio::time::Instant::now() < deadline {
        if let Ok(response) = client.get(url).send().await {
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            if status == expected {
                return body;
            }
            last = format!("{status}: {body}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{url} did not answer {expected} within {timeout:?}; last: {last}");
}

/// The directory of the Python tools of deploy/local/requirements.txt:
/// `KEEL_TOOLS_BIN`, as the test command exports it, else the workspace's
/// own virtualenv.
pub fn tools_bin() -> std::path::PathBuf {
    std::env::var_os("KEEL_TOOLS_BIN").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.data/venv/bin"),
        std::path::PathBuf::from,
    )
}
