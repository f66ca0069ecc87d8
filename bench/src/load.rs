//! Load generators, with latencies in one HDR histogram:
//!
//! - closed loop ([`run`]): `connections` tasks, each sending its next
//!   request as soon as the last is answered, for a fixed time;
//! - open loop ([`run_open`]): requests sent at a fixed rate whatever the
//!   answers do, each timed from when it was due to be sent, so a stalled
//!   server shows in the latency instead of slowing the offered load.
//!
//! Only successful requests are timed and counted in the rate: an error
//! answered at once (a 503 from an overloaded hasher, say) would otherwise
//! flatter both. Errors are counted apart.

use std::{
    future::Future,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;

/// What one run measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// Requests answered, successes and errors.
    pub requests: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// Latencies of the successful requests.
    pub latency_us: Histogram<u64>,
}

impl Report {
    /// Successful requests per second.
    pub fn per_second(&self) -> f64 {
        (self.requests - self.errors) as f64 / self.elapsed.as_secs_f64()
    }

    pub fn p50_ms(&self) -> f64 {
        self.latency_us.value_at_quantile(0.50) as f64 / 1000.0
    }

    pub fn p99_ms(&self) -> f64 {
        self.latency_us.value_at_quantile(0.99) as f64 / 1000.0
    }

    pub fn p999_ms(&self) -> f64 {
        self.latency_us.value_at_quantile(0.999) as f64 / 1000.0
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// How late the generator may wake for a request without it counting
/// against the server: tokio's timer rounds sleeps up to the millisecond.
/// Lateness beyond this (a generator stalled by the machine) is counted,
/// so a stall still shows.
const TIMER_SLACK: Duration = Duration::from_millis(1);

/// Sends `request` `rate` times a second for `duration`, each in its own
/// task; `request` answers whether the response was a success.
pub async fn run_open<F, Fut>(rate: u32, duration: Duration, request: F) -> Report
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool> + Send + 'static,
{
    let interval = Duration::from_secs(1) / rate.max(1);
    let count = (duration.as_secs_f64() * f64::from(rate)) as u32;
    let started = Instant::now();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..count {
        let due = started + interval * i;
        tokio::time::sleep_until(due.into()).await;
        let sent = Instant::now();
        let (response, done_tx) = (request(), done_tx.clone());
        tokio::spawn(async move {
            let ok = response.await;
            let late = sent
                .saturating_duration_since(due)
                .saturating_sub(TIMER_SLACK);
            let _ = done_tx.send((sent.elapsed() + late, ok));
        });
    }
    drop(done_tx);
    let mut latency_us = histogram();
    let (mut requests, mut errors) = (0, 0);
    while let Some((elapsed, ok)) = done_rx.recv().await {
        requests += 1;
        if ok {
            latency_us.saturating_record(micros(elapsed));
        } else {
            errors += 1;
        }
    }
    Report {
        requests,
        errors,
        elapsed: started.elapsed(),
        latency_us,
    }
}

/// Runs `request` from `connections` tasks for `duration`. `request`
/// answers whether the response was a success.
pub async fn run<F, Fut>(connections: usize, duration: Duration, request: F) -> Report
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let request = request.clone();
            tokio::spawn(async move {
                let mut histogram = histogram();
                let mut errors = 0;
                while Instant::now() < deadline {
                    let t0 = Instant::now();
                    if request().await {
                        histogram.saturating_record(micros(t0.elapsed()));
                    } else {
                        errors += 1;
                    }
                }
                (histogram, errors)
            })
        })
        .collect();
    let mut latency_us = histogram();
    let mut errors = 0;
    for task in tasks {
        let (histogram, task_errors) = task.await.expect("a load task");
        latency_us.add(&histogram).expect("same bounds");
        errors += task_errors;
    }
    Report {
        requests: latency_us.len() + errors,
        errors,
        elapsed: started.elapsed(),
        latency_us,
    }
}
