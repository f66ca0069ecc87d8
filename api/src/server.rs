//! The API's HTTP server: the accept loop over the listener, a cap on how
//! many connections are open at once (a connection past it is answered 503
//! and closed), HTTP/1.1 on each with an idle timeout, TLS handshakes when
//! the API terminates TLS, and the drain when it stops. Each request carries
//! its connection's [`PeerAddr`].
//!
//! axum's own `serve` has neither a cap nor an idle timeout: every connection
//! a client opens stays open and holds its buffers for as long as the client
//! likes. An open-loop client facing a stall opened 7,000 of them and the
//! API's memory followed (bench/README, "soak"). hyper has the knobs; this
//! module sets them.

use std::{
    convert::Infallible,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    body::Body,
    extract::{ConnectInfo, Request},
    response::Response,
};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Sleep,
};
use tokio_rustls::{TlsAcceptor, rustls::ServerConfig};
use tokio_util::sync::CancellationToken;
use tower::{Service, ServiceExt as _};

use keel_shared::telemetry::Throttled;

use crate::error::{PROBLEM_JSON, Problem};
use crate::problems::Code;

/// The remote address of a connection, which the accept loop puts on each of
/// its requests as `ConnectInfo<PeerAddr>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// A client slower than this (or than `HTTP_KEEP_ALIVE_SECONDS`, if shorter)
/// to finish its TLS handshake is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection's read buffer grows to this at most (hyper's default is
/// about 400 KiB). It bounds a request's head too, to about this: hyper
/// checks after each read, so a head may run one read over.
const MAX_BUF_BYTES: usize = 64 * 1024;

/// Unsent bytes the kernel holds for a connection before a write waits
/// (`TCP_NOTSENT_LOWAT`). Without it the send buffer autotunes to megabytes
/// and reports room again only after a third of it drained, so a client that
/// reads slowly but steadily would look stalled for minutes; with it, a
/// client reading 1 KiB/s makes the write progress within a minute. It also
/// bounds what a slow reader holds in kernel memory; bytes in flight are
/// not counted, so fast clients are not slowed.
const NOTSENT_LOWAT_BYTES: u32 = 128 * 1024;

/// Refusals in progress at once; past this a connection is closed unanswered.
const MAX_REFUSING: usize = 256;

/// How long a refusal waits for the client to finish sending before it closes,
/// so the kernel does not reset the connection over unread bytes (which can
/// destroy the answer before the client reads it).
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// What a client may hold open.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections open at once, WebSockets included (`HTTP_MAX_CONNECTIONS`).
    pub max_connections: usize,
    /// A connection that sends nothing for this long (before its first
    /// request or between two), is slower than this to send a request's
    /// head, or leaves an answer unread this long, is closed
    /// (`HTTP_KEEP_ALIVE_SECONDS`).
    pub keep_alive: Duration,
}

/// File descriptors the API needs besides its clients' connections: pools,
/// listeners, files being streamed.
const OTHER_FILES: u64 = 256;

/// Raises the soft open-files limit (`ulimit -n`, often 1024) up to the hard
/// one, as far as `max_connections` needs; below that, a connection past the
/// limit fails to be accepted instead of getting its 503, so say so.
pub fn raise_open_files_limit(max_connections: usize) {
    let wanted = max_connections as u64 + OTHER_FILES;
    match rlimit::increase_nofile_limit(wanted) {
        Ok(limit) if limit >= wanted => {}
        Ok(limit) => tracing::warn!(
            limit,
            wanted,
            "the open-files limit is below HTTP_MAX_CONNECTIONS + {OTHER_FILES}; raise `ulimit -n` \
             or lower HTTP_MAX_CONNECTIONS"
        ),
        Err(e) => tracing::warn!(error = %e, "could not read or raise the open-files limit"),
    }
}

/// Serves `app` on `listener` until `stop_accepting` completes; then closes
/// the listener, lets each connection finish its request in flight (idle ones
/// close at once), and returns when all have.
///
/// # Errors
/// None yet: accept errors (out of file descriptors) are logged and retried.
pub async fn serve<S>(
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    app: S,
    limits: Limits,
    stop_accepting: impl Future<Output = ()>,
) -> io::Result<()>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let tls = tls.map(TlsAcceptor::from);
    // HTTP/1.1 alone, with hyper's own builder: hyper-util's `auto` builder
    // first waits, untimed, for bytes to tell HTTP/1 from HTTP/2, and serves
    // HTTP/2 on upgradeable connections whatever it is told.
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(limits.keep_alive)
        .max_buf_size(MAX_BUF_BYTES);
    let http = Arc::new(http);
    let draining = CancellationToken::new();
    let mut stop_accepting = std::pin::pin!(stop_accepting);
    let handshake_timeout = HANDSHAKE_TIMEOUT.min(limits.keep_alive);
    let (mut refusals, mut accept_failures) = (Throttled::default(), Throttled::default());
    let mut flush = tokio::time::interval(Duration::from_secs(1));
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut stop_accepting => break,
            _ = flush.tick() => {
                if let Some(refused) = refusals.due() {
                    log_refusals(refused, limits.max_connections);
                }
                continue;
            }
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    if let Some(times) = accept_failures.hit() {
                        tracing::warn!(error = %e, times, "accept failed");
                    }
                    // Out of file descriptors and the like: wait rather than spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
            metrics::counter!("keel_http_connections_refused_total").increment(1);
            if let Some(refused) = refusals.hit() {
                log_refusals(refused, limits.max_connections);
            }
            refuse(
                stream,
                tls.clone(),
                handshake_timeout,
                limits.max_connections,
                &refusing,
            );
            continue;
        };
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if let Err(e) = socket2::SockRef::from(&stream).set_tcp_notsent_lowat(NOTSENT_LOWAT_BYTES) {
            tracing::debug!(%peer, error = %e, "TCP_NOTSENT_LOWAT not set");
        }
        let stream = Counted::new(stream, permit, limits.keep_alive);
        let (http, tls, app, draining) = (
            Arc::clone(&http),
            tls.clone(),
            app.clone(),
            draining.clone(),
        );
        tokio::spawn(async move {
            let service =
                TowerToHyperService::new(app.map_request(move |req: Request<Incoming>| {
                    let mut req = req.map(Body::new);
                    req.extensions_mut().insert(ConnectInfo(PeerAddr(peer)));
                    req
                }));
            let served = match tls {
                None => serve_one(&http, stream, service, &draining).await,
                Some(acceptor) => {
                    let Some(stream) = handshake(&acceptor, stream, handshake_timeout).await else {
                        return;
                    };
                    serve_one(&http, stream, service, &draining).await
                }
            };
            if let Err(e) = served {
                // Idle timeouts, resets and malformed requests: the client's business.
                tracing::debug!(%peer, error = %e, "connection ended");
            }
        });
    }
    // New connections now get the kernel's refusal; open ones finish their
    // request in flight and close. Each holds a place until it has closed
    // (a WebSocket until the socket does), so all places back means all done.
    drop(listener);
    draining.cancel();
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = open.acquire_many(all).await;
    Ok(())
}

/// Serves HTTP/1.1 on one connection until it closes, upgrades, or — once
/// `draining` — finishes the request in flight.
async fn serve_one<I, S>(
    http: &http1::Builder,
    io: I,
    service: S,
    draining: &CancellationToken,
) -> hyper::Result<()>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = Body> + Send,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = http
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        served = conn.as_mut() => return served,
        () = draining.cancelled() => {}
    }
    conn.as_mut().graceful_shutdown();
    conn.await
}

fn log_refusals(refused: u64, max_connections: usize) {
    tracing::warn!(
        refused,
        max_connections,
        "connections refused: HTTP_MAX_CONNECTIONS are open"
    );
}

/// Answers a connection past the cap with a 503 problem and closes it, in the
/// background and within `MAX_REFUSING`; over that, closes it unanswered.
fn refuse(
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    handshake_timeout: Duration,
    max_connections: usize,
    refusing: &Arc<Semaphore>,
) {
    let Ok(permit) = Arc::clone(refusing).try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        let _permit = permit;
        let answer = refusal(max_connections);
        match tls {
            None => answer_and_close(stream, &answer).await,
            Some(acceptor) => {
                if let Some(stream) = handshake(&acceptor, stream, handshake_timeout).await {
                    answer_and_close(stream, &answer).await;
                }
            }
        }
    });
}

/// The TLS side of `stream`, or `None` (logged) when the client fails its
/// handshake or is slower than `timeout` to finish it.
async fn handshake<IO: AsyncRead + AsyncWrite + Unpin>(
    acceptor: &TlsAcceptor,
    stream: IO,
    timeout: Duration,
) -> Option<tokio_rustls::server::TlsStream<IO>> {
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!("TLS handshake timed out");
            None
        }
    }
}

/// Writes `answer`, ends the sending side, and reads what the client sent
/// until it closes too, briefly and bounded.
async fn answer_and_close(mut stream: impl AsyncRead + AsyncWrite + Unpin, answer: &str) {
    if stream.write_all(answer.as_bytes()).await.is_err() || stream.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        let mut read = 0;
        while read < 64 * 1024 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => read += n,
            }
        }
    })
    .await;
}

/// The whole HTTP/1.1 response a refused connection gets.
fn refusal(max_connections: usize) -> String {
    let request_id = uuid::Uuid::now_v7().to_string();
    let mut problem = Problem::new(
        Code::TooManyConnections,
        format!("the server has {max_connections} connections open, its limit; try again shortly"),
    );
    problem.request_id = Some(request_id.clone());
    let body = problem.to_body();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: {}\r\ncontent-length: {}\r\n\
         retry-after: 1\r\nx-request-id: {request_id}\r\ncache-control: no-store\r\n\
         x-content-type-options: nosniff\r\nconnection: close\r\n\r\n{body}",
        PROBLEM_JSON,
        body.len()
    )
}

/// A connection holding its place under the cap until it is dropped, which
/// for a WebSocket is when the socket closes (hyper hands the same stream
/// over on upgrade). It also fails a write that has made no progress for
/// `stall` (a client that stopped reading), which neither hyper nor the
/// WebSocket's own timers would notice while they wait on that write.
struct Counted<T> {
    io: T,
    stall: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
    _permit: OwnedSemaphorePermit,
}

impl<T> Counted<T> {
    fn new(io: T, permit: OwnedSemaphorePermit, stall: Duration) -> Self {
        metrics::gauge!("keel_http_connections").increment(1.0);
        Self {
            io,
            stall,
            stalled: None,
            _permit: permit,
        }
    }

    /// Passes on a write's outcome; a write pending for `stall` fails.
    fn watch<R>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let stall = self.stall;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client has not read its answer for HTTP_KEEP_ALIVE_SECONDS",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T> Drop for Counted<T> {
    fn drop(&mut self) {
        metrics::gauge!("keel_http_connections").decrement(1.0);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write(cx, buf);
        self.watch(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.io).poll_flush(cx);
        self.watch(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.io).poll_shutdown(cx);
        self.watch(cx, poll)
    }
}
