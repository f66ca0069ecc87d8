//! `AppState`: what handlers share. Handlers take only the part they use
//! (`State(db): State<PgPool>`), through `FromRef`.
//!
//! The parts sit behind one `Arc`: axum clones the state for every
//! middleware and extractor of every request, and a struct of a dozen
//! handles (each with its own reference counts, some with strings) made
//! those clones and drops a quarter of the API's CPU on `GET /users/me`.

use std::{
    ops::Deref,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::extract::FromRef;
use keel_shared::{
    Config, RedisClient, kinds::KindSettings, queue::JobQueue, queue_metrics::QueueGauges,
    storage::Storage,
};
use sqlx::PgPool;

use crate::auth::{
    password::PasswordHasher, rate_limit::RateLimiter, tokens::TokenKeys, user_cache::UserCache,
};

/// What handlers share; cloning it is one reference count.
#[derive(Clone, Debug)]
pub struct AppState(Arc<Parts>);

impl AppState {
    pub fn new(parts: Parts) -> Self {
        Self(Arc::new(parts))
    }
}

impl Deref for AppState {
    type Target = Parts;

    fn deref(&self) -> &Parts {
        &self.0
    }
}

/// The parts of [`AppState`], each one extractable on its own.
#[derive(Debug)]
pub struct Parts {
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
    /// Where file bytes are: a local directory or an S3-compatible store.
    pub storage: Storage,
    /// Task creates, written in groups (group commit).
    pub intake: keel_shared::task_intake::TaskIntake,
}

/// `State<Part>` for each part, cloned out of the shared state.
macro_rules! parts_from_ref {
    ($($field:ident: $part:ty),* $(,)?) => {
        $(impl FromRef<AppState> for $part {
            fn from_ref(state: &AppState) -> Self {
                state.0.$field.clone()
            }
        })*
    };
}

parts_from_ref! {
    db: PgPool,
    redis: RedisClient,
    jobs: JobQueue,
    kinds: Arc<KindSettings>,
    config: Arc<Config>,
    tokens: Arc<TokenKeys>,
    hasher: PasswordHasher,
    limiter: RateLimiter,
    users: UserCache,
    lifecycle: Lifecycle,
    hub: crate::ws::hub::Hub,
    gauges: QueueGauges,
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
