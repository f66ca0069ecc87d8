//! This worker's counters, for its card in the worker registry (and the
//! Prometheus metrics, which count the same events by kind).

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Stats {
    in_flight: AtomicU64,
    processed: AtomicU64,
    failed: AtomicU64,
}

impl Stats {
    pub fn started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// An attempt ended; `failed` when it did not complete.
    pub fn ended(&self, failed: bool) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.processed.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// An attempt was given back or abandoned without an outcome.
    pub fn abandoned(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// `(in_flight, processed, failed)`.
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.in_flight.load(Ordering::Relaxed),
            self.processed.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}
