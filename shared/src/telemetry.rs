//! Logs and metrics for all three binaries: `tracing` with an `EnvFilter`
//! from `RUST_LOG`, pretty locally and JSON in production, and one
//! process-wide Prometheus recorder.

use std::{sync::OnceLock, time::Duration};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::{EnvFilter, fmt, layer::SubscriberExt as _, util::SubscriberInitExt as _};

use crate::config::{Config, LogFormat};

/// Installs the global `tracing` subscriber for `service`. A second call (as
/// when tests start several apps in one process) leaves the first in place.
pub fn init(service: &'static str, config: &Config) {
    // Validated when the configuration was parsed.
    let filter = EnvFilter::try_new(&config.rust_log).unwrap_or_else(|_| EnvFilter::new("info"));
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
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
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
