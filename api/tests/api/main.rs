//! Integration tests of `keel-api`, against real PostgreSQL and Redis.
mod admin_cli;
mod admin_ops;
mod api_keys;
mod auth;
mod config;
mod docs;
mod errors;
mod health;
mod helpers;
mod middleware;
mod pipeline;
mod rate_limits;
mod rbac;
mod shutdown;
mod tasks;
mod tls;
mod users;
