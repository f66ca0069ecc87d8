//! Logs and metrics for all three binaries: `tracing` with an `EnvFilter`
//! from `RUST_LOG`, pretty locally and JSON in production, and one
//! process-wide Prometheus recorder with the help text of every series.

use std::{sync::OnceLock, time::Duration};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::{EnvFilter, fmt, layer::SubscriberExt as _, util::SubscriberInitExt as _};

use crate::config::{Config, LogFormat};

/// Installs the global `tracing` subscriber for `service`. A second call (as
/// when tests start several apps in one process) leaves the first in place.
pub fn init(service: &'static str, config: &Config) {
    // Validated when the configuration was parsed.
    let filter =
        EnvFilter::try_new(&config.process.rust_log).unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match config.log_format() {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .try_init(),
        LogFormat::Pretty => registry.with(fmt::layer().compact()).try_init(),
    };
    if result.is_ok() {
        tracing::debug!(service, "telemetry initialised");
    }
}

/// Latency buckets (seconds) for every `*_seconds` histogram: fine below
/// 10 ms, where Keel's hot paths live, up to a minute for long jobs.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// The process's Prometheus recorder, installed on first use.
pub fn metrics() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .expect("bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Only fails when another recorder was installed first; ours is then unused.
        if metrics::set_global_recorder(recorder).is_ok() {
            describe();
        }
        handle
    })
}

/// The help text of every series Keel exports, whichever binary emits it,
/// so that a series shared by two binaries (`keel_tasks_retried_total`,
/// the queue gauges) reads the same in both. The exporter prints a help
/// line only beside a series with a value, so each binary shows only its own.
/// Names follow Prometheus conventions: `keel_` prefix, `_total` counters,
/// base units (`_seconds`).
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};

    // keel-api
    describe_counter!(
        "keel_http_requests_total",
        "HTTP requests answered, by method, route template (`unmatched` for none) and status."
    );
    describe_histogram!(
        "keel_http_request_duration_seconds",
        "Time to answer an HTTP request, by method, route template and status."
    );
    describe_gauge!(
        "keel_ws_connections",
        "WebSockets open on this API process."
    );
    describe_gauge!(
        "keel_http_connections",
        "Client connections open on this API process, WebSockets included (at most HTTP_MAX_CONNECTIONS)."
    );
    describe_counter!(
        "keel_http_connections_refused_total",
        "Connections answered 503 and closed because HTTP_MAX_CONNECTIONS were open."
    );
    // Tasks: created where rows are committed (API, scheduler), the rest by workers.
    describe_counter!(
        "keel_tasks_created_total",
        "Tasks created — single, batch, Celery alias, a schedule's run-now or fire — by kind."
    );
    describe_counter!(
        "keel_tasks_started_total",
        "Task attempts a worker started, by kind."
    );
    describe_counter!("keel_tasks_completed_total", "Tasks completed, by kind.");
    describe_counter!(
        "keel_tasks_failed_total",
        "Tasks failed for good (last attempt used, or a permanent error), by kind."
    );
    describe_counter!(
        "keel_tasks_retried_total",
        "Tasks set to run again, by kind: by a worker after a failed attempt with attempts left, or by a user's retry of a failed, cancelled or expired task."
    );
    describe_counter!(
        "keel_tasks_handed_back_total",
        "Attempts a stopping worker handed back unfinished, by kind."
    );
    describe_counter!(
        "keel_tasks_expired_total",
        "Tasks that ended `expired`: not started by their `expires_at`."
    );
    describe_counter!(
        "keel_tasks_put_off_total",
        "Attempts a worker put off because it does not run the task's kind, by kind."
    );
    describe_counter!(
        "keel_tasks_snoozed_total",
        "Attempts whose handler snoozed (run again later, no attempt spent), by kind."
    );
    describe_counter!(
        "keel_tasks_cancelled_running_total",
        "Running attempts stopped because their task was cancelled, by kind."
    );
    describe_histogram!(
        "keel_task_run_seconds",
        "Run time of one task attempt, by kind."
    );
    describe_histogram!(
        "keel_task_start_delay_seconds",
        "From when an attempt was due (created, scheduled or backed off) to its start on a worker."
    );
    // keel-scheduler
    describe_counter!(
        "keel_scheduler_ticks_total",
        "Schedule ticks, by outcome: fired by this replica, lost to another, or skipped while the previous run is busy."
    );
    describe_counter!(
        "keel_scheduler_ticks_missed_total",
        "Catch-up fires: a schedule found ticks passed unfired (downtime, stall) and fired once for them all."
    );
    describe_histogram!(
        "keel_scheduler_tick_lateness_seconds",
        "From a tick's time to its fire."
    );
    describe_gauge!(
        "keel_scheduler_schedules",
        "Schedules loaded by this scheduler, built-in ones included."
    );
    describe_counter!(
        "keel_reconciler_repairs_total",
        "Repairs made to Redis from Postgres, by what: task_pushed, lease_expired, email_pushed, code_pushed, job_trimmed."
    );
    describe_counter!(
        "keel_reconciler_redis_losses_total",
        "Reconcile passes that found Redis had lost its data and pushed everything waiting again."
    );
    // Shared state, sampled at scrape time (see `queue_metrics`).
    describe_gauge!(
        "keel_queue_depth",
        "Tasks waiting or running, by queue and state (pending: due; scheduled: later; running), from Postgres."
    );
    describe_gauge!(
        "keel_queue_oldest_pending_seconds",
        "How long the longest-waiting due task has waited since it became due, by queue; 0 when none waits."
    );
    describe_gauge!(
        "keel_queue_redis_jobs",
        "Jobs Redis holds, by queue and state (scheduled, active, in_flight, done, dead)."
    );
    describe_gauge!(
        "keel_workers_alive",
        "Worker processes whose heartbeat is fresh."
    );
}

/// Keeps the recorder's histograms compact; call once from a runtime.
pub fn spawn_metrics_upkeep() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let handle = metrics().clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                handle.run_upkeep();
            }
        });
    });
}

/// A warning a client or the system can repeat many times a second (a
/// refused connection, a failed accept): logged at most once a second, with
/// how many times it happened since, so the log cannot be flooded.
#[derive(Debug, Default)]
pub struct Throttled {
    last: Option<std::time::Instant>,
    pending: u64,
}

impl Throttled {
    /// Counts one occurrence; `Some(n)` when a line is due now, for `n`.
    pub fn hit(&mut self) -> Option<u64> {
        self.pending += 1;
        self.due()
    }

    /// `Some(n)` when occurrences wait to be logged and the last line is a
    /// second old: call it from a timer so a burst's tail is not held back.
    pub fn due(&mut self) -> Option<u64> {
        let quiet = self
            .last
            .is_none_or(|last| last.elapsed() >= Duration::from_secs(1));
        if self.pending == 0 || !quiet {
            return None;
        }
        self.last = Some(std::time::Instant::now());
        Some(std::mem::take(&mut self.pending))
    }
}

#[cfg(test)]
mod tests {
    use super::Throttled;

    #[test]
    fn a_burst_logs_its_first_at_once_and_the_rest_in_one_line_a_second_later() {
        let mut warning = Throttled::default();
        assert_eq!(warning.hit(), Some(1));
        for _ in 0..299 {
            assert_eq!(warning.hit(), None);
        }
        assert_eq!(warning.due(), None, "not within the second");
        warning.last = warning
            .last
            .map(|last| last - std::time::Duration::from_secs(1));
        assert_eq!(warning.due(), Some(299));
        assert_eq!(warning.due(), None, "nothing left");
    }
}
