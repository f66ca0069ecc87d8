//! `spawn_app`: the real API on a free port with its own database and Redis
//! prefix, and typed helpers per endpoint.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use keel_api::{
    auth::{password::PasswordHasher, tokens::TokenKeys},
    error::Problem,
    startup::Application,
};
use keel_shared::{
    Config, RedisClient,
    db::users::{self, NewUser, ProfileChanges, User},
    domain::{EmailAddress, Password, Role, Username},
    queue::{JobQueue, Queue},
};
use keel_testing as testing;
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};
use tokio_util::sync::CancellationToken;

pub const API_BIN: &str = env!("CARGO_BIN_EXE_keel-api");

/// The signing key of every test app, so tests can forge tokens with or without it.
pub const TEST_SECRET: &str = "test-secret-key-of-at-least-32-bytes-long";

#[derive(Debug)]
pub struct TestApp {
    pub address: String,
    /// Where the app serves `/metrics` (`METRICS_PORT`, a free port here).
    pub metrics_address: String,
    pub client: reqwest::Client,
    pub db: Option<testing::TestDatabase>,
    pub config: Config,
    pub shutdown: CancellationToken,
    pub server: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// The API over a fresh database and Redis prefix.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// The API with extra configuration flags, e.g. `["--max-body-bytes", "1024"]`.
pub async fn spawn_app_with(extra: &[&str]) -> TestApp {
    let db = testing::TestDatabase::create()
        .await
        .expect("a test database");
    let prefix = testing::unique_redis_prefix();
    let config = testing::config(&db.url, &prefix, extra);
    start(config, Some(db)).await
}

/// The API pointed at a Postgres port where nothing listens.
pub async fn spawn_app_without_database() -> TestApp {
    let prefix = testing::unique_redis_prefix();
    let config = testing::config(&testing::unreachable_database_url(), &prefix, &[]);
    start(config, None).await
}

/// The API with a database but a Redis port where nothing listens.
pub async fn spawn_app_without_redis() -> TestApp {
    let url = testing::unreachable_redis_url();
    spawn_app_with(&["--redis-url", &url]).await
}

async fn start(mut config: Config, db: Option<testing::TestDatabase>) -> TestApp {
    testing::log_in_process();
    testing::record_secret(TEST_SECRET);
    config
        .auth
        .secret_key
        .get_or_insert_with(|| TEST_SECRET.to_owned().into());
    let key = config.signing_key().expect("development always has a key");
    let app = Application::build(config.clone(), key)
        .await
        .expect("the app builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let metrics_address = format!("http://{}", app.metrics_addr());
    let shutdown = app.shutdown_token();
    let server = tokio::spawn(app.run_until_stopped());
    TestApp {
        address,
        metrics_address,
        client: reqwest::Client::new(),
        db,
        config,
        shutdown,
        server,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub async fn get(&self, path: &str) -> Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request sent")
    }

    pub async fn health(&self) -> Response {
        self.get("/health").await
    }

    pub async fn live(&self) -> Response {
        self.get("/live").await
    }

    pub async fn ready(&self) -> Response {
        self.get("/ready").await
    }

    pub async fn health_db(&self) -> Response {
        self.get("/api/v1/health/db").await
    }

    pub async fn health_cache(&self) -> Response {
        self.get("/api/v1/health/cache").await
    }

    /// `/metrics` from the app's metrics port.
    pub async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.metrics_address))
            .send()
            .await
            .expect("request sent")
            .text()
            .await
            .expect("metrics text")
    }

    pub async fn openapi(&self) -> serde_json::Value {
        self.get("/openapi.json")
            .await
            .json()
            .await
            .expect("OpenAPI JSON")
    }

    /// A second API process on the same database and Redis prefix, as a
    /// load balancer would put beside this one.
    pub async fn spawn_replica(&self) -> TestApp {
        self.spawn_replica_with(|_| {}).await
    }

    /// A replica whose configuration `change` alters first (a rotated
    /// `SECRET_KEY`, say).
    pub async fn spawn_replica_with(&self, change: impl FnOnce(&mut Config)) -> TestApp {
        let mut config = self.config.clone();
        change(&mut config);
        start(config, None).await
    }

    pub fn pool(&self) -> &sqlx::PgPool {
        &self.db.as_ref().expect("this app has a database").pool
    }

    /// The app's token keys, to mint access tokens as the app would.
    pub fn token_keys(&self) -> TokenKeys {
        TokenKeys::new(&self.config, &self.config.signing_key().unwrap())
    }

    /// A user with `role`, inserted directly (no rate limit, no email), with
    /// a fresh access token.
    pub async fn create_user(&self, role: Role) -> TestUser {
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..10];
        let username = format!("{}_{suffix}", role.as_str());
        let password = format!("pw-{suffix}-long-enough");
        let new = NewUser {
            username: Username::parse(&username).unwrap(),
            email: EmailAddress::parse(&format!("{username}@example.com")).unwrap(),
            password_hash: PasswordHasher::new()
                .hash(&Password::parse(&password).unwrap())
                .await
                .unwrap(),
            role,
            email_verified: true,
            profile: ProfileChanges::default(),
        };
        let user = users::insert(self.pool(), &new).await.unwrap();
        let token = self.token_keys().issue_access(&user);
        testing::record_secret(&password);
        testing::record_secret(&token);
        TestUser {
            user,
            password,
            token,
        }
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    /// `method path` as `token`'s bearer, with an optional JSON body.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<&Value>,
    ) -> Response {
        let mut request = self
            .client
            .request(method, self.url(path))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(body);
        }
        request.send().await.expect("request sent")
    }

    pub async fn get_as(&self, path: &str, token: &str) -> Response {
        self.send(reqwest::Method::GET, path, token, None).await
    }

    pub async fn register(&self, body: &Value) -> Response {
        self.post_json("/api/v1/auth/register", body).await
    }

    pub async fn login(&self, username_or_email: &str, password: &str) -> Response {
        self.post_json(
            "/api/v1/auth/login",
            &json!({"username_or_email": username_or_email, "password": password}),
        )
        .await
    }

    pub async fn refresh(&self, refresh_token: &str) -> Response {
        self.post_json(
            "/api/v1/auth/refresh",
            &json!({"refresh_token": refresh_token}),
        )
        .await
    }

    pub async fn me(&self, token: &str) -> Response {
        self.get_as("/api/v1/users/me", token).await
    }

    /// A new API key of `user`, through the API; returns the key's JSON.
    pub async fn create_api_key(&self, user: &TestUser, name: &str) -> Value {
        let response = self
            .send(
                reqwest::Method::POST,
                "/api/v1/api-keys",
                &user.token,
                Some(&json!({"name": name})),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        let key: Value = response.json().await.unwrap();
        testing::record_secret(key["key"].as_str().unwrap_or_default());
        key
    }

    /// A Redis client on this app's prefix, to look at what the app stored.
    pub fn redis(&self) -> RedisClient {
        RedisClient::lazy(&self.config).expect("redis client")
    }

    /// `POST /api/v1/tasks` as `token`.
    pub async fn create_task(&self, token: &str, body: &Value) -> Response {
        self.send(reqwest::Method::POST, "/api/v1/tasks", token, Some(body))
            .await
    }

    /// Creates a task through the API and returns its JSON.
    pub async fn created_task(&self, token: &str, body: &Value) -> Value {
        let response = self.create_task(token, body).await;
        assert_eq!(response.status(), StatusCode::CREATED, "create {body}");
        response.json().await.unwrap()
    }

    /// The ids of the `RunTask` jobs in Redis for the `tasks` queue under this
    /// app's prefix, as apalis stores them: job id → job data.
    pub async fn queued_task_jobs(&self) -> Vec<String> {
        let config = JobQueue::new(self.redis()).apalis_config(Queue::Tasks);
        redis::cmd("HVALS")
            .arg(config.job_data_hash())
            .query_async(&mut self.redis().conn())
            .await
            .expect("HVALS of the job data")
    }

    /// `ZCARD` of the `tasks` queue's scheduled set: jobs pushed, not yet released.
    pub async fn scheduled_task_jobs(&self) -> i64 {
        let config = JobQueue::new(self.redis()).apalis_config(Queue::Tasks);
        redis::cmd("ZCARD")
            .arg(config.scheduled_jobs_set())
            .query_async(&mut self.redis().conn())
            .await
            .expect("ZCARD of the scheduled set")
    }

    /// [`Self::scheduled_task_jobs`] once it reaches `n`, or after 5 s: a
    /// create is answered at its commit, and its push follows.
    pub async fn scheduled_task_jobs_reaching(&self, n: i64) -> i64 {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let jobs = self.scheduled_task_jobs().await;
            if jobs >= n || std::time::Instant::now() > deadline {
                return jobs;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// [`Self::pushes_of`] once it reaches `n`, or after 5 s (the push
    /// follows the answer).
    pub async fn pushes_of_reaching(&self, task_id: &str, n: usize) -> usize {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let pushes = self.pushes_of(task_id).await;
            if pushes >= n || std::time::Instant::now() > deadline {
                return pushes;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// How many times the job of `task_id` was pushed (each push is a new job).
    pub async fn pushes_of(&self, task_id: &str) -> usize {
        self.queued_task_jobs()
            .await
            .iter()
            .filter(|data| data.contains(task_id))
            .count()
    }
}

/// Asserts `response` is problem+json with `status` and `code`; returns the problem.
pub async fn assert_problem(response: Response, status: StatusCode, code: &str) -> Problem {
    assert_eq!(response.status(), status, "status");
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(
        content_type.as_deref(),
        Some("application/problem+json"),
        "content type"
    );
    let header_id = response
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_owned());
    let problem: Problem = response.json().await.expect("a problem body");
    assert_eq!(problem.code, code, "code of {problem:?}");
    assert_eq!(problem.status, status.as_u16());
    assert_eq!(problem.kind, format!("urn:keel:problem:{code}"));
    assert!(
        !problem.title.is_empty() && !problem.detail.is_empty(),
        "title and detail are set: {problem:?}"
    );
    assert!(header_id.is_some(), "every response carries X-Request-Id");
    assert_eq!(
        problem.request_id, header_id,
        "the body quotes the request id of the header"
    );
    problem
}

/// A TCP proxy to `target` that can hold back every chunk the server sends
/// by a settable delay: a slow database, made from the real one.
#[derive(Debug, Clone)]
pub struct SlowProxy {
    pub addr: SocketAddr,
    delay_ms: Arc<AtomicU64>,
}

impl SlowProxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let delay_ms = Arc::new(AtomicU64::new(0));
        let delay = Arc::clone(&delay_ms);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                tokio::spawn(pipe(client, server, Arc::clone(&delay)));
            }
        });
        Self { addr, delay_ms }
    }

    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms
            .store(u64::try_from(delay.as_millis()).unwrap(), Ordering::SeqCst);
    }
}

async fn pipe(client: TcpStream, server: TcpStream, delay: Arc<AtomicU64>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream =
        tokio::spawn(async move { tokio::io::copy(&mut client_read, &mut server_write).await });
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match server_read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let ms = delay.load(Ordering::SeqCst);
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if client_write.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    upstream.abort();
}

/// Where the test PostgreSQL listens.
pub fn postgres_addr() -> SocketAddr {
    let url = url::Url::parse(&testing::server_url()).unwrap();
    let host = url.host_str().unwrap_or("127.0.0.1");
    let host = if host == "localhost" {
        "127.0.0.1"
    } else {
        host
    };
    format!("{host}:{}", url.port().unwrap_or(5432))
        .parse()
        .unwrap()
}

/// A user the test created, with its password and an access token.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub user: User,
    pub password: String,
    pub token: String,
}

/// A registration body with fresh, valid values.
pub fn registration() -> Value {
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..10];
    let password = format!("a long passphrase {suffix}");
    testing::record_secret(&password);
    json!({
        "username": format!("user_{suffix}"),
        "email": format!("user_{suffix}@example.com"),
        "password": password,
    })
}
