//! `AppState`: what handlers share. Handlers take only the part they use
//! (`State(db): State<PgPool>`), through `FromRef`.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use axum::extract::FromRef;
use keel_shared::{
    Config, RedisClient, job_queue::JobQueue, kinds::KindSettings, queue_metrics::QueueGauges,
};
use sqlx::PgPool;

use crate::auth::{
    password::PasswordHasher, rate_limit::RateLimiter, tokens::TokenKeys, user_cache::UserCache,
};

#[derive(Clone, Debug, FromRef)]
pub struct AppState {
    pub db: PgPool,
    pub redis: RedisClient,
    /// Pushes jobs to the Redis queues (over `redis`).
    pub jobs: JobQueue,
    /// What task kinds check payloads against, from `config`.
    pub kinds: Arc<KindSettings>,
    pub config: Arc<Config>,
    pub tokens: Arc<TokenKeys>,
    pub hasher: PasswordHasher,
    pub limiter: RateLimiter,
    pub users: UserCache,
    pub lifecycle: Lifecycle,
    /// This process's WebSockets.
    pub hub: crate::ws::hub::Hub,
    /// The queue and worker gauges, sampled when `/metrics` is scraped.
    pub gauges: QueueGauges,
}

/// Whether the process is draining: once a stop signal arrives, `/ready`
/// answers 503 so load balancers stop sending new work, while in-flight
/// requests finish.
#[derive(Clone, Debug, Default)]
pub struct Lifecycle {
    draining: Arc<AtomicBool>,
}

impl Lifecycle {
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}
