//! Integration tests of `keel-api`, against real PostgreSQL and Redis.
mod config;
mod docs;
mod errors;
mod health;
mod helpers;
mod middleware;
mod shutdown;
mod tls;
