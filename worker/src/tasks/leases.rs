//! The leases this worker holds. Every running task is registered here; a
//! loop renews them all in one statement every third of the lease, and a
//! task whose lease was lost (the database gave it to another worker after
//! this one stalled) is told to stop: its writes would be fenced anyway.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use keel_shared::db::tasks;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(Debug, Clone, Default)]
pub struct Leases {
    held: Arc<Mutex<HashMap<Uuid, CancellationToken>>>,
}

impl Leases {
    /// Starts renewing every lease this worker holds, every third of `lease`.
    pub fn start(db: PgPool, worker: String, lease: Duration, stop: CancellationToken) -> Self {
        let leases = Self::default();
        let held = leases.held.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(lease / 3);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let ids: Vec<Uuid> = held.lock().expect("lease map").keys().copied().collect();
                if ids.is_empty() {
                    continue;
                }
                match tasks::renew_leases(&db, &ids, &worker, lease).await {
                    Ok(kept) => {
                        let mut map = held.lock().expect("lease map");
                        for id in ids.iter().filter(|id| !kept.contains(id)) {
                            if let Some(lost) = map.remove(id) {
                                tracing::warn!(task_id = %id, "lease lost; abandoning the attempt");
                                lost.cancel();
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, held = ids.len(), "could not renew leases; retrying")
                    }
                }
            }
        });
        leases
    }

    /// Registers a claimed task; the token fires if its lease is lost.
    pub fn hold(&self, id: Uuid) -> CancellationToken {
        let token = CancellationToken::new();
        self.held
            .lock()
            .expect("lease map")
            .insert(id, token.clone());
        token
    }

    pub fn release(&self, id: Uuid) {
        self.held.lock().expect("lease map").remove(&id);
    }
}
