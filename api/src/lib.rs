//! `keel-api`: Keel's HTTP and WebSocket API on axum. `main.rs`
//! only calls [`cli::main`]; everything lives here so tests can start the
//! real application on a free port.
//!
//! # Layout
//!
//! - [`cli`]: the command line (serve, migrate, gen-secret, admin).
//! - [`admin`]: the `keel-api admin …` commands.
//! - [`startup`]: `Application` — build, port, run until stopped.
//! - [`state`]: `AppState` and the draining flag.
//! - [`server`]: the accept loop, the connection cap, keep-alive, the drain,
//!   and the peer address on each request.
//! - [`listener`]: the in-process TLS settings.
//! - [`routes`]: one module per resource, merged into the router: the HTTP
//!   edge (extractors, statuses, bodies) over the operations below.
//! - [`ws`]: the WebSocket endpoints — rooms, presence, chat, live task updates.
//! - [`dashboard`]: the ops dashboard at `/dashboard`, rendered on the server.
//! - [`middleware`]: request id, tracing, problem rendering, limits, headers, metrics.
//! - [`responses`]: the response bodies more than one caller answers with.
//! - [`error`]: `ApiError` and the RFC 9457 `Problem` body.
//! - [`extract`]: extractors whose rejections are problems too.
//! - [`openapi`]: the OpenAPI document's frame and security schemes.
//! - [`pagination`]: `?page&size` in, `{items, total, page, size, pages}` out.
//!
//! What the API does, below the routes. Routes, the dashboard and `admin`
//! call down into these; no route calls into another route's module.
//!
//! - [`accounts`]: sign-in and its tokens, the verification link, roles,
//!   deletion, a request's profile fields.
//! - [`second_factor`]: 2FA challenges opened and passed, wrong-code pauses,
//!   TOTP code checks.
//! - [`avatars`]: replacing a user's avatar, and releasing one left behind.
//! - [`files`]: uploads streamed to storage, recorded within the quota,
//!   served whole or by range.
//! - [`tasks`]: create, cancel, retry, run now, enqueue and publish a task.
//! - [`schedules`]: a schedule's fields checked, its edits, on and off.
//! - [`queues`]: each queue's counts, from Postgres beside Redis.
//! - [`oauth`]: the OAuth / OpenID Connect providers and the calls to them.
//! - [`auth`]: passwords, tokens, API keys, the `Principal` extractor, rate limits.

pub mod accounts;
pub mod admin;
pub mod aliases;
pub mod auth;
pub mod avatars;
pub mod cli;
pub mod dashboard;
pub mod error;
pub mod extract;
pub mod files;
pub mod listener;
pub mod middleware;
pub mod oauth;
pub mod openapi;
pub mod pagination;
pub mod problems;
pub mod queues;
pub mod responses;
pub mod routes;
pub mod schedules;
pub mod second_factor;
pub mod server;
pub mod startup;
pub mod state;
pub mod tasks;
pub mod ws;
