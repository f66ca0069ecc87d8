//! Test support for every crate's tests (`keel-testing`, a dev-dependency
//! only, so none of it is in the shipped binaries): each test gets its own freshly
//! migrated database on the local PostgreSQL and its own Redis key prefix,
//! so tests run in parallel against the real services.

use std::net::TcpListener;

use anyhow::Context as _;
use sqlx::{Connection as _, PgConnection, PgPool};

use keel_shared::{Config, db};

/// The server tests create their databases on: `KEEL_TEST_DATABASE_URL`,
/// else `DATABASE_URL`, else the local default. Its database part is ignored.
pub fn server_url() -> String {
    std::env::var("KEEL_TEST_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// Name prefix of every test database, so the test command can sweep leftovers.
pub const DATABASE_PREFIX: &str = "keel_test_";

/// A database of one test's own, migrated.
#[derive(Debug)]
pub struct TestDatabase {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
}

impl TestDatabase {
    /// Creates and migrates a database with a unique name.
    ///
    /// # Errors
    /// PostgreSQL is unreachable or refuses.
    pub async fn create() -> anyhow::Result<Self> {
        let name = format!("{DATABASE_PREFIX}{}", uuid::Uuid::new_v4().simple());
        let url = database_url(&name)?;
        let mut admin = PgConnection::connect(&database_url("postgres")?)
            .await
            .context("connecting to PostgreSQL to create a test database")?;
        // The name is ours (a prefix and a UUID), never input.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
            .execute(&mut admin)
            .await?;
        admin.close().await?;
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(5)
            .connect(&url)
            .await?;
        db::migrate(&pool).await?;
        Ok(Self { name, url, pool })
    }
}

/// The server's URL with `database` in place of its database.
///
/// # Errors
/// The server URL does not parse.
pub fn database_url(database: &str) -> anyhow::Result<String> {
    let mut url = url::Url::parse(&server_url()).context("the test database URL does not parse")?;
    url.set_path(&format!("/{database}"));
    Ok(url.into())
}

/// A Redis key prefix no other test uses.
pub fn unique_redis_prefix() -> String {
    format!("test-{}", uuid::Uuid::new_v4().simple())
}

/// A TCP port free at the time of asking, for processes that cannot report theirs.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A development configuration on `database_url` and `redis_prefix`,
/// listening on a free loopback port, with `extra` flags
/// (`["--rate-limit-enabled", "false"]`) on top.
///
/// # Panics
/// When a flag is wrong: a bug in the test.
pub fn config(database_url: &str, redis_prefix: &str, extra: &[&str]) -> Config {
    let mut args = vec![
        "--environment",
        "development",
        "--database-url",
        database_url,
        "--redis-prefix",
        redis_prefix,
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--database-timeout-seconds",
        "2",
    ];
    // A free port for `/metrics`, unless the test names one.
    if !extra.contains(&"--metrics-port") {
        args.extend_from_slice(&["--metrics-port", "0"]);
    }
    // Each test's files in a directory of its own (under target/, swept
    // with it), so an orphan sweep in one test never sees another's objects.
    let files_dir = test_files_dir();
    if !extra.contains(&"--files-dir") {
        args.extend_from_slice(&["--files-dir", &files_dir]);
    }
    args.extend_from_slice(extra);
    Config::from_flags(args).expect("test configuration parses")
}

/// A fresh directory for one test's files: `target/test-files/<uuid>`.
pub fn test_files_dir() -> String {
    let target = std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../target").to_owned());
    format!("{target}/test-files/{}", uuid::Uuid::new_v4().simple())
}

/// A `postgres://` URL on a port where nothing listens: a database that is down.
pub fn unreachable_database_url() -> String {
    format!("postgres://postgres@127.0.0.1:{}/keel", free_port())
}

/// A `redis://` URL on a port where nothing listens.
pub fn unreachable_redis_url() -> String {
    format!("redis://127.0.0.1:{}", free_port())
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

/// A background binary (worker, scheduler) on `database_url` and
/// `redis_prefix`, serving `/health` and `/metrics` on loopback `metrics_port`.
pub fn service_command(
    binary: &str,
    database_url: &str,
    redis_prefix: &str,
    metrics_port: u16,
) -> std::process::Command {
    let mut command = command(binary);
    command
        .env("DATABASE_URL", database_url)
        .env("REDIS_URL", redis_url())
        .env("REDIS_PREFIX", redis_prefix)
        .env("HOST", "127.0.0.1")
        .env("METRICS_PORT", metrics_port.to_string());
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

/// The Redis tests use: `REDIS_URL`, else the local default.
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

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

/// A verified `user` account named `{stem}_{random}` with no usable
/// password, for tests that need an owner for their rows.
///
/// # Panics
/// When the insert fails.
pub async fn insert_user(pool: &sqlx::PgPool, stem: &str) -> uuid::Uuid {
    use keel_shared::{
        db::users::{self, NewUser, ProfileChanges},
        domain::{EmailAddress, Role, Username},
    };
    let name = format!("{stem}_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    users::insert(
        pool,
        &NewUser {
            username: Username::parse(&name).expect("a valid test username"),
            email: EmailAddress::parse(&format!("{name}@example.com")).expect("a valid address"),
            password_hash: "!".into(),
            role: Role::User,
            email_verified: true,
            profile: ProfileChanges::default(),
        },
    )
    .await
    .expect("a test user")
    .id
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

/// Label pairs, sorted by name.
type Labels = Vec<(String, String)>;

/// One scrape of a `/metrics` page in the Prometheus text format, parsed
/// enough for tests to read exact values.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    text: String,
    /// `(name, labels, value)` per sample line.
    samples: Vec<(String, Labels, f64)>,
    /// Names with a `# TYPE` line, and those with a `# HELP` line.
    typed: Vec<String>,
    helped: Vec<String>,
}

impl Scrape {
    /// `GET url`, parsed.
    ///
    /// # Panics
    /// When the page does not answer 200.
    pub async fn fetch(url: &str) -> Self {
        let response = reqwest::get(url).await.expect("the metrics page answers");
        assert_eq!(response.status().as_u16(), 200, "GET {url}");
        Self::parse(&response.text().await.expect("the metrics text"))
    }

    /// Scrapes `url` until `done` holds or `timeout` passes; returns the
    /// last scrape either way, for the caller's assertions to explain.
    pub async fn fetch_until(
        url: &str,
        timeout: std::time::Duration,
        done: impl Fn(&Self) -> bool,
    ) -> Self {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let scrape = Self::fetch(url).await;
            if done(&scrape) || tokio::time::Instant::now() >= deadline {
                return scrape;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Parses the text format: comments, then `name{label="value",…} value`.
    pub fn parse(text: &str) -> Self {
        let mut scrape = Self {
            text: text.to_owned(),
            ..Self::default()
        };
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                scrape
                    .typed
                    .extend(rest.split(' ').next().map(str::to_owned));
            } else if let Some(rest) = line.strip_prefix("# HELP ") {
                scrape
                    .helped
                    .extend(rest.split(' ').next().map(str::to_owned));
            } else if !line.starts_with('#') {
                scrape.samples.push(parse_sample(line));
            }
        }
        scrape
    }

    /// The value of the sample `name` whose labels are exactly `labels`
    /// (in any order); `None` when there is no such sample.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut wanted: Labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        wanted.sort();
        self.samples
            .iter()
            .find(|(n, l, _)| n == name && *l == wanted)
            .map(|(_, _, v)| *v)
    }

    /// Whether any sample of `name` exists.
    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|(n, _, _)| n == name)
    }

    /// Series with a `# TYPE` line but no `# HELP` line.
    pub fn undescribed(&self) -> Vec<&str> {
        self.typed
            .iter()
            .filter(|t| !self.helped.contains(t))
            .map(String::as_str)
            .collect()
    }

    pub fn text(&self) -> &str {
        &self.text
    }
}

fn parse_sample(line: &str) -> (String, Labels, f64) {
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let close = line.rfind('}').expect("a label set ends with }");
            (
                &line[..open],
                parse_labels(&line[open + 1..close]),
                &line[close + 1..],
            )
        }
        None => {
            let (name, rest) = line.split_once(' ').expect("a sample has a value");
            (name, Vec::new(), rest)
        }
    };
    let value = rest
        .split_whitespace()
        .next()
        .and_then(|v| match v {
            "+Inf" => Some(f64::INFINITY),
            "-Inf" => Some(f64::NEG_INFINITY),
            v => v.parse().ok(),
        })
        .unwrap_or_else(|| panic!("no value in {line:?}"));
    (name.to_owned(), labels, value)
}

/// `a="x",b="y\"z"` → sorted pairs, escapes undone.
fn parse_labels(text: &str) -> Labels {
    let mut labels = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        let key = key.trim_start_matches(',').trim();
        if key.is_empty() {
            break;
        }
        assert_eq!(chars.next(), Some('"'), "label {key} has a quoted value");
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '"' => break,
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => {}
                },
                c => value.push(c),
            }
        }
        labels.push((key.to_owned(), value));
    }
    labels.sort();
    labels
}

#[cfg(test)]
mod tests {
    use super::Scrape;

    #[test]
    fn a_scrape_reads_values_by_exact_labels_and_finds_undescribed_series() {
        let scrape = Scrape::parse(concat!(
            "# HELP a_total Things.\n",
            "# TYPE a_total counter\n",
            "a_total{kind=\"x\",route=\"/t/{id}\"} 3\n",
            "a_total{kind=\"y \\\"q\\\"\"} 1\n\n",
            "# TYPE b gauge\n",
            "b 2.5\n",
            "h_bucket{le=\"+Inf\"} 4\n",
        ));
        assert_eq!(
            scrape.value("a_total", &[("route", "/t/{id}"), ("kind", "x")]),
            Some(3.0)
        );
        assert_eq!(scrape.value("a_total", &[("kind", "y \"q\"")]), Some(1.0));
        assert_eq!(
            scrape.value("a_total", &[("kind", "x")]),
            None,
            "labels match exactly"
        );
        assert_eq!(scrape.value("b", &[]), Some(2.5));
        assert_eq!(scrape.value("h_bucket", &[("le", "+Inf")]), Some(4.0));
        assert_eq!(scrape.undescribed(), ["b"]);
    }
}

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

/// Asserts what must hold of the `tasks` table whatever failed: no
/// `running` row whose lease ran out more than twice the reconcile
/// period ago (the reconciler takes such rows back), and no row that
/// finished before it started.
///
/// # Panics
/// When either is broken, naming the rows.
pub async fn assert_task_invariants(pool: &PgPool, reconcile: std::time::Duration) {
    let stale: Vec<(uuid::Uuid, f64)> = sqlx::query_as(
        "SELECT id, extract(epoch FROM now() - lease_expires_at)::float8 FROM tasks \
         WHERE status = 'running' AND lease_expires_at < now() - $1 * interval '1 millisecond'",
    )
    .bind(i64::try_from(2 * reconcile.as_millis()).unwrap_or(i64::MAX))
    .fetch_all(pool)
    .await
    .expect("the lease query");
    assert!(
        stale.is_empty(),
        "running rows with leases expired longer than 2 × {reconcile:?} (id, seconds): {stale:?}"
    );
    let backwards: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT id FROM tasks WHERE finished_at < started_at")
            .fetch_all(pool)
            .await
            .expect("the time query");
    assert!(
        backwards.is_empty(),
        "tasks finished before they started: {backwards:?}"
    );
}

/// Where the suite keeps its logs and the secrets its tests used
/// (`KEEL_TEST_LOG_DIR`, which the test command sets), so that a last
/// test can prove no log holds a secret. `None` outside the test command.
pub fn log_dir() -> Option<std::path::PathBuf> {
    std::env::var_os("KEEL_TEST_LOG_DIR").map(std::path::PathBuf::from)
}

/// Appends `line` to `name` in the log directory, if there is one.
fn append(name: &str, line: &str) {
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

/// An S3-compatible server for tests: moto in server mode (PyPI
/// `moto[server]`, installed into `.data/venv` from
/// deploy/local/requirements.txt) on a free loopback port, with one empty
/// bucket and an IAM user allowed `s3:*` on it. Moto checks every request's
/// SigV4 signature against that user's keys, as a real store would, so a
/// badly signed request fails here too. Killed when dropped (or by
/// [`MotoServer::stop`], for a store that is down).
#[derive(Debug)]
pub struct MotoServer {
    pub port: u16,
    pub bucket: String,
    /// The IAM user's keys, made by moto (recorded for the secrets check).
    access_key_id: String,
    secret_access_key: String,
    client: reqwest::Client,
    process: Option<ChildGuard>,
}

impl MotoServer {
    /// Starts moto, creates the user, its keys and the bucket with unsigned
    /// requests (moto takes those until told otherwise), then turns on
    /// authentication.
    ///
    /// # Panics
    /// When moto is not installed or does not come up within 30 s.
    pub async fn start() -> Self {
        let program = tools_bin().join("moto_server");
        assert!(
            program.exists(),
            "{} is missing: run deploy/local/test.sh, or `source deploy/local/services.sh && \
             ensure_python_tools`, or point KEEL_TOOLS_BIN at a directory that has it",
            program.display()
        );
        let port = free_port();
        let mut command = std::process::Command::new(&program);
        command
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            // Unbuffered, so what it says before dying is in the panic below.
            .env("PYTHONUNBUFFERED", "1");
        let mut process = ChildGuard::spawn(command);
        let endpoint = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        while client
            .get(format!("{endpoint}/moto-api/"))
            .send()
            .await
            .is_err()
        {
            if let Ok(Some(status)) = process.child.try_wait() {
                panic!("moto_server exited with {status}: {}", process.stderr());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "moto did not answer on {port} within 30 s: {}",
                process.stderr()
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }

        let iam = |params| moto_iam(&client, &endpoint, params);
        iam(&[("Action", "CreateUser"), ("UserName", "keel")]).await;
        let keys = iam(&[("Action", "CreateAccessKey"), ("UserName", "keel")]).await;
        let policy = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}"#;
        iam(&[
            ("Action", "PutUserPolicy"),
            ("UserName", "keel"),
            ("PolicyName", "s3"),
            ("PolicyDocument", policy),
        ])
        .await;
        let bucket = format!(
            "keel-test-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let created = client
            .put(format!("{endpoint}/{bucket}"))
            .send()
            .await
            .expect("moto answers");
        assert!(
            created.status().is_success(),
            "bucket: {}",
            created.status()
        );

        let server = Self {
            port,
            bucket,
            access_key_id: xml_text(&keys, "AccessKeyId"),
            secret_access_key: xml_text(&keys, "SecretAccessKey"),
            client,
            process: Some(process),
        };
        record_secret(&server.access_key_id);
        record_secret(&server.secret_access_key);
        server.require_signatures(true).await;
        server
    }

    /// Turns moto's authentication on (every request must be signed by the
    /// user's keys) or off.
    async fn require_signatures(&self, on: bool) {
        let unsigned_allowed = if on { "0" } else { "inf" };
        self.client
            .post(format!("{}/moto-api/reset-auth", self.endpoint()))
            .body(unsigned_allowed)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .expect("moto resets its authentication");
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The flags that point an app at this server's bucket, for
    /// `spawn_app_with` or [`config`].
    pub fn flags(&self) -> Vec<String> {
        [
            "--s3-bucket",
            &self.bucket,
            "--s3-endpoint",
            &self.endpoint(),
            "--s3-region",
            "us-east-1",
            "--s3-access-key-id",
            &self.access_key_id,
            "--s3-secret-access-key",
            &self.secret_access_key,
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// The keys in the bucket under `prefix`, asked of moto directly
    /// (`ListObjectsV2`), not through the store under test. Authentication
    /// is off meanwhile, so call it while the app is idle.
    ///
    /// # Panics
    /// When moto does not answer.
    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        let xml = self.list(&[("list-type", "2"), ("prefix", prefix)]).await;
        assert!(
            !xml.contains("<IsTruncated>true</IsTruncated>"),
            "a test bucket holds fewer than 1000 keys"
        );
        // Keys are Keel's own (`files/<uuid>`): nothing in them is escaped.
        xml.split("<Key>")
            .skip(1)
            .filter_map(|s| s.split_once("</Key>").map(|(key, _)| key.to_owned()))
            .collect()
    }

    /// How many multipart uploads of the bucket were started and neither
    /// completed nor aborted (`ListMultipartUploads`); like [`Self::keys`].
    ///
    /// # Panics
    /// When moto does not answer.
    pub async fn open_multipart_uploads(&self) -> usize {
        self.list(&[("uploads", "")])
            .await
            .matches("<UploadId>")
            .count()
    }

    /// `GET /<bucket>?<query>`, unsigned (authentication off meanwhile).
    async fn list(&self, query: &[(&str, &str)]) -> String {
        let url =
            url::Url::parse_with_params(&format!("{}/{}", self.endpoint(), self.bucket), query)
                .expect("a listing URL");
        self.require_signatures(false).await;
        let listing = self
            .client
            .get(url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status);
        self.require_signatures(true).await;
        listing
            .expect("moto lists the bucket")
            .text()
            .await
            .expect("a listing")
    }

    /// Kills the server: the store is down from now on.
    pub fn stop(&mut self) {
        drop(self.process.take());
    }
}

/// Calls moto's IAM query API with `params`, unsigned; the response's XML.
async fn moto_iam(client: &reqwest::Client, endpoint: &str, params: &[(&str, &str)]) -> String {
    let mut form = vec![("Version", "2010-05-08")];
    form.extend_from_slice(params);
    let response = client
        .post(format!("{endpoint}/"))
        // Unchecked while authentication is off: it only routes the request to IAM.
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=setup/20260101/us-east-1/iam/aws4_request, \
             SignedHeaders=host, Signature=0",
        )
        .form(&form)
        .send()
        .await
        .expect("moto answers");
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    assert!(status.is_success(), "moto IAM {params:?}: {status} {text}");
    text
}

/// The text of the first `<tag>` in `xml`.
fn xml_text(xml: &str, tag: &str) -> String {
    xml.split_once(&format!("<{tag}>"))
        .and_then(|(_, rest)| rest.split_once(&format!("</{tag}>")))
        .map(|(text, _)| text.to_owned())
        .unwrap_or_else(|| panic!("no <{tag}> in {xml}"))
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
