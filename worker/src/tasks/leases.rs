//! The leases this worker holds. Every running attempt is registered here
//! with its lease token; a loop renews them all in one statement every third
//! of the lease, and an attempt whose lease was lost (the database gave the
//! task to another attempt after this one stalled) is told to stop: its
//! writes would be fenced anyway.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use keel_shared::db::tasks;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

type Held = Arc<Mutex<HashMap<Uuid, (String, CancellationToken)>>>;

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
                    .map(|(id, (token, _))| (*id, token.clone()))
                    .collect();
                if now.is_empty() {
                    continue;
                }
                match tasks::renew_leases(&db, &now, lease).await {
                    Ok(kept) => {
                        let mut map = held.lock().expect("lease map");
                        for (id, token) in now.iter().filter(|(id, _)| !kept.contains(id)) {
                            // Only the attempt that was asked about: a newer one may hold the id now.
                            if map.get(id).is_some_and(|(t, _)| t == token)
                                && let Some((_, lost)) = map.remove(id)
                            {
                                tracing::warn!(task_id = %id, "lease lost; abandoning the attempt");
                                lost.cancel();
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

    /// Registers a claimed attempt; the guard's token fires if its lease is
    /// lost, and dropping the guard stops the renewals, whatever ends the attempt.
    pub fn hold(&self, id: Uuid, token: &str) -> LeaseGuard {
        let lost = CancellationToken::new();
        self.held
            .lock()
            .expect("lease map")
            .insert(id, (token.to_owned(), lost.clone()));
        LeaseGuard {
            held: self.held.clone(),
            id,
            token: token.to_owned(),
            lost,
        }
    }
}

/// One held lease; released when dropped.
#[derive(Debug)]
pub struct LeaseGuard {
    held: Held,
    id: Uuid,
    token: String,
    lost: CancellationToken,
}

impl LeaseGuard {
    /// Fires when the lease is lost.
    pub fn lost(&self) -> &CancellationToken {
        &self.lost
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        let mut map = self.held.lock().expect("lease map");
        if map.get(&self.id).is_some_and(|(t, _)| *t == self.token) {
            map.remove(&self.id);
        }
    }
}
