//! Redis for tests: a key prefix of each test's own on the shared server,
//! or a server of the test's own for tests that stop, wipe or weigh it.

use crate::processes::{ChildGuard, free_port};

/// A Redis key prefix no other test uses.
pub fn unique_redis_prefix() -> String {
    format!("test-{}", uuid::Uuid::new_v4().simple())
}

/// A `redis://` URL on a port where nothing listens.
pub fn unreachable_redis_url() -> String {
    format!("redis://127.0.0.1:{}", free_port())
}

/// The Redis tests use: `REDIS_URL`, else the local default.
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A Redis server of the test's own (`redis-server` on a free loopback
/// port, keeping nothing on disk), for tests that stop, wipe or weigh
/// Redis — which they must not do to the one every other test shares.
#[derive(Debug)]
pub struct RedisServer {
    pub port: u16,
    process: Option<ChildGuard>,
}

impl RedisServer {
    /// Starts a server and waits until it answers.
    ///
    /// # Panics
    /// When `redis-server` cannot start.
    pub async fn start() -> Self {
        let mut server = Self {
            port: free_port(),
            process: None,
        };
        server.restart().await;
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops the server at once, saving nothing (what a crash of a Redis
    /// without persistence does).
    pub fn stop(&mut self) {
        drop(self.process.take());
    }

    /// Starts the server again, empty, on the same port.
    ///
    /// # Panics
    /// When it does not come up within 10 s.
    pub async fn restart(&mut self) {
        self.stop();
        let mut command = std::process::Command::new("redis-server");
        command.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]);
        self.process = Some(ChildGuard::spawn(command));
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while tokio::time::Instant::now() < deadline {
            if let Ok(client) = redis::Client::open(self.url())
                && let Ok(mut conn) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok()
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    /// A connection to this server.
    ///
    /// # Panics
    /// When the server does not answer.
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("a redis URL")
            .get_multiplexed_async_connection()
            .await
            .expect("the test's Redis answers")
    }

    /// `INFO memory`'s `used_memory`, in bytes.
    ///
    /// # Panics
    /// When the server does not answer.
    pub async fn used_memory(&self) -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut self.conn().await)
            .await
            .expect("INFO answers");
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("INFO memory has used_memory")
    }
}
