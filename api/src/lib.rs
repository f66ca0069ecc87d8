//! `keel-api`: Keel's HTTP and WebSocket API on axum. `main.rs`
//! only calls [`cli::main`]; everything lives here so tests can start the
//! real application on a free port.
//!
//! # Layout
//!
//! - [`cli`]: the command line (serve, migrate, gen-secret, admin).
//! - [`admin`]: the `keel-api admin …` commands.
//! - [`auth`]: passwords, tokens, API keys, the `Principal` extractor, rate limits.
//! - [`startup`]: `Application` — build, port, run until stopped.
//! - [`state`]: `AppState` and the draining flag.
//! - [`server`]: the accept loop, the connection cap, keep-alive, the drain.
//! - [`listener`]: the in-process TLS settings, and the peer address.
//! - [`routes`]: one module per resource, merged into the router.
//! - [`ws`]: the WebSocket endpoints — rooms, presence, chat, live task updates.
//! - [`dashboard`]: the ops dashboard at `/dashboard`, rendered on the server.
//! - [`middleware`]: request id, tracing, problem rendering, limits, headers, metrics.
//! - [`error`]: `ApiError` and the RFC 9457 `Problem` body.
//! - [`extract`]: extractors whose rejections are problems too.
//! - [`openapi`]: the OpenAPI document's frame and security schemes.
//! - [`pagination`]: `?page&size` in, `{items, total, page, size, pages}` out.

pub mod admin;
pub mod auth;
pub mod cli;
pub mod dashboard;
pub mod error;
pub mod extract;
pub mod listener;
pub mod middleware;
pub mod openapi;
pub mod pagination;
pub mod routes;
pub mod server;
pub mod startup;
pub mod state;
pub mod ws;
