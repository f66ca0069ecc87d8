//! The `http` workload: the API's hot endpoints over HTTP, closed loop at
//! `--connections` and open loop at `--rate`, next to what the same client
//! gets from a bare axum JSON handler and what pgbench gets from a
//! single-row INSERT at the same concurrency.
//!
//! - `GET /api/v1/users/me` with a JWT: the authenticated read path
//!   (token check, user cache, middleware).
//! - `POST /api/v1/tasks` (`noop`): a committed row and a pushed job.
//! - `GET /api/v1/tasks/{id}/status`: a primary-key read.
//!
//! The target runs with `RATE_LIMIT_ENABLED=false` and without the
//! per-user cap (`MAX_UNFINISHED_TASKS_PER_USER=0`): no worker needs to run,
//! and the created tasks stay pending.

use std::time::Duration;

use anyhow::Context as _;
use serde_json::{Value, json};

use crate::{
    auth::{serve_bare, sign_up},
    ceilings::{PgbenchOwners, pgbench},
    e2e::Setup,
    load::{self, Report},
    stores::Stores,
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Base URL of a running keel-api (release build, rate limits off).
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    url: String,
    /// Seconds per measured run.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Concurrent connections of the closed-loop runs (and pgbench clients).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Requests per second of the open-loop runs.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// The API's database, for the pgbench INSERT beside it.
    #[command(flatten)]
    stores: Stores,
    /// Print one JSON object as the last line too.
    #[arg(long)]
    json: bool,
}

/// One endpoint's request.
#[derive(Clone)]
struct Call {
    client: reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: Option<String>,
    body: Option<Value>,
}

impl Call {
    async fn send(&self) -> bool {
        let mut request = self.client.request(self.method.clone(), &self.url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = &self.body {
            request = request.json(body);
        }
        match request.send().await {
            Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
            _ => false,
        }
    }
}

async fn closed(call: &Call, connections: usize, duration: Duration) -> Report {
    let call = call.clone();
    load::run(connections, duration, move || {
        let call = call.clone();
        async move { call.send().await }
    })
    .await
}

async fn open(call: &Call, rate: u32, duration: Duration) -> Report {
    load::run_open(rate, duration, || {
        let call = call.clone();
        async move { call.send().await }
    })
    .await
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let duration = Duration::from_secs(args.duration);
    let client = reqwest::Client::builder()
        // A request the stack never answers is an error, not a hang.
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(args.connections)
        .build()?;
    let (_, _, token) = sign_up(&client, &args.url).await?;
    let call = |method: reqwest::Method, url: String, body: Option<Value>| Call {
        client: client.clone(),
        method,
        url,
        token: Some(token.clone()),
        body,
    };
    let probe: Value = client
        .post(format!("{}/api/v1/tasks", args.url))
        .bearer_auth(&token)
        .json(&json!({"kind": "noop", "name": "status probe"}))
        .send()
        .await?
        .json()
        .await?;
    let probe_id = probe["id"].as_str().context("POST /tasks answered no id")?;
    let endpoints = [
        (
            "GET /users/me, JWT",
            call(
                reqwest::Method::GET,
                format!("{}/api/v1/users/me", args.url),
                None,
            ),
        ),
        (
            "POST /tasks (noop)",
            call(
                reqwest::Method::POST,
                format!("{}/api/v1/tasks", args.url),
                Some(json!({"kind": "noop", "name": "http bench"})),
            ),
        ),
        (
            "GET /tasks/{id}/status",
            call(
                reqwest::Method::GET,
                format!("{}/api/v1/tasks/{probe_id}/status", args.url),
                None,
            ),
        ),
        (
            "bare axum JSON handler",
            Call {
                token: None,
                ..call(reqwest::Method::GET, serve_bare().await?, None)
            },
        ),
    ];
    let mut rows = Vec::new();
    for (name, endpoint) in &endpoints {
        let closed = closed(endpoint, args.connections, duration).await;
        let open = open(endpoint, args.rate, duration).await;
        rows.push((*name, closed, open));
    }
    // pgbench's single-row INSERT into the real tasks table, same concurrency.
    let setup = Setup::connect(&args.stores, None).await?;
    let owners = PgbenchOwners::insert(&setup.pool, args.connections).await?;
    let insert_tps = pgbench(
        &args.stores.database_url,
        args.connections,
        args.duration,
        crate::ceilings::INSERT_SQL,
        &owners,
    )?;
    owners.delete(&setup.pool).await?;

    println!(
        "keel-bench http: closed loop at {} connections, open loop at {}/s, {} s each\n",
        args.connections, args.rate, args.duration
    );
    println!(
        "| endpoint | closed: req/s | closed p50 / p99 ms | open: p50 / p99 / p99.9 ms | errors |"
    );
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (name, closed, open) in &rows {
        println!(
            "| {name} | {:.0} | {:.2} / {:.2} | {:.2} / {:.2} / {:.2} | {} + {} |",
            closed.per_second(),
            closed.p50_ms(),
            closed.p99_ms(),
            open.p50_ms(),
            open.p99_ms(),
            open.p999_ms(),
            closed.errors,
            open.errors
        );
    }
    println!(
        "| pgbench single-row INSERT, {} clients | {insert_tps:.0} | | | |",
        args.connections
    );
    let rate = |name: &str| {
        rows.iter()
            .find(|(n, ..)| *n == name)
            .map_or(0.0, |(_, closed, _)| closed.per_second())
    };
    println!();
    println!(
        "POST /tasks reaches {:.0} % of pgbench's single INSERT; GET /users/me {:.0} % of the bare handler",
        100.0 * rate("POST /tasks (noop)") / insert_tps,
        100.0 * rate("GET /users/me, JWT") / rate("bare axum JSON handler")
    );
    if args.json {
        let endpoints: Vec<Value> = rows
            .iter()
            .map(|(name, closed, open)| {
                json!({"endpoint": name, "closed_per_s": closed.per_second().round(),
                       "closed_p50_ms": closed.p50_ms(), "closed_p99_ms": closed.p99_ms(),
                       "open_p50_ms": open.p50_ms(), "open_p99_ms": open.p99_ms(),
                       "open_p999_ms": open.p999_ms(),
                       "errors": closed.errors + open.errors})
            })
            .collect();
        println!(
            "{}",
            json!({"connections": args.connections, "rate": args.rate,
                   "endpoints": endpoints, "pgbench_insert_tps": insert_tps.round()})
        );
    }
    Ok(())
}
