//! A closed-loop load generator: `connections` tasks, each sending its next
//! request as soon as the last is answered, for a fixed time; latencies go
//! into one HDR histogram.

use std::{
    future::Future,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;

/// What one run measured.
#[derive(Debug, Clone)]
pub struct Report {
    pub requests: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub latency_us: Histogram<u64>,
}

impl Report {
    pub fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    pub fn p50_ms(&self) -> f64 {
        self.latency_us.value_at_quantile(0.50) as f64 / 1000.0
    }

    pub fn p99_ms(&self) -> f64 {
        self.latency_us.value_at_quantile(0.99) as f64 / 1000.0
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
                let mut histogram =
                    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
                let mut errors = 0;
                while Instant::now() < deadline {
                    let t0 = Instant::now();
                    let ok = request().await;
                    let us = u64::try_from(t0.elapsed().as_micros())
                        .unwrap_or(u64::MAX)
                        .max(1);
                    histogram.saturating_record(us);
                    if !ok {
                        errors += 1;
                    }
                }
                (histogram, errors)
            })
        })
        .collect();
    let mut latency_us = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    let mut errors = 0;
    for task in tasks {
        let (histogram, task_errors) = task.await.expect("a load task");
        latency_us.add(&histogram).expect("same bounds");
        errors += task_errors;
    }
    Report {
        requests: latency_us.len(),
        errors,
        elapsed: started.elapsed(),
        latency_us,
    }
}
