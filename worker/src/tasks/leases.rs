//! The leases this worker holds. Every running attempt is registered here
//! with its lease token; a loop renews them all in one statement every third
//! of the lease, and an attempt whose lease was lost (the database gave the
//! task to another attempt after this one stalled) is told to stop: its
//! writes would be fenced anyway. An attempt someone cancelled is told too,
//! here by the renewal (the slow path) or by [`Leases::stop`] when the
//! request comes over Redis.
//!
//! A request names the attempt by its lease token, and may come in the
//! moment between an attempt's claim and its registration here: such a
//! request is kept for [`EARLY_STOP_MEMORY`] and honoured when the attempt
//! with that token registers. The token, not the task, so a later attempt
//! (the task retried) is never stopped by an old request.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use keel_shared::db::tasks;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

type Held = Arc<Mutex<HashMap<Uuid, HeldLease>>>;

/// How long a stop request for an attempt not registered here is kept.
const EARLY_STOP_MEMORY: Duration = Duration::from_secs(30);

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
    /// Stop requests for attempts not registered (yet): task, token, when
    /// heard. Locked after `held`, never before.
    early: Arc<Mutex<Vec<(Uuid, String, Instant)>>>,
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
        let mut map = self.held.lock().expect("lease map");
        map.insert(id, held);
        let mut early = self.early.lock().expect("early stops");
        if let Some(at) = early.iter().position(|(i, t, _)| *i == id && t == token) {
            early.swap_remove(at);
            stop.cancel();
        }
        drop((early, map));
        LeaseGuard {
            held: self.held.clone(),
            id,
            token: token.to_owned(),
            lost,
            stop,
        }
    }

    /// Tells the attempt of `id` holding lease `token` that it was
    /// cancelled. `false` if it does not run here (yet: a request is kept a
    /// while for an attempt about to register).
    pub fn stop(&self, id: Uuid, token: &str) -> bool {
        let map = self.held.lock().expect("lease map");
        if let Some(held) = map.get(&id).filter(|held| held.token == token) {
            held.stop.cancel();
            return true;
        }
        let mut early = self.early.lock().expect("early stops");
        let now = Instant::now();
        early.retain(|(.., at)| now.duration_since(*at) < EARLY_STOP_MEMORY);
        early.push((id, token.to_owned(), now));
        false
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_heard_before_its_attempt_registers_stops_that_attempt_only() {
        let leases = Leases::default();
        let (id, other) = (Uuid::now_v7(), Uuid::now_v7());
        assert!(!leases.stop(id, "w/1"), "nothing runs yet");
        let stale = leases.hold(id, "w/0");
        assert!(!stale.stopped().is_cancelled(), "another attempt's token");
        drop(stale);
        let attempt = leases.hold(id, "w/1");
        assert!(
            attempt.stopped().is_cancelled(),
            "the request was kept for it"
        );
        let unrelated = leases.hold(other, "w/1");
        assert!(!unrelated.stopped().is_cancelled());
        assert!(
            leases.stop(other, "w/1"),
            "a registered attempt is told at once"
        );
        assert!(unrelated.stopped().is_cancelled());
    }
}
