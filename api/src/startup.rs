//! `Application`: builds the router and binds the listener (`build`),
//! reports its port (`port`), and serves until stopped, draining gracefully
//! (`run_until_stopped`).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use keel_shared::{
    Config, RedisClient,
    config::SigningKey,
    db,
    kinds::KindSettings,
    ops_server::{OpsProbe, OpsServer},
    queue::JobQueue,
    queue_metrics::QueueGauges,
    storage::Storage,
    task_intake::TaskIntake,
    telemetry,
};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_rustls::rustls::ServerConfig;
use tokio_util::sync::CancellationToken;
use tower::{Layer as _, util::MapRequestLayer};

use crate::{
    auth::{
        password::PasswordHasher, rate_limit::RateLimiter, tokens::TokenKeys, user_cache::UserCache,
    },
    listener,
    middleware::trailing_slash,
    routes, server,
    state::{AppState, Lifecycle, Parts},
    ws::hub::Hub,
};

/// Where the API serves `/metrics` (with `/health` and `/live`) unless
/// `METRICS_PORT` says otherwise: beside the worker's 9101 and the
/// scheduler's 9102, and never on the public port, where anyone could read it.
pub const DEFAULT_METRICS_PORT: u16 = 9100;

/// The API, bound and ready to serve.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    /// `/metrics`, `/health`, `/live` for scrapers and probes.
    ops: OpsServer,
    /// Set when the API terminates TLS itself.
    tls: Option<Arc<ServerConfig>>,
    state: AppState,
    shutdown: CancellationToken,
}

impl Application {
    /// Builds the API with pools that connect on first use, so it starts
    /// (and answers 503) while a dependency is down.
    ///
    /// # Errors
    /// A URL in the configuration is invalid, or the address cannot be bound.
    pub async fn build(config: Config, signing_key: SigningKey) -> anyhow::Result<Self> {
        let db = db::lazy_pool(&config)?;
        let redis = RedisClient::lazy(&config)?;
        Self::build_with(config, signing_key, db, redis).await
    }

    /// Builds the API over connections the caller made.
    ///
    /// # Errors
    /// The address cannot be bound, or the TLS files are unusable.
    pub async fn build_with(
        config: Config,
        signing_key: SigningKey,
        db: PgPool,
        redis: RedisClient,
    ) -> anyhow::Result<Self> {
        let addr = SocketAddr::new(config.http.host, config.http.port);
        let tls = match (&config.http.tls_cert_file, &config.http.tls_key_file) {
            (Some(cert), Some(key)) => Some(listener::tls_config(cert, key)?),
            _ => None,
        };
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let ops_addr = SocketAddr::new(
            config.http.host,
            config.process.metrics_port.unwrap_or(DEFAULT_METRICS_PORT),
        );
        let probe = OpsProbe {
            db: db.clone(),
            redis: redis.clone(),
            environment: config.process.environment,
            queue_gauges: None,
        };
        let mut ops = OpsServer::bind(ops_addr, probe)
            .await
            .with_context(|| format!("cannot listen on {ops_addr} for /metrics (METRICS_PORT)"))?;
        ops.export_queue_gauges();
        telemetry::spawn_metrics_upkeep();
        let storage = Storage::from_config(&config).context("file storage")?;
        tracing::info!(location = storage.location(), "files are stored");
        let state = AppState::new(Parts {
            storage,
            tokens: Arc::new(TokenKeys::new(&config, &signing_key)),
            hasher: PasswordHasher::new(),
            limiter: RateLimiter::new(
                redis.clone(),
                config.auth.rate_limit_enabled,
                config.auth.rate_limit_per_minute,
            ),
            users: UserCache::new(
                redis.clone(),
                Duration::from_secs(u64::from(config.auth.access_token_expire_minutes) * 60),
            ),
            hub: Hub::new(redis.clone()),
            gauges: QueueGauges::new(db.clone(), redis.clone()),
            jobs: JobQueue::new(redis.clone()),
            intake: TaskIntake::start(db.clone(), JobQueue::new(redis.clone())),
            kinds: Arc::new(KindSettings::from_config(&config)),
            db,
            redis,
            config: Arc::new(config),
            lifecycle: Lifecycle::default(),
        });
        if signing_key.previous.is_some() {
            spawn_reseal(&state);
        }
        Ok(Self {
            listener,
            ops,
            tls,
            state,
            shutdown: CancellationToken::new(),
        })
    }

    /// Where `/metrics` is served.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.ops
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// `https` when the API terminates TLS itself, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    /// Cancelling this token stops the server as a stop signal would.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Serves until the shutdown token is cancelled; then `/ready` turns 503,
    /// the listener keeps accepting for `SHUTDOWN_DRAIN_SECONDS`, stops, and
    /// in-flight requests get up to `SHUTDOWN_GRACE_SECONDS` to finish.
    ///
    /// # Errors
    /// The server fails to accept connections.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let Self {
            listener,
            ops,
            tls,
            state,
            shutdown,
        } = self;
        tracing::info!(address = %ops.local_addr()?, "serving /metrics, /health and /live");
        tokio::spawn(ops.serve(shutdown.clone()));
        let drain = Duration::from_secs(state.config.process.shutdown_drain_seconds);
        let grace = state.config.shutdown_grace();
        let lifecycle = state.lifecycle.clone();
        let limits = server::Limits {
            max_connections: state.config.http.max_connections as usize,
            keep_alive: Duration::from_secs(state.config.http.keep_alive_seconds),
        };
        server::raise_open_files_limit(limits.max_connections);
        state.users.listen(shutdown.clone());
        state.hub.listen(shutdown.clone());
        let hub = state.hub.clone();
        let router = routes::router(state);
        // Outside the router, so `/tasks/` is routed as `/tasks`.
        let app = MapRequestLayer::new(trailing_slash::trim).layer(router);
        let stop_accepting = {
            let shutdown = shutdown.clone();
            async move {
                shutdown.cancelled().await;
                lifecycle.start_draining();
                tokio::time::sleep(drain).await;
                tracing::info!("no longer accepting connections; finishing in-flight requests");
            }
        };
        let server = server::serve(listener, tls, app, limits, stop_accepting);
        let deadline = async {
            shutdown.cancelled().await;
            tokio::time::sleep(drain + grace).await;
        };
        let result = tokio::select! {
            result = server => result,
            () = deadline => {
                tracing::warn!(grace_seconds = grace.as_secs(), "grace period over; abandoning in-flight requests");
                Ok(())
            }
        };
        // WebSockets were told to close (1001) when the stop began; give
        // their close frames a moment to leave.
        let closing = tokio::time::Instant::now() + Duration::from_secs(2);
        while !hub.is_empty() && tokio::time::Instant::now() < closing {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        result
    }
}

/// Moves the TOTP secrets `SECRET_KEY_PREVIOUS` sealed to `SECRET_KEY`, in
/// the background: the API serves meanwhile, opening them with either key.
fn spawn_reseal(state: &AppState) {
    let (db, tokens) = (state.db.clone(), state.tokens.clone());
    tokio::spawn(async move {
        match crate::auth::totp::reseal_all(&db, &tokens.totp).await {
            Ok(resealed) => {
                tracing::info!(
                    resealed,
                    "TOTP secrets sealed under the previous SECRET_KEY now use the current one"
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not reseal TOTP secrets under the current SECRET_KEY; the next start will");
            }
        }
    });
}
