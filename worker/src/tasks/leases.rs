//! The leases this worker holds. Every running attempt is registered here
//! with its lease token; a loop renews them all in one statement every third
//! of the lease, and an attempt whose lease was lost (the database gave the
//! task to another attempt after this one stalled) is told to stop: its
//! writes would be fenced anyway. An attempt someone cancelled is told too,
//! here by the renewal (the slow path) or by [`Leases::stop`] when the
//! request comes over Redis.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use keel_shared::db::tasks;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

type Held = Arc<Mutex<HashMap<Uuid, HeldLease>>>;

/// One attempt's lease: its token, and the signals the attempt listens to.
#[derive(Debug)]
struct HeldLease {
    token: String,
    lost: CancellationToken,
    stop: CancellationToken,
}

#[derive(Debug, Clone, Default)]
pub struct Leases {
    held: Held,
}

impl Leases {
    /// Starts renewing every lease this worker holds, every third of `lease`,
    /// until `stop`.
    pub fn start(db: PgPool, lease: Duration, stop: CancellationToken) -> Self {
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
                let now: Vec<(Uuid, String)> = held
                    .lock()
                    .expect("lease map")
                    .iter()
                    .map(|(id, held)| (*id, held.token.clone()))
                    .collect();
                if now.is_empty() {
                    continue;
                }
                match tasks::renew_leases(&db, &now, lease).await {
                    Ok(kept) => {
                        let mut map = held.lock().expect("lease map");
                        for (id, token) in &now {
                            // Only the attempt that was asked about: a newer one may hold the id now.
                            if map.get(id).is_none_or(|h| h.token != *token) {
                                continue;
                            }
                            match kept.iter().find(|(k, _)| k == id) {
                                Some((_, false)) => {}
                                Some((_, true)) => map[id].stop.cancel(),
                                None => {
                                    if let Some(lost) = map.remove(id) {
                                        tracing::warn!(task_id = %id, "lease lost; abandoning the attempt");
                                        lost.lost.cancel();
                                    }
                                }
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, held = now.len(), "could not renew leases; retrying")
                    }
                }
            }
        });
        leases
    }

    /// Registers a claimed attempt; the guard's tokens fire if its lease is
    /// lost or someone cancels the task, and dropping the guard stops the
    /// renewals, whatever ends the attempt.
    pub fn hold(&self, id: Uuid, token: &str) -> LeaseGuard {
        let (lost, stop) = (CancellationToken::new(), CancellationToken::new());
        let held = HeldLease {
            token: token.to_owned(),
            lost: lost.clone(),
            stop: stop.clone(),
        };
        self.held.lock().expect("lease map").insert(id, held);
        LeaseGuard {
            held: self.held.clone(),
            id,
            token: token.to_owned(),
            lost,
            stop,
        }
    }

    /// Tells the attempt running `id` here, if any, that it was cancelled.
    /// `false` if this worker runs no attempt of `id`.
    pub fn stop(&self, id: Uuid) -> bool {
        let map = self.held.lock().expect("lease map");
        map.get(&id).inspect(|held| held.stop.cancel()).is_some()
    }
}

/// One held lease; released when dropped.
#[derive(Debug)]
pub struct LeaseGuard {
    held: Held,
    id: Uuid,
    token: String,
    lost: CancellationToken,
    stop: CancellationToken,
}

impl LeaseGuard {
    /// Fires when the lease is lost.
    pub fn lost(&self) -> &CancellationToken {
        &self.lost
    }

    /// Fires when someone cancels the task.
    pub fn stopped(&self) -> &CancellationToken {
        &self.stop
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        let mut map = self.held.lock().expect("lease map");
        if map
            .get(&self.id)
            .is_some_and(|held| held.token == self.token)
        {
            map.remove(&self.id);
        }
    }
}
