//! A PostgreSQL server of a test's own, for tests that stop or restart it.

use keel_shared::db;
use sqlx::{Connection as _, PgConnection, PgPool};

use crate::processes::{ChildGuard, free_port};

/// A PostgreSQL server of the test's own (the machine's `postgres` on a
/// free loopback port, over a fresh data directory, without fsync), for
/// tests that stop or restart PostgreSQL — which they must not do to the
/// one every other test shares. Killed and removed when dropped.
#[derive(Debug)]
pub struct PostgresServer {
    pub port: u16,
    data: std::path::PathBuf,
    bin: std::path::PathBuf,
    process: Option<ChildGuard>,
}

impl PostgresServer {
    /// Creates a cluster (`initdb`), starts it and waits until it answers.
    ///
    /// # Panics
    /// When no PostgreSQL server binaries are installed or the cluster does not start.
    pub async fn start() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL's server binaries under /usr/lib/postgresql")
            .filter_map(Result::ok)
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("postgres").exists())
            // The newest by number: as strings, "9.6" would beat "16".
            .max_by_key(|p| {
                p.parent()
                    .and_then(|v| v.file_name())
                    .and_then(|v| v.to_str())
                    .and_then(|v| v.split('.').next())
                    .and_then(|v| v.parse::<u32>().ok())
                    .unwrap_or(0)
            })
            .expect("a PostgreSQL version with a bin/postgres");
        let data = std::env::temp_dir().join(format!("keel-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&data).expect("a data directory");
        let server = Self {
            port: free_port(),
            data,
            bin,
            process: None,
        };
        // initdb and postgres refuse to run as root: as root, run them as `postgres`.
        server.chown_to_postgres();
        let status = server
            .as_postgres(&server.bin.join("initdb"))
            .args(["-D", server.data.to_str().unwrap(), "-U", "postgres"])
            .args(["--auth", "trust", "--no-sync", "-E", "UTF8"])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("initdb runs");
        assert!(status.success(), "initdb failed");
        let mut server = server;
        server.restart().await;
        server
    }

    fn is_root() -> bool {
        std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
    }

    fn chown_to_postgres(&self) {
        if Self::is_root() {
            let status = std::process::Command::new("chown")
                .args(["-R", "postgres:postgres", self.data.to_str().unwrap()])
                .status()
                .expect("chown runs");
            assert!(status.success(), "chown of the data directory failed");
        }
    }

    fn as_postgres(&self, program: &std::path::Path) -> std::process::Command {
        if Self::is_root() {
            let mut command = std::process::Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            std::process::Command::new(program)
        }
    }

    /// `postgres://` URL of `database` on this server.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates database `name` and migrates it; returns its URL.
    ///
    /// # Panics
    /// When the server refuses.
    pub async fn create_database(&self, name: &str) -> String {
        let mut admin = PgConnection::connect(&self.url("postgres"))
            .await
            .expect("the test's PostgreSQL answers");
        // The name is the test's own constant, never input.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
            .execute(&mut admin)
            .await
            .expect("CREATE DATABASE");
        let url = self.url(name);
        let pool = PgPool::connect(&url).await.expect("the new database");
        db::migrate(&pool).await.expect("migrations run");
        pool.close().await;
        url
    }

    /// Stops the server at once (SIGKILL of the postmaster — a crash; its
    /// children follow when they see it gone).
    pub fn stop(&mut self) {
        if let Some(process) = self.process.take() {
            // The postmaster's pid is the first line of its lock file;
            // killing `runuser` would leave it running.
            if let Ok(lock) = std::fs::read_to_string(self.data.join("postmaster.pid"))
                && let Some(pid) = lock.lines().next()
            {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", pid.trim()])
                    .status();
            }
            drop(process);
            // Its backends see it gone and exit; until they have, a new
            // postmaster would refuse the shared memory they still hold.
            let pattern = format!("-D {} ", self.data.display());
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while std::process::Command::new("pgrep")
                .args(["-f", "--", &pattern])
                .stdout(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    }

    /// Starts the server again on the same data and port (recovering from a crash).
    ///
    /// # Panics
    /// When it does not answer within 30 s.
    pub async fn restart(&mut self) {
        self.stop();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        while tokio::time::Instant::now() < deadline {
            let running = self
                .process
                .as_mut()
                .is_some_and(|p| matches!(p.child.try_wait(), Ok(None)));
            if !running {
                // The first try can meet the old backends' shared memory: try again.
                let mut command = self.as_postgres(&self.bin.join("postgres"));
                command
                    .args([
                        "-D",
                        self.data.to_str().unwrap(),
                        "-p",
                        &self.port.to_string(),
                    ])
                    .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
                    .args([
                        "-c",
                        "unix_socket_directories=",
                        "-c",
                        "max_connections=200",
                    ]);
                self.process = Some(ChildGuard::spawn(command));
            }
            if let Ok(conn) = PgConnection::connect(&self.url("postgres")).await {
                let _ = conn.close().await;
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("postgres did not start on port {}", self.port);
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}
