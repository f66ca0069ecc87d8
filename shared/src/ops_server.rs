//! The small HTTP server of the worker and the scheduler: `/health`,
//! `/live` and `/metrics` on `METRICS_PORT`, so orchestrators can probe and
//! Prometheus can scrape processes that serve no API. The scheduler's also
//! samples the queue gauges at each scrape ([`OpsServer::export_queue_gauges`]).

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header,
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    config::Environment, health::HealthReport, queue_metrics::QueueGauges,
    redis_client::RedisClient, telemetry,
};

/// What the probes look at.
#[derive(Clone, Debug)]
pub struct OpsProbe {
    pub db: PgPool,
    pub redis: RedisClient,
    pub environment: Environment,
    /// Sampled before `/metrics` renders, when set.
    pub queue_gauges: Option<QueueGauges>,
}

/// A bound ops server, not yet serving.
#[derive(Debug)]
pub struct OpsServer {
    listener: TcpListener,
    probe: Arc<OpsProbe>,
}

impl OpsServer {
    /// Binds `addr` (port 0 picks a free port).
    ///
    /// # Errors
    /// The address cannot be bound.
    pub async fn bind(addr: SocketAddr, probe: OpsProbe) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        telemetry::spawn_metrics_upkeep();
        Ok(Self {
            listener,
            probe: Arc::new(probe),
        })
    }

    /// Also exports the queue and worker gauges (`queue_metrics`), sampled
    /// from this server's Postgres and Redis at each scrape.
    pub fn export_queue_gauges(&mut self) {
        let probe = Arc::make_mut(&mut self.probe);
        probe.queue_gauges = Some(QueueGauges::new(probe.db.clone(), probe.redis.clone()));
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` is cancelled.
    pub async fn serve(self, shutdown: CancellationToken) {
        let mut accept_failures = crate::telemetry::Throttled::default();
        loop {
            let stream = tokio::select! {
                () = shutdown.cancelled() => return,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        if let Some(times) = accept_failures.hit() {
                            tracing::warn!(error = %e, times, "ops server accept failed");
                        }
                        // Out of file descriptors and the like: wait rather than spin.
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let probe = Arc::clone(&self.probe);
            tokio::spawn(async move {
                let service = service_fn(move |req| respond(req, Arc::clone(&probe)));
                if let Err(e) = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!(error = %e, "ops connection ended with an error");
                }
            });
        }
    }
}

async fn respond(
    req: Request<Incoming>,
    probe: Arc<OpsProbe>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed\n".into(),
        ));
    }
    Ok(match req.uri().path().trim_end_matches('/') {
        "/health" | "/ready" => {
            let report = HealthReport::check(&probe.db, &probe.redis, probe.environment).await;
            let status = StatusCode::from_u16(report.http_status()).unwrap_or(StatusCode::OK);
            let body = serde_json::to_string(&report).expect("the health report serialises");
            reply(status, "application/json", body)
        }
        "/live" => reply(
            StatusCode::OK,
            "application/json",
            r#"{"status":"alive"}"#.into(),
        ),
        "/metrics" => {
            if let Some(gauges) = &probe.queue_gauges {
                gauges.refresh().await;
            }
            reply(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                telemetry::metrics().render(),
            )
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    })
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}
