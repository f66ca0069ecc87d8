//! What the benches start and set up: Keel processes (stopped with SIGTERM
//! when done, killed if the bench fails) and throwaway users.

use std::process::{Child, Command, Stdio};

use anyhow::Context as _;
use keel_shared::{
    db::users::{self, NewUser, ProfileChanges},
    domain::{EmailAddress, Role, Username},
};
use sqlx::PgPool;
use uuid::Uuid;

/// Keel processes the bench started.
#[derive(Debug, Default)]
pub struct Fleet(Vec<Child>);

impl Fleet {
    /// Starts `binary` (a release build) on the bench's database and Redis
    /// prefix, with `env` on top.
    ///
    /// Returns the process id.
    ///
    /// # Errors
    /// The binary cannot be started.
    pub fn start(
        &mut self,
        binary: &str,
        database_url: &str,
        redis_url: &str,
        prefix: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<u32> {
        let child = Command::new(binary)
            .env("DATABASE_URL", database_url)
            .env("REDIS_URL", redis_url)
            .env("REDIS_PREFIX", prefix)
            .env("METRICS_PORT", "0")
            .env("HOST", "127.0.0.1")
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {binary} (build it with --release)"))?;
        let pid = child.id();
        self.0.push(child);
        Ok(pid)
    }

    /// SIGTERM to each, then waits for them all.
    pub fn stop(&mut self) {
        for child in &mut self.0 {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        for mut child in self.0.drain(..) {
            let _ = child.wait();
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
        }
    }
}

/// Resident memory of process `pid`, in KiB.
///
/// # Errors
/// The process is gone, or its status has no `VmRSS`.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    proc_kib(pid, "status", "VmRSS")
}

/// Of `pid`'s resident memory, the part in transparent huge pages
/// (`AnonHugePages`), in KiB: 0 when Keel turned THP off, as it does.
pub fn huge_pages_kib(pid: u32) -> anyhow::Result<u64> {
    proc_kib(pid, "smaps_rollup", "AnonHugePages")
}

/// The `key:  N kB` line of `/proc/<pid>/<file>`, in KiB.
fn proc_kib(pid: u32, file: &str, key: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/{file}");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {key} in {path}"))
}

/// A fresh user to own what a run creates.
pub async fn bench_user(pool: &PgPool) -> anyhow::Result<Uuid> {
    let name = format!("bench_{}", &Uuid::new_v4().simple().to_string()[..12]);
    let user = users::insert(
        pool,
        &NewUser {
            username: Username::parse(&name)?,
            email: EmailAddress::parse(&format!("{name}@bench.invalid"))?,
            password_hash: "!".into(),
            role: Role::User,
            email_verified: true,
            profile: ProfileChanges::default(),
        },
    )
    .await?;
    Ok(user.id)
}
