//! The `auth` workload.
//!
//! 1. argon2id single-core hash time, measured here with Keel's parameters:
//!    the ceiling for logins is `cores / hash_time`.
//! 2. Logins/s through `POST /auth/login` at `--login-connections`.
//! 3. `GET /users/me` with a JWT, and a bare axum JSON handler served by this
//!    process, each at `--connections` for `--duration`: the ratio says what
//!    Keel's stack (auth, cache, middleware) costs over axum itself.
//! 4. Overload: `GET /users/me` probed open loop at `--probe-rate`, first
//!    alone, then while logins are offered open loop at `--overload` times
//!    the hashing ceiling: how much the other endpoints suffer, and how the
//!    excess logins are answered (503 `server_busy` at once, or a queue).
//!
//! The target must run with `RATE_LIMIT_ENABLED=false`, or logins hit their
//! per-account limit within a second.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use serde_json::{Value, json};

use crate::load::{self, Report};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Base URL of a running keel-api (release build, rate limits off).
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    url: String,
    /// Seconds per measured run.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Concurrent connections for the `GET /users/me` and bare runs.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Concurrent connections for the login run.
    #[arg(long, default_value_t = 8)]
    login_connections: usize,
    /// Logins offered in the overload run, as a multiple of the hashing ceiling.
    #[arg(long, default_value_t = 4.0)]
    overload: f64,
    /// Requests per second of the `GET /users/me` probe beside the overload.
    #[arg(long, default_value_t = 100)]
    probe_rate: u32,
    /// Print one JSON object as the last line too.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let duration = Duration::from_secs(args.duration);
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let hash_ms = tokio::task::spawn_blocking(argon2_single_core_ms).await?;
    let ceiling = cores as f64 * 1000.0 / hash_ms;
    let parallel = tokio::task::spawn_blocking(move || argon2_parallel_per_s(cores)).await?;

    let client = reqwest::Client::builder()
        // A request the stack never answers is an error, not a hang.
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(args.connections.max(args.login_connections))
        .build()?;
    let (username, password, token) = sign_up(&client, &args.url).await?;

    let login_url = format!("{}/api/v1/auth/login", args.url);
    let login_body = json!({"username_or_email": username, "password": password});
    let logins = {
        let (client, url, body) = (client.clone(), login_url.clone(), login_body.clone());
        load::run(args.login_connections, duration, move || {
            let (client, url, body) = (client.clone(), url.clone(), body.clone());
            async move {
                client
                    .post(url)
                    .json(&body)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        })
        .await
    };
    if logins.errors * 100 > logins.requests {
        bail!(
            "{} of {} logins failed: run the target with RATE_LIMIT_ENABLED=false",
            logins.errors,
            logins.requests
        );
    }

    let me = get_run(
        &client,
        format!("{}/api/v1/users/me", args.url),
        Some(token.clone()),
        args.connections,
        duration,
    )
    .await;
    let bare_url = serve_bare().await?;
    let bare = get_run(&client, bare_url, None, args.connections, duration).await;
    let overload = overload(&args, &client, &login_url, &login_body, &token, ceiling).await;

    println!("keel-bench auth  ({cores} cores, {}s runs)", args.duration);
    println!(
        "{:<34} {:>12} {:>10} {:>10} {:>8}",
        "workload", "per second", "p50 ms", "p99 ms", "errors"
    );
    let row = |name: &str, r: &Report| {
        println!(
            "{name:<34} {:>12.1} {:>10.2} {:>10.2} {:>8}",
            r.per_second(),
            r.p50_ms(),
            r.p99_ms(),
            r.errors
        );
    };
    row(
        &format!("POST /auth/login (c={})", args.login_connections),
        &logins,
    );
    row(&format!("GET /users/me, JWT (c={})", args.connections), &me);
    row(
        &format!("bare axum JSON handler (c={})", args.connections),
        &bare,
    );
    println!();
    println!(
        "argon2id single-core hash: {hash_ms:.1} ms → ceiling {ceiling:.1} logins/s on {cores} cores"
    );
    println!(
        "argon2id on {cores} threads at once, measured: {parallel:.1} hashes/s (memory bandwidth is shared)"
    );
    println!(
        "logins reach {:.0} % of the cores/hash-time ceiling, {:.0} % of the measured parallel rate",
        100.0 * logins.per_second() / ceiling,
        100.0 * logins.per_second() / parallel
    );
    println!(
        "GET /users/me reaches {:.0} % of the bare handler",
        100.0 * me.per_second() / bare.per_second()
    );
    println!(
        "overload: logins offered at {:.0}/s ({}× the ceiling): {} signed in ({:.1}/s), {} refused 503 server_busy, {} other; login p50 {:.2} ms, p99 {:.2} ms",
        overload.offered_per_s,
        args.overload,
        overload.signed_in,
        overload.signed_in as f64 / args.duration as f64,
        overload.busy,
        overload.other,
        overload.logins.p50_ms(),
        overload.logins.p99_ms()
    );
    println!(
        "GET /users/me at {}/s, open loop: p99 {:.2} ms idle, {:.2} ms under the login overload ({:.2}×)",
        args.probe_rate,
        overload.idle.p99_ms(),
        overload.loaded.p99_ms(),
        overload.loaded.p99_ms() / overload.idle.p99_ms()
    );
    if args.json {
        let summary = json!({
            "cores": cores,
            "argon2_hash_ms": hash_ms,
            "login_ceiling_per_s": ceiling,
            "argon2_parallel_per_s": parallel,
            "logins_per_s": logins.per_second(),
            "login_p99_ms": logins.p99_ms(),
            "me_per_s": me.per_second(),
            "me_p99_ms": me.p99_ms(),
            "bare_per_s": bare.per_second(),
            "bare_p99_ms": bare.p99_ms(),
            "overload_offered_per_s": overload.offered_per_s,
            "overload_signed_in": overload.signed_in,
            "overload_busy": overload.busy,
            "overload_other": overload.other,
            "overload_login_p99_ms": overload.logins.p99_ms(),
            "probe_idle_p99_ms": overload.idle.p99_ms(),
            "probe_overload_p99_ms": overload.loaded.p99_ms(),
        });
        println!("{summary}");
    }
    Ok(())
}

/// What the overload run saw.
struct Overload {
    offered_per_s: f64,
    signed_in: u64,
    busy: u64,
    other: u64,
    logins: Report,
    idle: Report,
    loaded: Report,
}

async fn overload(
    args: &Args,
    client: &reqwest::Client,
    login_url: &str,
    login_body: &Value,
    token: &str,
    ceiling: f64,
) -> Overload {
    use std::sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    };
    let duration = Duration::from_secs(args.duration);
    let me_url = format!("{}/api/v1/users/me", args.url);
    let probe = || {
        let request = client.get(&me_url).bearer_auth(token);
        async move { request.send().await.is_ok_and(|r| r.status().is_success()) }
    };
    let idle = load::run_open(args.probe_rate, duration, probe).await;
    let offered_per_s = (ceiling * args.overload).max(1.0);
    let outcomes = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let login = || {
        let request = client.post(login_url).json(login_body);
        let outcomes = Arc::clone(&outcomes);
        async move {
            let slot = match request.send().await.map(|r| r.status().as_u16()) {
                Ok(200) => 0,
                Ok(503) => 1,
                _ => 2,
            };
            outcomes[slot].fetch_add(1, Ordering::Relaxed);
            slot == 0
        }
    };
    let (logins, loaded) = tokio::join!(
        load::run_open(offered_per_s as u32, duration, login),
        load::run_open(args.probe_rate, duration, probe),
    );
    Overload {
        offered_per_s,
        signed_in: outcomes[0].load(Ordering::Relaxed),
        busy: outcomes[1].load(Ordering::Relaxed),
        other: outcomes[2].load(Ordering::Relaxed),
        logins,
        idle,
        loaded,
    }
}

async fn get_run(
    client: &reqwest::Client,
    url: String,
    token: Option<String>,
    connections: usize,
    duration: Duration,
) -> Report {
    let client = client.clone();
    load::run(connections, duration, move || {
        let mut request = client.get(&url);
        if let Some(token) = &token {
            request = request.bearer_auth(token);
        }
        async move {
            match request.send().await {
                Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                _ => false,
            }
        }
    })
    .await
}

/// One argon2id hash with Keel's parameters into reused working memory —
/// the fastest a hash gets here, as Keel itself reuses its buffers.
struct Hasher {
    argon2: Argon2<'static>,
    blocks: Vec<Block>,
}

impl Hasher {
    fn new() -> Self {
        let params = Params::new(
            Params::DEFAULT_M_COST,
            Params::DEFAULT_T_COST,
            Params::DEFAULT_P_COST,
            None,
        )
        .expect("valid parameters");
        let blocks = vec![Block::default(); params.block_count()];
        Self {
            argon2: Argon2::new(Algorithm::Argon2id, Version::V0x13, params),
            blocks,
        }
    }

    fn hash(&mut self) {
        let mut out = [0u8; 32];
        self.argon2
            .hash_password_into_with_memory(
                b"benchmark password",
                b"sixteen byte salt",
                &mut out,
                &mut self.blocks[..],
            )
            .expect("argon2 hashes");
    }
}

/// Median of 30 hashes on one thread, after a warm-up.
pub(crate) fn argon2_single_core_ms() -> f64 {
    let mut hasher = Hasher::new();
    for _ in 0..5 {
        hasher.hash();
    }
    let mut times: Vec<f64> = (0..30)
        .map(|_| {
            let t0 = Instant::now();
            hasher.hash();
            t0.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Hashes per second with one thread per core hashing at once: what the
/// machine really allows, as the cores share memory bandwidth.
fn argon2_parallel_per_s(threads: usize) -> f64 {
    const PER_THREAD: usize = 15;
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let mut hasher = Hasher::new();
                hasher.hash();
                for _ in 0..PER_THREAD {
                    hasher.hash();
                }
            });
        }
    });
    (threads * PER_THREAD) as f64 / started.elapsed().as_secs_f64()
}

/// Registers a fresh user and signs in; returns its name, password and access token.
pub(crate) async fn sign_up(
    client: &reqwest::Client,
    url: &str,
) -> anyhow::Result<(String, String, String)> {
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..12];
    let (username, password) = (
        format!("bench_{suffix}"),
        format!("bench passphrase {suffix}"),
    );
    let body = json!({"username": username, "email": format!("{username}@example.com"), "password": password});
    let registered = client
        .post(format!("{url}/api/v1/auth/register"))
        .json(&body)
        .send()
        .await
        .context("reaching the API")?;
    if !registered.status().is_success() {
        bail!(
            "register answered {}: {}",
            registered.status(),
            registered.text().await.unwrap_or_default()
        );
    }
    let login = json!({"username_or_email": username, "password": password});
    let tokens: Value = client
        .post(format!("{url}/api/v1/auth/login"))
        .json(&login)
        .send()
        .await?
        .json()
        .await?;
    let token = tokens["access_token"]
        .as_str()
        .context("no access token in the login answer")?
        .to_owned();
    Ok((username, password, token))
}

/// A bare axum handler returning a user-sized JSON object, on a free port.
pub(crate) async fn serve_bare() -> anyhow::Result<String> {
    let body = json!({
        "id": "01932c5e-7c1e-7f00-8a4e-2f9d1c3b5a60", "username": "bench", "email": "bench@example.com",
        "first_name": null, "last_name": null, "phone_number": null, "phone_verified": false, "avatar_url": null,
        "bio": null, "timezone": "UTC", "language": "en", "role": "user", "is_active": true,
        "two_fa_enabled": false, "email_verified": false, "last_login_at": null,
        "created_at": "2026-11-21T00:00:00Z", "updated_at": "2026-11-21T00:00:00Z"
    });
    let router = axum::Router::new().route(
        "/",
        axum::routing::get(move || async move { axum::Json(body.clone()) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(url)
}
