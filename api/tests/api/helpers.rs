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
    workers::{self, WorkerCard},
};
use keel_testing as testing;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};
use sqlx::{Postgres, postgres::PgRow};
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

    /// `GET path` with one header `name: value` and no credential.
    pub async fn get_with(&self, path: &str, name: &str, value: &str) -> Response {
        let request = self.client.get(self.url(path)).header(name, value);
        request.send().await.expect("request sent")
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

    /// Runs `sql` on the app's database: a state no endpoint sets, such as
    /// an expired token.
    pub async fn execute(&self, sql: &'static str) {
        sqlx::query(sql).execute(self.pool()).await.expect(sql);
    }

    /// Runs `sql` with `$1` bound to `arg`.
    pub async fn execute_with<'a, A>(&self, sql: &'static str, arg: A)
    where
        A: 'a + sqlx::Encode<'a, Postgres> + sqlx::Type<Postgres>,
    {
        sqlx::query(sql)
            .bind(arg)
            .execute(self.pool())
            .await
            .expect(sql);
    }

    /// The one value `sql` selects, e.g. a `count(*)`.
    pub async fn scalar<T>(&self, sql: &'static str) -> T
    where
        T: Send + Unpin,
        (T,): for<'r> sqlx::FromRow<'r, PgRow>,
    {
        sqlx::query_scalar(sql)
            .fetch_one(self.pool())
            .await
            .expect(sql)
    }

    /// The one value `sql` selects with `$1` bound to `arg`.
    pub async fn scalar_with<'a, T, A>(&self, sql: &'static str, arg: A) -> T
    where
        T: Send + Unpin,
        (T,): for<'r> sqlx::FromRow<'r, PgRow>,
        A: 'a + sqlx::Encode<'a, Postgres> + sqlx::Type<Postgres>,
    {
        sqlx::query_scalar(sql)
            .bind(arg)
            .fetch_one(self.pool())
            .await
            .expect(sql)
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
        method: Method,
        path: &str,
        token: &str,
        body: Option<&Value>,
    ) -> Response {
        let request = self.client.request(method, self.url(path));
        send_json(request.bearer_auth(token), body).await
    }

    pub async fn get_as(&self, path: &str, token: &str) -> Response {
        self.send(Method::GET, path, token, None).await
    }

    /// `GET path` as `token`'s bearer, its body read as JSON whatever the status.
    pub async fn get_json(&self, path: &str, token: &str) -> Value {
        self.get_as(path, token)
            .await
            .json()
            .await
            .expect("a JSON body")
    }

    /// `POST path` as `token`'s bearer, with a JSON body or (`None`) none.
    pub async fn post_as<'a>(
        &self,
        path: &str,
        token: &str,
        body: impl Into<Option<&'a Value>>,
    ) -> Response {
        self.send(Method::POST, path, token, body.into()).await
    }

    /// `PATCH path` as `token`'s bearer with a JSON body.
    pub async fn patch_as(&self, path: &str, token: &str, body: &Value) -> Response {
        self.send(Method::PATCH, path, token, Some(body)).await
    }

    /// `PUT path` as `token`'s bearer with a JSON body.
    pub async fn put_as(&self, path: &str, token: &str, body: &Value) -> Response {
        self.send(Method::PUT, path, token, Some(body)).await
    }

    /// `DELETE path` as `token`'s bearer.
    pub async fn delete_as(&self, path: &str, token: &str) -> Response {
        self.send(Method::DELETE, path, token, None).await
    }

    /// `method path` authenticated by the API key `key` (`X-API-Key`), with
    /// an optional JSON body.
    pub async fn send_with_key(
        &self,
        method: Method,
        path: &str,
        key: &str,
        body: Option<&Value>,
    ) -> Response {
        let request = self.client.request(method, self.url(path));
        send_json(request.header("x-api-key", key), body).await
    }

    pub async fn register(&self, body: &Value) -> Response {
        self.post_json("/api/v1/auth/register", body).await
    }

    pub async fn login(&self, username_or_email: &str, password: &str) -> Response {
        let body = json!({"username_or_email": username_or_email, "password": password});
        self.post_json("/api/v1/auth/login", &body).await
    }

    pub async fn refresh(&self, refresh_token: &str) -> Response {
        let body = json!({"refresh_token": refresh_token});
        self.post_json("/api/v1/auth/refresh", &body).await
    }

    pub async fn me(&self, token: &str) -> Response {
        self.get_as("/api/v1/users/me", token).await
    }

    /// [`Self::login`]'s answer as JSON, whatever its status: the token pair,
    /// or a second factor's challenge.
    pub async fn login_json(&self, username_or_email: &str, password: &str) -> Value {
        let answer: Value = self
            .login(username_or_email, password)
            .await
            .json()
            .await
            .expect("a JSON body");
        // Logs must not show a live token.
        for name in ["access_token", "refresh_token"] {
            testing::record_secret(answer[name].as_str().unwrap_or_default());
        }
        answer
    }

    /// `user` signs in with their password: [`Self::login_json`].
    pub async fn sign_in(&self, user: &TestUser) -> Value {
        self.login_json(&user.user.username, &user.password).await
    }

    /// `POST /api/v1/auth/verify-2fa`: answers a sign-in challenge with `code`.
    pub async fn verify_2fa(&self, challenge: &str, code: &str) -> Response {
        let body = json!({"challenge_id": challenge, "code": code});
        self.post_json("/api/v1/auth/verify-2fa", &body).await
    }

    /// `POST /api/v1/auth/password-reset/request` for `email`.
    pub async fn request_password_reset(&self, email: &str) -> Response {
        let body = json!({"email": email});
        self.post_json("/api/v1/auth/password-reset/request", &body)
            .await
    }

    /// `POST /api/v1/auth/password-reset/confirm`: the mailed `token` and a new password.
    pub async fn confirm_password_reset(&self, token: &str, new_password: &str) -> Response {
        let body = json!({"token": token, "new_password": new_password});
        self.post_json("/api/v1/auth/password-reset/confirm", &body)
            .await
    }

    /// `POST /api/v1/auth/change-password` as `token`'s bearer.
    pub async fn change_password(&self, token: &str, current: &str, new: &str) -> Response {
        let body = json!({"current_password": current, "new_password": new});
        self.post_as("/api/v1/auth/change-password", token, &body)
            .await
    }

    /// A new API key of `user`, through the API; returns the key's JSON.
    pub async fn create_api_key(&self, user: &TestUser, name: &str) -> Value {
        let response = self
            .post_as("/api/v1/api-keys", &user.token, &json!({"name": name}))
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        let key: Value = response.json().await.unwrap();
        testing::record_secret(key["key"].as_str().unwrap_or_default());
        key
    }

    /// A new API key of `user`, through the API: its secret, as sent in `X-API-Key`.
    pub async fn api_key(&self, user: &TestUser, name: &str) -> String {
        let key = self.create_api_key(user, name).await;
        key["key"].as_str().expect("the key's secret").to_owned()
    }

    /// Leaves a live worker's card, `id` serving `queue`, in the registry,
    /// as the worker's heartbeat would.
    pub async fn announce_worker(&self, id: &str, queue: Queue) {
        self.announce_worker_of(id, queue, &[]).await;
    }

    /// [`Self::announce_worker`] of a worker that says it runs `kinds`.
    pub async fn announce_worker_of(&self, id: &str, queue: Queue, kinds: &[&str]) {
        let now = chrono::Utc::now();
        let mut card = WorkerCard {
            id: id.into(),
            hostname: "test".into(),
            pid: 1,
            queues: vec![queue],
            kinds: kinds.iter().map(|k| (*k).to_owned()).collect(),
            concurrency: 1,
            version: "test".into(),
            in_flight: 0,
            processed: 0,
            failed: 0,
            started_at: now,
            last_seen: now,
        };
        workers::heartbeat(&self.redis(), &mut card)
            .await
            .expect("a heartbeat");
    }

    /// A Redis client on this app's prefix, to look at what the app stored.
    pub fn redis(&self) -> RedisClient {
        RedisClient::lazy(&self.config).expect("redis client")
    }

    /// `POST /api/v1/tasks` as `token`.
    pub async fn create_task(&self, token: &str, body: &Value) -> Response {
        self.post_as("/api/v1/tasks", token, body).await
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

/// Asserts `response` answers `status`; its body read as JSON.
pub async fn json_at(response: Response, status: StatusCode) -> Value {
    assert_eq!(response.status(), status, "status");
    response.json().await.expect("a JSON body")
}

/// The whole seconds of `response`'s `Retry-After`.
pub fn retry_after(response: &Response) -> u64 {
    let value = response.headers()["retry-after"].to_str().unwrap();
    value.parse().expect("Retry-After in seconds")
}

/// [`assert_problem`] for the commonest refusal: 422 `validation_failed`.
pub async fn assert_invalid(response: Response) -> Problem {
    assert_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await
}

/// The fields a problem names, in its order.
pub fn fields(problem: &Problem) -> Vec<String> {
    problem
        .errors
        .as_ref()
        .map(|e| e.iter().map(|f| f.field.clone()).collect())
        .unwrap_or_default()
}

/// Asserts `problem` names `field` or a field inside it (`field.…`);
/// `case` says which case of a table failed.
pub fn assert_names(problem: &Problem, field: &str, case: &str) {
    let names = fields(problem);
    assert!(
        names
            .iter()
            .any(|f| f == field || f.starts_with(&format!("{field}."))),
        "{case}: expected an error on {field}, got {names:?}"
    );
}

/// Sends `request`, with `body` as JSON when there is one.
async fn send_json(request: RequestBuilder, body: Option<&Value>) -> Response {
    let request = match body {
        Some(body) => request.json(body),
        None => request,
    };
    request.send().await.expect("request sent")
}

/// Sends `request` with `body` as is, declared as `content_type`: bodies a
/// JSON client would never send.
pub async fn send_raw(
    request: RequestBuilder,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> Response {
    request
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("request sent")
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
