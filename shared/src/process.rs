//! What a background process (worker, scheduler) stands on: proven
//! connections to Postgres and Redis and its ops server; and the frame of
//! every binary's `main`: runtime, telemetry, exit code.

use std::{future::Future, net::SocketAddr, process::ExitCode};

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::{
    Config, RedisClient, config, db,
    ops_server::{OpsProbe, OpsServer},
    shutdown, telemetry,
};

/// Connections and the bound ops server of a background process.
#[derive(Debug)]
pub struct Backbone {
    pub db: PgPool,
    pub redis: RedisClient,
    pub ops: OpsServer,
}

impl Backbone {
    /// Connects to Postgres and Redis (failing clearly when either is
    /// unreachable) and binds `/health` and `/metrics` on `METRICS_PORT`,
    /// or `default_port` when unset.
    ///
    /// # Errors
    /// A dependency cannot be reached or the port cannot be bound.
    pub async fn connect(config: &Config, default_port: u16) -> anyhow::Result<Self> {
        // Their statements work on batches of tasks by id (see `db::Plans`).
        let db = db::connect_with(config, db::Plans::PerCall).await?;
        if !db::migrations_current(&db).await.unwrap_or(false) {
            tracing::warn!("the database has pending migrations; run `keel-api migrate`");
        }
        let redis = RedisClient::connect(config).await?;
        let addr = SocketAddr::new(
            config.http.host,
            config.process.metrics_port.unwrap_or(default_port),
        );
        let probe = OpsProbe {
            db: db.clone(),
            redis: redis.clone(),
            environment: config.process.environment,
            queue_gauges: None,
        };
        let ops = OpsServer::bind(addr, probe).await.map_err(|e| {
            anyhow::anyhow!("cannot listen on {addr} for /health and /metrics (METRICS_PORT): {e}")
        })?;
        tracing::info!(address = %ops.local_addr()?, "serving /health and /metrics");
        Ok(Self { db, redis, ops })
    }
}

/// A background process (the worker, the scheduler), as its `main` runs it.
pub trait Service: Sized {
    /// The binary, as logs and errors name it.
    const NAME: &'static str;

    /// Connects what the process stands on.
    fn build(config: &Config) -> impl Future<Output = anyhow::Result<Self>>;

    /// Cancelling this token stops the process as a stop signal would.
    fn shutdown_token(&self) -> CancellationToken;

    /// Does the process's work until it is stopped; `Err` only when it
    /// cannot go on.
    fn run_until_stopped(self) -> impl Future<Output = anyhow::Result<()>>;
}

/// The `main` of a background process: `config` checked (exit 2 if it is
/// wrong), then `S` built and run until a stop signal; exit 0 after a clean
/// stop, 1 on failure.
pub fn serve<S: Service>(config: &Config) -> ExitCode {
    if let Err(e) = config.validate() {
        config::exit_config(&e.0);
    }
    run_main(S::NAME, config, async {
        let service = S::build(config).await?;
        shutdown::cancel_on_signal(service.shutdown_token());
        service.run_until_stopped().await
    })
}

/// Runs `body` on a multi-threaded runtime with telemetry set up; returns
/// exit code 0 on success and 1 (after one line on stderr) on failure.
pub fn run_main<F>(service: &'static str, config: &Config, body: F) -> ExitCode
where
    F: Future<Output = anyhow::Result<()>>,
{
    without_transparent_huge_pages();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::Error::new(e).context("starting the async runtime"))
        .and_then(|runtime| {
            telemetry::init(service, config);
            for setting in config.insecure_overrides() {
                tracing::warn!(
                    variable = setting.variable(),
                    "an insecure setting is kept in production because ALLOW_INSECURE_SETTINGS names it"
                );
            }
            runtime.block_on(body)
        });
    exit_code(service, result)
}

/// Turns transparent huge pages off for this process, before the runtime
/// allocates much. With THP on (`always`, or `madvise`, which mimalloc asks
/// for on its arenas), the kernel's khugepaged, scanning a few MiB every ten
/// seconds, folds any 2 MiB range with one page in use into a huge page: the
/// API's RSS stepped up by tens of MiB minutes into a steady `keel-bench
/// soak`, with no change in load, and half of it was `AnonHugePages`. Off,
/// RSS follows the memory in use, as Redis and PostgreSQL advise; a process
/// of this size gains nothing measurable from fewer TLB misses.
fn without_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        // A kernel without the flag (before 3.15): run as the host is set.
        eprintln!("could not turn transparent huge pages off: {e}");
    }
}

/// 0 for success; 1, with the error's chain on stderr and in the log, for failure.
pub fn exit_code(service: &'static str, result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "{service} failed");
            eprintln!("{service}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `host-pid-suffix`: a restarted process never reuses a name, so its
/// predecessor's orphaned jobs (or claimed ticks) are recognised as such.
pub fn unique_name(hostname: &str) -> String {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{hostname}-{}-{}", std::process::id(), &suffix[..8])
}
