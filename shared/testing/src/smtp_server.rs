//! A real SMTP server (aiosmtpd) writing what it accepts into a Maildir.

use crate::processes::{ChildGuard, free_port};

/// A real SMTP server for tests: Debian's aiosmtpd (`python3-aiosmtpd`,
/// which the test command installs) writing each message it accepts into a
/// Maildir. Killed when dropped.
#[derive(Debug)]
pub struct SmtpServer {
    pub port: u16,
    maildir: std::path::PathBuf,
    _process: ChildGuard,
}

impl SmtpServer {
    /// A server on a free port.
    pub async fn start() -> Self {
        Self::start_on(free_port()).await
    }

    /// A server on `port` (to bring one up where a mailer already points).
    ///
    /// # Panics
    /// When aiosmtpd cannot start.
    pub async fn start_on(port: u16) -> Self {
        let maildir = std::env::temp_dir().join(format!("keel-smtp-{}", uuid::Uuid::new_v4()));
        for sub in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(maildir.join(sub)).expect("a maildir");
        }
        let mut command = std::process::Command::new("/usr/bin/python3");
        command.args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")]);
        command
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir);
        let mut process = ChildGuard::spawn(command);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if let Ok(Some(status)) = process.child.try_wait() {
                panic!(
                    "aiosmtpd exited with {status}: {} (install python3-aiosmtpd)",
                    process.stderr()
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "aiosmtpd did not listen on {port}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        Self {
            port,
            maildir,
            _process: process,
        }
    }

    /// Every message received so far, raw, oldest first.
    pub fn messages(&self) -> Vec<String> {
        let mut files: Vec<_> = ["new", "cur"]
            .iter()
            .filter_map(|sub| std::fs::read_dir(self.maildir.join(sub)).ok())
            .flatten()
            .filter_map(Result::ok)
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        files.sort();
        files
            .into_iter()
            .filter_map(|(_, path)| std::fs::read_to_string(path).ok())
            .collect()
    }

    /// Waits until at least `n` messages arrived; returns them all.
    ///
    /// # Panics
    /// When they do not arrive within `timeout`.
    pub async fn wait_for(&self, n: usize, timeout: std::time::Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let messages = self.messages();
            if messages.len() >= n {
                return messages;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} of {n} messages within {timeout:?}",
                messages.len()
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Waits until at least `n` messages with this `subject` arrived;
    /// returns those, oldest first. Other mail (a notice the same request
    /// also sent) may come before or after them.
    ///
    /// # Panics
    /// When they do not arrive within `timeout`.
    pub async fn wait_for_subject(
        &self,
        subject: &str,
        n: usize,
        timeout: std::time::Duration,
    ) -> Vec<String> {
        let line = format!("Subject: {subject}");
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let messages: Vec<String> = self
                .messages()
                .into_iter()
                .filter(|m| m.contains(&line))
                .collect();
            if messages.len() >= n {
                return messages;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} of {n} messages titled {subject:?} within {timeout:?}",
                messages.len()
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.maildir);
    }
}
