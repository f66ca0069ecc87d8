//! The one typed configuration of all three binaries: every variable of
//! OPERATIONS.md as a `--flag` and an environment variable (or `.env` entry),
//! parsed and checked once at start. The settings are grouped in sections
//! (one struct each, flattened); [`parsers`] reads their values and
//! [`command_line`] turns a bad one into one line and exit code 2.

use std::{net::IpAddr, num::NonZeroUsize, path::PathBuf, time::Duration};

use clap::{ArgAction, Args, ValueEnum, builder::BoolishValueParser};
use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};

use crate::queue::Queue;

mod command_line;
mod parsers;

pub use command_line::{USAGE_EXIT_CODE, exit_config, exit_usage, parse_cli};
use parsers::*;

/// Keel's configuration, in sections. Each field is a flag and an
/// environment variable; `--help` of every binary lists them by section,
/// with their defaults.
#[derive(Args, Clone, Debug)]
pub struct Config {
    #[command(flatten)]
    pub process: ProcessConfig,
    #[command(flatten)]
    pub database: DatabaseConfig,
    #[command(flatten)]
    pub redis: RedisConfig,
    #[command(flatten)]
    pub http: HttpConfig,
    #[command(flatten)]
    pub auth: AuthConfig,
    #[command(flatten)]
    pub websocket: WebSocketConfig,
    #[command(flatten)]
    pub smtp: SmtpConfig,
    #[command(flatten)]
    pub oauth: OAuthConfig,
    #[command(flatten)]
    pub storage: StorageConfig,
    #[command(flatten)]
    pub worker: WorkerConfig,
    #[command(flatten)]
    pub tasks: TasksConfig,
}

/// The running process: environment, logs, metrics port, shutdown, insecure overrides.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Process")]
pub struct ProcessConfig {
    /// `development` or `production`; production refuses insecure settings.
    #[arg(long, env = "ENVIRONMENT", value_enum, default_value_t = Environment::Development)]
    pub environment: Environment,

    /// Log format; `pretty` in development and `json` in production unless set.
    #[arg(long, env = "LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,

    /// Log filter in `tracing` EnvFilter syntax, e.g. `info,keel_api=debug`.
    #[arg(long = "log-filter", env = "RUST_LOG", default_value = DEFAULT_LOG_FILTER, value_parser = log_filter)]
    pub rust_log: String,

    /// Seconds a stopping process may take to finish or hand back what it holds.
    #[arg(long, env = "SHUTDOWN_GRACE_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub shutdown_grace_seconds: u64,

    /// Seconds the API keeps serving with `/ready` at 503 after a stop signal,
    /// so a load balancer takes it out of rotation before it stops accepting.
    #[arg(long, env = "SHUTDOWN_DRAIN_SECONDS", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=300))]
    pub shutdown_drain_seconds: u64,

    /// Port of `/health` and `/metrics` (9100 API, 9101 worker, 9102 scheduler), on `HOST`.
    #[arg(long, env = "METRICS_PORT")]
    pub metrics_port: Option<u16>,

    /// Insecure settings production may keep anyway (comma list of their variables:
    /// `RATE_LIMIT_ENABLED`, `TRUSTED_PROXIES`, `SMTP_TLS`); each start warns of each.
    #[arg(
        long,
        env = "ALLOW_INSECURE_SETTINGS",
        value_delimiter = ',',
        value_parser = insecure_setting
    )]
    pub allow_insecure_settings: Vec<InsecureSetting>,
}

/// PostgreSQL.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Database")]
pub struct DatabaseConfig {
    /// PostgreSQL connection URL.
    #[arg(id = "database_url", long = "database-url", env = "DATABASE_URL", default_value = "postgres://localhost/keel", value_parser = SecretUrlParser::Postgres, hide_env_values = true)]
    pub url: SecretString,

    /// Maximum connections in each process's Postgres pool.
    #[arg(id = "database_max_connections", long = "database-max-connections", env = "DATABASE_MAX_CONNECTIONS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_connections: u32,

    /// Seconds to wait for a Postgres connection before answering 503.
    #[arg(id = "database_timeout_seconds", long = "database-timeout-seconds", env = "DATABASE_TIMEOUT_SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub timeout_seconds: u64,
}

/// Redis, where the queues live.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Redis")]
pub struct RedisConfig {
    /// Redis connection URL (queues, rate limits, cache, pub/sub).
    #[arg(id = "redis_url", long = "redis-url", env = "REDIS_URL", default_value = "redis://127.0.0.1:6379", value_parser = SecretUrlParser::Redis, hide_env_values = true)]
    pub url: SecretString,

    /// Prefix of every Redis key and queue name, so several deployments (or tests) share one Redis.
    #[arg(id = "redis_prefix", long = "redis-prefix", env = "REDIS_PREFIX", default_value = "keel", value_parser = redis_prefix)]
    pub prefix: String,
}

/// The API's listener and what it accepts.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "HTTP")]
pub struct HttpConfig {
    /// Address the API listens on.
    #[arg(long, env = "HOST", default_value = "0.0.0.0")]
    pub host: IpAddr,

    /// Port the API listens on (0 picks a free one).
    #[arg(long, env = "PORT", default_value_t = 8000)]
    pub port: u16,

    /// PEM certificate chain; with `TLS_KEY_FILE` the API serves HTTPS itself.
    #[arg(long, env = "TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,

    /// PEM private key for `TLS_CERT_FILE`.
    #[arg(long, env = "TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,

    /// Comma-separated CIDRs of proxies whose `X-Forwarded-For` is believed.
    #[arg(long, env = "TRUSTED_PROXIES", value_delimiter = ',', value_parser = cidr)]
    pub trusted_proxies: Vec<IpNet>,

    /// CORS origins allowed to call the API: a comma list or a JSON list.
    #[arg(long, env = "ALLOWED_ORIGINS", value_parser = origins, default_value = "")]
    pub allowed_origins: Origins,

    /// Public base URL of the API, used for links in emails.
    #[arg(long, env = "APP_BASE_URL", default_value = "http://localhost:8000", value_parser = base_url)]
    pub app_base_url: String,

    /// Longest time a request may take before it is answered 408.
    #[arg(long, env = "REQUEST_TIMEOUT_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub request_timeout_seconds: u64,

    /// Connections the API keeps open at once, WebSockets included; one past
    /// it is answered 503 `too_many_connections` and closed.
    #[arg(id = "http_max_connections", long = "http-max-connections", env = "HTTP_MAX_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,

    /// Seconds an idle keep-alive connection stays open, and the longest a
    /// client may take to send a request's head.
    #[arg(id = "http_keep_alive_seconds", long = "http-keep-alive-seconds", env = "HTTP_KEEP_ALIVE_SECONDS", default_value_t = 75, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub keep_alive_seconds: u64,

    /// Largest request body accepted, in bytes (413 beyond).
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Bytes of request bodies the API holds at once while they arrive,
    /// over every connection (at least `MAX_BODY_BYTES`); a body read whole
    /// that finds it spent is answered 503 `server_busy`. The first 16 KiB
    /// of each body are not counted.
    #[arg(id = "http_max_buffered_body_bytes", long = "http-max-buffered-body-bytes", env = "HTTP_MAX_BUFFERED_BODY_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_buffered_body_bytes: usize,
}

/// Token signing, lifetimes and rate limits.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Auth")]
pub struct AuthConfig {
    /// Key that signs tokens; at least 32 bytes. Required in production
    /// (`keel-api gen-secret` makes one); generated per start in development.
    #[arg(long, env = "SECRET_KEY", value_parser = secret, hide_env_values = true)]
    pub secret_key: Option<SecretString>,

    /// The key `SECRET_KEY` replaced, while rotating it: access tokens it
    /// signed still verify, and the API re-seals TOTP secrets sealed under
    /// it with the new key when it starts. Drop it once those tokens have
    /// expired (`ACCESS_TOKEN_EXPIRE_MINUTES`).
    #[arg(long, env = "SECRET_KEY_PREVIOUS", value_parser = secret, hide_env_values = true)]
    pub secret_key_previous: Option<SecretString>,

    /// JWT signing algorithm.
    #[arg(long, env = "ALGORITHM", value_enum, default_value_t = JwtAlgorithm::Hs256, ignore_case = true)]
    pub algorithm: JwtAlgorithm,

    /// Lifetime of an access token, in minutes.
    #[arg(long, env = "ACCESS_TOKEN_EXPIRE_MINUTES", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=1440))]
    pub access_token_expire_minutes: u32,

    /// Lifetime of a refresh token, in days.
    #[arg(long, env = "REFRESH_TOKEN_EXPIRE_DAYS", default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..=365))]
    pub refresh_token_expire_days: u32,

    /// Lifetime of an emailed 2FA code, in minutes.
    #[arg(long, env = "TWO_FA_CODE_EXPIRE_MINUTES", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=60))]
    pub two_fa_code_expire_minutes: u32,

    /// Whether requests are rate limited (`true`/`false`).
    #[arg(long, env = "RATE_LIMIT_ENABLED", default_value = "true", action = ArgAction::Set, value_parser = BoolishValueParser::new())]
    pub rate_limit_enabled: bool,

    /// Requests per minute per client: per IP, or per user when authenticated.
    #[arg(long, env = "RATE_LIMIT_PER_MINUTE", default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit_per_minute: u32,
}

/// Limits and timers of `/ws`.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "WebSocket")]
pub struct WebSocketConfig {
    /// A WebSocket message larger than this closes its socket (1009).
    #[arg(id = "ws_max_message_bytes", long = "ws-max-message-bytes", env = "WS_MAX_MESSAGE_BYTES", default_value_t = 65536, value_parser = clap::value_parser!(u32).range(256..=16_777_216))]
    pub max_message_bytes: u32,

    /// Messages per second a WebSocket client may send; beyond, they are refused, and
    /// at twice that the socket is closed (1008).
    #[arg(id = "ws_messages_per_second", long = "ws-messages-per-second", env = "WS_MESSAGES_PER_SECOND", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub messages_per_second: u32,

    /// Open WebSockets one user may hold on one API process.
    #[arg(id = "ws_max_sockets_per_user", long = "ws-max-sockets-per-user", env = "WS_MAX_SOCKETS_PER_USER", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_sockets_per_user: u32,

    /// Rooms one WebSocket may be in.
    #[arg(id = "ws_max_rooms", long = "ws-max-rooms", env = "WS_MAX_ROOMS", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_rooms: u32,

    /// Seconds between the server's pings; a socket that misses two pongs is dropped.
    #[arg(id = "ws_ping_seconds", long = "ws-ping-seconds", env = "WS_PING_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub ping_seconds: u64,

    /// A WebSocket whose client sends nothing this long is closed (1000).
    #[arg(id = "ws_idle_seconds", long = "ws-idle-seconds", env = "WS_IDLE_SECONDS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub idle_seconds: u64,
}

/// Outgoing mail.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "SMTP")]
pub struct SmtpConfig {
    /// SMTP server; unset, email goes to the file outbox `.data/outbox/`.
    #[arg(id = "smtp_host", long = "smtp-host", env = "SMTP_HOST")]
    pub host: Option<String>,

    /// SMTP port.
    #[arg(
        id = "smtp_port",
        long = "smtp-port",
        env = "SMTP_PORT",
        default_value_t = 587
    )]
    pub port: u16,

    /// SMTP user name.
    #[arg(id = "smtp_user", long = "smtp-user", env = "SMTP_USER")]
    pub user: Option<String>,

    /// SMTP password.
    #[arg(id = "smtp_password", long = "smtp-password", env = "SMTP_PASSWORD", value_parser = secret, hide_env_values = true)]
    pub password: Option<SecretString>,

    /// SMTP transport security: `none`, `starttls` or `tls` (`true`/`false` read as starttls/none).
    #[arg(id = "smtp_tls", long = "smtp-tls", env = "SMTP_TLS", default_value = "starttls", value_parser = SmtpTls::parse)]
    pub tls: SmtpTls,

    /// Sender address of Keel's emails.
    #[arg(
        id = "emails_from_email",
        long = "emails-from-email",
        env = "EMAILS_FROM_EMAIL"
    )]
    pub from_email: Option<String>,

    /// Where emails go as `.eml` files when no `SMTP_HOST` is set.
    #[arg(
        id = "email_outbox_dir",
        long = "email-outbox-dir",
        env = "EMAIL_OUTBOX_DIR",
        default_value = ".data/outbox"
    )]
    pub outbox_dir: PathBuf,
}

/// Sign-in with Google, GitHub and OpenID Connect providers.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "OAuth")]
pub struct OAuthConfig {
    // A provider is offered when its client id and secret are set.
    /// The public URL providers send the browser back to, `{provider}` standing
    /// for the provider's name; register it with each provider. Unset:
    /// `APP_BASE_URL` + `/api/v1/auth/oauth/{provider}/callback`.
    #[arg(id = "oauth_redirect_uri", long = "oauth-redirect-uri", env = "OAUTH_REDIRECT_URI", value_parser = redirect_uri_template)]
    pub redirect_uri: Option<String>,

    /// Client id of Keel's Google OAuth client (sign-in with Google, OpenID Connect).
    #[arg(
        id = "oauth_google_client_id",
        long = "oauth-google-client-id",
        env = "OAUTH_GOOGLE_CLIENT_ID"
    )]
    pub google_client_id: Option<String>,

    /// Secret of Keel's Google OAuth client.
    #[arg(id = "oauth_google_client_secret", long = "oauth-google-client-secret", env = "OAUTH_GOOGLE_CLIENT_SECRET", value_parser = secret, hide_env_values = true)]
    pub google_client_secret: Option<SecretString>,

    /// Client id of Keel's GitHub OAuth app (sign-in with GitHub, plain OAuth 2.0).
    #[arg(
        id = "oauth_github_client_id",
        long = "oauth-github-client-id",
        env = "OAUTH_GITHUB_CLIENT_ID"
    )]
    pub github_client_id: Option<String>,

    /// Secret of Keel's GitHub OAuth app.
    #[arg(id = "oauth_github_client_secret", long = "oauth-github-client-secret", env = "OAUTH_GITHUB_CLIENT_SECRET", value_parser = secret, hide_env_values = true)]
    pub github_client_secret: Option<SecretString>,

    /// Other OpenID Connect providers, found by discovery from their issuer: a JSON
    /// list of `{"name", "issuer", "client_id", "client_secret", "scopes"?, "display_name"?}`
    /// (`scopes`: a list or a space-separated string; `openid email profile` when absent).
    #[arg(id = "oauth_oidc_providers", long = "oauth-oidc-providers", env = "OAUTH_OIDC_PROVIDERS", value_parser = OidcProvidersParser, default_value = "", hide_env_values = true, hide_default_value = true)]
    pub oidc_providers: OidcProviders,
}

/// Where files are kept, and how much a user may keep.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Storage")]
pub struct StorageConfig {
    /// Where files (uploads, avatars, task outputs) are kept when no `S3_BUCKET` is set.
    #[arg(long, env = "FILES_DIR", default_value = ".data/files")]
    pub files_dir: PathBuf,

    /// An S3-compatible bucket for files instead of `FILES_DIR`, so API
    /// replicas and workers on several machines share them.
    #[arg(long, env = "S3_BUCKET")]
    pub s3_bucket: Option<String>,

    /// The S3 endpoint, for stores other than AWS (MinIO, Ceph, moto):
    /// `http(s)://host:port`, path-style requests. Unset: AWS itself.
    #[arg(long, env = "S3_ENDPOINT", value_parser = base_url)]
    pub s3_endpoint: Option<String>,

    /// The bucket's region.
    #[arg(long, env = "S3_REGION", default_value = "us-east-1")]
    pub s3_region: String,

    /// S3 credentials (unset: none are sent, for public or instance-role setups).
    #[arg(long, env = "S3_ACCESS_KEY_ID", value_parser = secret, hide_env_values = true)]
    pub s3_access_key_id: Option<SecretString>,

    #[arg(long, env = "S3_SECRET_ACCESS_KEY", value_parser = secret, hide_env_values = true)]
    pub s3_secret_access_key: Option<SecretString>,

    /// Largest file one upload part may be, in bytes (413 beyond).
    #[arg(long, env = "MAX_UPLOAD_BYTES", default_value_t = 100 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_upload_bytes: u64,

    /// Most files in one upload request.
    #[arg(long, env = "MAX_FILES_PER_UPLOAD", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_files_per_upload: u32,

    /// Bytes of files each user may keep in all (413 `quota_exceeded` beyond).
    #[arg(long, env = "USER_STORAGE_QUOTA_BYTES", default_value_t = 1024 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub user_storage_quota_bytes: u64,

    /// Largest avatar image, in bytes.
    #[arg(long, env = "MAX_AVATAR_BYTES", default_value_t = 2 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..=104_857_600))]
    pub max_avatar_bytes: u64,
}

/// What a `keel-worker` takes and how much at once.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Worker")]
pub struct WorkerConfig {
    /// Queues this worker takes jobs from (comma list).
    #[arg(id = "worker_queues", long = "queues", env = "WORKER_QUEUES", value_delimiter = ',', value_enum, default_values_t = Queue::ALL)]
    pub queues: Vec<Queue>,

    /// Jobs a worker runs at once (128 by default: tasks mostly wait on I/O).
    #[arg(
        id = "worker_concurrency",
        long = "concurrency",
        env = "WORKER_CONCURRENCY"
    )]
    pub concurrency: Option<NonZeroUsize>,

    /// Name of this worker process; defaults to host, pid and a random suffix (names must be unique).
    #[arg(id = "worker_name", long = "name", env = "WORKER_NAME")]
    pub name: Option<String>,
}

/// Leases, retries, timeouts, quotas and retention of tasks.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Tasks")]
pub struct TasksConfig {
    /// Seconds a worker's claim on a running task lasts; renewed every third of it while
    /// the task runs, so a dead worker's tasks are taken over this long after it died.
    #[arg(id = "task_lease_seconds", long = "task-lease-seconds", env = "TASK_LEASE_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(2..=3600))]
    pub lease_seconds: u64,

    /// First retry delay of a failed task in milliseconds; doubled per attempt (with
    /// jitter: each delay is 50–100 % of that), at most `TASK_RETRY_MAX_SECONDS`.
    #[arg(id = "task_retry_base_ms", long = "task-retry-base-ms", env = "TASK_RETRY_BASE_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub retry_base_ms: u64,

    /// Longest retry delay of a failed task, in seconds.
    #[arg(id = "task_retry_max_seconds", long = "task-retry-max-seconds", env = "TASK_RETRY_MAX_SECONDS", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub retry_max_seconds: u64,

    /// Timeout of a task that sets none (`timeout_seconds`).
    #[arg(id = "task_default_timeout_seconds", long = "task-default-timeout-seconds", env = "TASK_DEFAULT_TIMEOUT_SECONDS", default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..=86400))]
    pub default_timeout_seconds: u32,

    /// Unfinished (pending, running, retrying) tasks one user may have; 429 beyond. 0 = no cap.
    #[arg(
        id = "max_unfinished_tasks_per_user",
        long = "max-unfinished-tasks-per-user",
        env = "MAX_UNFINISHED_TASKS_PER_USER",
        default_value_t = 10_000
    )]
    pub max_unfinished_per_user: u32,

    /// Hosts the `http_request` task kind may call (comma list; `host` or `host:port`).
    /// Empty: the kind refuses every URL.
    #[arg(
        id = "task_http_allowed_hosts",
        long = "task-http-allowed-hosts",
        env = "TASK_HTTP_ALLOWED_HOSTS",
        value_delimiter = ','
    )]
    pub http_allowed_hosts: Vec<String>,

    /// Offers the test-only task kinds (`abort`, which kills its worker; `steady_sleep`,
    /// which may not be cancelled once it runs; `snooze`) for fault tests.
    /// Refused in production.
    #[arg(long, env = "ENABLE_TEST_KINDS", default_value = "false", action = ArgAction::Set, value_parser = BoolishValueParser::new())]
    pub enable_test_kinds: bool,

    /// Days finished tasks and email deliveries are kept; the daily purge deletes older ones.
    #[arg(id = "task_retention_days", long = "task-retention-days", env = "TASK_RETENTION_DAYS", default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub retention_days: u32,

    /// Seconds between the scheduler's reconcile passes (re-queueing what Redis lost,
    /// ending expired leases).
    #[arg(long, env = "RECONCILE_SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=60))]
    pub reconcile_seconds: u64,
}

/// Whether `nets` together cover every IPv4 or every IPv6 address
/// (`0.0.0.0/0`, or `0.0.0.0/1,128.0.0.0/1`, and so on).
fn trusts_everyone(nets: &[IpNet]) -> bool {
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for net in nets {
        match net {
            IpNet::V4(n) => v4.push(*n),
            IpNet::V6(n) => v6.push(*n),
        }
    }
    ipnet::Ipv4Net::aggregate(&v4)
        .iter()
        .any(|n| n.prefix_len() == 0)
        || ipnet::Ipv6Net::aggregate(&v6)
            .iter()
            .any(|n| n.prefix_len() == 0)
}

/// A setting production refuses unless `ALLOW_INSECURE_SETTINGS` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum InsecureSetting {
    /// `RATE_LIMIT_ENABLED=false`: no limit on guessing passwords and codes.
    #[value(name = "RATE_LIMIT_ENABLED")]
    RateLimitEnabled,
    /// `TRUSTED_PROXIES` with `0.0.0.0/0` or `::/0`: every client picks its
    /// own address (and rate-limit bucket) with `X-Forwarded-For`.
    #[value(name = "TRUSTED_PROXIES")]
    TrustedProxies,
    /// `SMTP_TLS=none` to a host that is not loopback: passwords and reset
    /// links cross the network in clear text.
    #[value(name = "SMTP_TLS")]
    SmtpTls,
}

impl InsecureSetting {
    pub fn variable(self) -> &'static str {
        match self {
            Self::RateLimitEnabled => "RATE_LIMIT_ENABLED",
            Self::TrustedProxies => "TRUSTED_PROXIES",
            Self::SmtpTls => "SMTP_TLS",
        }
    }
}

/// Where Keel runs; production turns insecure conveniences into errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Environment {
    Development,
    Production,
}

impl Environment {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Development => "development",
            Self::Production => "production",
        }
    }
}

/// The HMAC algorithms a shared `SECRET_KEY` can sign with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum JwtAlgorithm {
    #[value(name = "HS256")]
    Hs256,
    #[value(name = "HS384")]
    Hs384,
    #[value(name = "HS512")]
    Hs512,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// SMTP transport security.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmtpTls {
    None,
    Starttls,
    Tls,
}

impl SmtpTls {
    /// Accepts the seeds' booleans too: `true` meant STARTTLS, `false` plain.
    fn parse(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" | "false" | "0" | "no" => Ok(Self::None),
            "starttls" | "true" | "1" | "yes" => Ok(Self::Starttls),
            "tls" | "ssl" => Ok(Self::Tls),
            _ => Err("expected none, starttls or tls".into()),
        }
    }
}

/// Allowed CORS origins, each `scheme://host[:port]`, or any origin with `*`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Origins {
    pub any: bool,
    pub list: Vec<String>,
}

/// The OpenID Connect providers of `OAUTH_OIDC_PROVIDERS`, beside the presets.
#[derive(Clone, Debug, Default)]
pub struct OidcProviders(pub Vec<OidcProvider>);

/// An OpenID Connect provider found by discovery from its issuer.
#[derive(Clone, Debug)]
pub struct OidcProvider {
    /// Its name in Keel's URLs: 1–32 of `[a-z0-9_-]`, not a preset's name.
    pub name: String,
    /// What a sign-in button says; the name when not given.
    pub display_name: String,
    /// An http(s) URL with no query or fragment; discovery reads
    /// `<issuer>/.well-known/openid-configuration`.
    pub issuer: String,
    pub client_id: String,
    pub client_secret: SecretString,
    /// Scopes asked for besides `openid`, which is always asked for.
    pub scopes: Vec<String>,
}

/// The names of the preset providers, which `OAUTH_OIDC_PROVIDERS` may not reuse.
pub const OAUTH_PRESETS: [&str; 2] = ["google", "github"];

/// Where a provider sends the browser back when `OAUTH_REDIRECT_URI` is unset,
/// after `APP_BASE_URL`.
pub const OAUTH_CALLBACK_PATH: &str = "/api/v1/auth/oauth/{provider}/callback";

impl Config {
    pub fn is_production(&self) -> bool {
        self.process.environment == Environment::Production
    }

    pub fn log_format(&self) -> LogFormat {
        self.process
            .log_format
            .unwrap_or(match self.process.environment {
                Environment::Development => LogFormat::Pretty,
                Environment::Production => LogFormat::Json,
            })
    }

    /// The redirect URI registered with `provider`: `OAUTH_REDIRECT_URI`
    /// with its `{provider}` filled in.
    pub fn oauth_redirect_uri(&self, provider: &str) -> String {
        let template = self
            .oauth
            .redirect_uri
            .clone()
            .unwrap_or_else(|| format!("{}{OAUTH_CALLBACK_PATH}", self.http.app_base_url));
        template.replace("{provider}", provider)
    }

    pub fn database_timeout(&self) -> Duration {
        Duration::from_secs(self.database.timeout_seconds)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.process.shutdown_grace_seconds)
    }

    pub fn worker_concurrency(&self) -> usize {
        self.worker
            .concurrency
            .map_or_else(default_worker_concurrency, NonZeroUsize::get)
    }

    /// Checks that hold for every binary: settings that parse alone but not
    /// together, and (in production) insecure ones.
    ///
    /// # Errors
    /// Every variable found wrong, at once: an operator fixes them in one go.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut errors = Vec::new();
        if self.http.tls_cert_file.is_some() != self.http.tls_key_file.is_some() {
            let missing = if self.http.tls_cert_file.is_none() {
                "TLS_CERT_FILE"
            } else {
                "TLS_KEY_FILE"
            };
            errors.push(ConfigError::new(
                missing,
                "TLS_CERT_FILE and TLS_KEY_FILE must be set together",
            ));
        }
        for (var, path) in [
            ("TLS_CERT_FILE", &self.http.tls_cert_file),
            ("TLS_KEY_FILE", &self.http.tls_key_file),
        ] {
            if let Some(path) = path.as_ref().filter(|p| !p.is_file()) {
                errors.push(ConfigError::new(
                    var,
                    format!("no readable file at {}", path.display()),
                ));
            }
        }
        if self.is_production() {
            errors.extend(self.production_refusals());
        }
        self.validate_oauth(&mut errors);
        if self.smtp.host.is_some() && self.smtp.from_email.is_none() {
            errors.push(ConfigError::new(
                "EMAILS_FROM_EMAIL",
                "required when SMTP_HOST is set",
            ));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// What production refuses: conveniences of development, and the
    /// insecure settings `ALLOW_INSECURE_SETTINGS` does not name.
    fn production_refusals(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        if self.http.allowed_origins.any {
            errors.push(ConfigError::new(
                "ALLOWED_ORIGINS",
                "`*` is refused in production; list the origins",
            ));
        }
        if self.tasks.enable_test_kinds {
            errors.push(ConfigError::new(
                "ENABLE_TEST_KINDS",
                "test-only task kinds are refused in production",
            ));
        }
        if !self.http.app_base_url.starts_with("https://") {
            errors.push(ConfigError::new(
                "APP_BASE_URL",
                "must be https:// in production",
            ));
        }
        for setting in self.insecure_settings() {
            if !self.process.allow_insecure_settings.contains(&setting) {
                let why = match setting {
                    InsecureSetting::RateLimitEnabled => {
                        "false is refused in production: nothing would limit password and code guessing"
                    }
                    InsecureSetting::TrustedProxies => {
                        "0.0.0.0/0 or ::/0 is refused in production: every client could pick its own address with X-Forwarded-For"
                    }
                    InsecureSetting::SmtpTls => {
                        "none is refused in production for an SMTP_HOST that is not loopback: mail would cross the network in clear text"
                    }
                };
                errors.push(ConfigError::new(
                    setting.variable(),
                    format!(
                        "{why} (ALLOW_INSECURE_SETTINGS={} keeps it)",
                        setting.variable()
                    ),
                ));
            }
        }
        errors
    }

    /// The insecure settings this configuration holds, allowed or not.
    pub fn insecure_settings(&self) -> Vec<InsecureSetting> {
        let mut found = Vec::new();
        if !self.auth.rate_limit_enabled {
            found.push(InsecureSetting::RateLimitEnabled);
        }
        if trusts_everyone(&self.http.trusted_proxies) {
            found.push(InsecureSetting::TrustedProxies);
        }
        let loopback = |host: &str| {
            host.eq_ignore_ascii_case("localhost")
                || host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        };
        if self.smtp.tls == SmtpTls::None && self.smtp.host.as_deref().is_some_and(|h| !loopback(h))
        {
            found.push(InsecureSetting::SmtpTls);
        }
        found
    }

    /// The insecure settings production keeps because `ALLOW_INSECURE_SETTINGS`
    /// names them: warned of at every start.
    pub fn insecure_overrides(&self) -> Vec<InsecureSetting> {
        if !self.is_production() {
            return Vec::new();
        }
        self.insecure_settings()
            .into_iter()
            .filter(|s| self.process.allow_insecure_settings.contains(s))
            .collect()
    }

    /// A preset's client id and secret come together; in production every
    /// URL of the flow is https.
    fn validate_oauth(&self, errors: &mut Vec<ConfigError>) {
        let presets = [
            (
                "OAUTH_GOOGLE_CLIENT_ID",
                "OAUTH_GOOGLE_CLIENT_SECRET",
                self.oauth.google_client_id.is_some(),
                self.oauth.google_client_secret.is_some(),
            ),
            (
                "OAUTH_GITHUB_CLIENT_ID",
                "OAUTH_GITHUB_CLIENT_SECRET",
                self.oauth.github_client_id.is_some(),
                self.oauth.github_client_secret.is_some(),
            ),
        ];
        for (id, secret, has_id, has_secret) in presets {
            if has_id != has_secret {
                let missing = if has_id { secret } else { id };
                errors.push(ConfigError::new(
                    missing,
                    format!("{id} and {secret} must be set together"),
                ));
            }
        }
        let any_provider = presets.iter().any(|p| p.2) || !self.oauth.oidc_providers.0.is_empty();
        if self.is_production() && any_provider {
            if !self.oauth_redirect_uri("x").starts_with("https://") {
                errors.push(ConfigError::new(
                    "OAUTH_REDIRECT_URI",
                    "must be https:// in production",
                ));
            }
            if let Some(p) = self
                .oauth
                .oidc_providers
                .0
                .iter()
                .find(|p| !p.issuer.starts_with("https://"))
            {
                errors.push(ConfigError::new(
                    "OAUTH_OIDC_PROVIDERS",
                    format!("{}: the issuer must be https:// in production", p.name),
                ));
            }
        }
    }

    /// The signing key the API must use: the configured one, or in development
    /// an ephemeral one (tokens then die with the process, which is said in a warning).
    ///
    /// # Errors
    /// `SECRET_KEY` missing or shorter than 32 bytes in production.
    pub fn signing_key(&self) -> Result<SigningKey, ConfigError> {
        let previous = match (&self.auth.secret_key_previous, self.process.environment) {
            (Some(key), Environment::Production)
                if key.expose_secret().len() < MIN_SECRET_BYTES =>
            {
                return Err(ConfigError::new(
                    "SECRET_KEY_PREVIOUS",
                    format!("must be at least {MIN_SECRET_BYTES} bytes in production"),
                ));
            }
            (previous, _) => previous.clone(),
        };
        match (&self.auth.secret_key, self.process.environment) {
            (Some(key), _) if key.expose_secret().len() >= MIN_SECRET_BYTES => Ok(SigningKey {
                key: key.clone(),
                previous,
                ephemeral: false,
            }),
            (Some(_), Environment::Production) => Err(ConfigError::new(
                "SECRET_KEY",
                format!(
                    "must be at least {MIN_SECRET_BYTES} bytes in production (`keel-api gen-secret` makes one)"
                ),
            )),
            (None, Environment::Production) => Err(ConfigError::new(
                "SECRET_KEY",
                "is required in production (`keel-api gen-secret` makes one)",
            )),
            (_, Environment::Development) => Ok(SigningKey {
                key: generate_secret().into(),
                // Nothing was signed with a key made up for this process
                // by the one it replaced.
                previous: None,
                ephemeral: true,
            }),
        }
    }
}

/// `WORKER_CONCURRENCY` when unset. An attempt holds no database connection
/// while it runs (claims and finishes are batched), so a slot is a tokio
/// task and a waiting task costs nearly nothing: the default is chosen for
/// tasks that wait on I/O, as River's 100 per queue is. `keel-bench e2e`
/// on 2 cores: 645 tasks/s end to end at the old 2 × cores (4), 2,519 at
/// 64, 3,159 at 128, 3,063 at 256 — at 128 the creates are the bound.
/// CPU-heavy work is bounded by cores on its own (the kind's policy).
pub const DEFAULT_WORKER_CONCURRENCY: usize = 128;

/// `WORKER_CONCURRENCY` when unset: [`DEFAULT_WORKER_CONCURRENCY`].
pub fn default_worker_concurrency() -> usize {
    DEFAULT_WORKER_CONCURRENCY
}

/// Info for Keel, and sqlx's notices (such as "relation already exists,
/// skipping" at every migration run) only when they are warnings.
pub const DEFAULT_LOG_FILTER: &str = "info,sqlx::postgres::notice=warn";

/// The shortest `SECRET_KEY` accepted in production: 256 bits.
pub const MIN_SECRET_BYTES: usize = 32;

/// A token signing key, and whether it was made up for this process only.
#[derive(Clone, Debug)]
pub struct SigningKey {
    pub key: SecretString,
    /// `SECRET_KEY_PREVIOUS`: verifies and opens, never signs or seals.
    pub previous: Option<SecretString>,
    pub ephemeral: bool,
}

/// A fresh random secret: 48 bytes from the OS, URL-safe base64 (64 characters).
pub fn generate_secret() -> String {
    use base64::Engine as _;
    let bytes: [u8; 48] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A configuration value that is wrong, named by its environment variable.
#[derive(Debug, thiserror::Error)]
#[error("{variable}: {message}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub message: String,
}

impl ConfigError {
    pub fn new(variable: &'static str, message: impl Into<String>) -> Self {
        Self {
            variable,
            message: message.into(),
        }
    }
}

/// Every wrong variable a check found.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// The variables named, in order.
    pub fn variables(&self) -> Vec<&'static str> {
        self.0.iter().map(|e| e.variable).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_accept_comma_and_json_lists() {
        let comma = origins("http://a.example, https://b.example:8443").unwrap();
        let json = origins(r#"["http://a.example","https://b.example:8443"]"#).unwrap();
        assert_eq!(comma, json);
        assert_eq!(comma.list, ["http://a.example", "https://b.example:8443"]);
        assert!(origins("*").unwrap().any);
        assert_eq!(origins("").unwrap(), Origins::default());
    }

    #[test]
    fn origins_refuse_paths_and_garbage() {
        assert!(
            origins("http://a.example/app").is_err(),
            "a path is not part of an origin"
        );
        assert!(origins("not a url").is_err());
        assert!(origins("[1,2]").is_err(), "JSON list must hold strings");
    }

    #[test]
    fn smtp_tls_reads_the_seeds_booleans() {
        assert_eq!(SmtpTls::parse("true").unwrap(), SmtpTls::Starttls);
        assert_eq!(SmtpTls::parse("False").unwrap(), SmtpTls::None);
        assert_eq!(SmtpTls::parse("tls").unwrap(), SmtpTls::Tls);
        assert!(SmtpTls::parse("maybe").is_err());
    }

    #[test]
    fn cidrs_take_bare_addresses_too() {
        assert_eq!(cidr("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(cidr("127.0.0.1").unwrap().to_string(), "127.0.0.1/32");
        assert!(cidr("10.0.0.0/99").is_err());
    }

    #[test]
    fn oidc_providers_read_a_json_list_with_defaults() {
        let providers = oidc_providers(
            r#"[{"name": "acme", "issuer": "https://sso.acme.example/realms/main",
                 "client_id": "keel", "client_secret": "s3cret"},
                {"name": "corp-sso", "display_name": "Corp", "issuer": "http://127.0.0.1:9000",
                 "client_id": "k", "client_secret": "t", "scopes": "openid email groups"}]"#,
        )
        .unwrap()
        .0;
        assert_eq!(providers.len(), 2);
        assert_eq!(
            providers[0].display_name, "acme",
            "the name when none is given"
        );
        assert_eq!(providers[0].issuer, "https://sso.acme.example/realms/main");
        assert_eq!(providers[0].scopes, ["email", "profile"]);
        assert_eq!(providers[0].client_secret.expose_secret(), "s3cret");
        assert_eq!(providers[1].display_name, "Corp");
        assert_eq!(
            providers[1].scopes,
            ["email", "groups"],
            "openid is always asked for, so not listed"
        );
        assert!(oidc_providers("").unwrap().0.is_empty());
    }

    #[test]
    fn oidc_providers_refuse_bad_entries_without_quoting_secrets() {
        let entry = |extra: &str| {
            format!(
                r#"[{{"name": "acme", "issuer": "https://sso.example", "client_id": "keel",
                      "client_secret": "hush-hush" {extra}}}]"#
            )
        };
        for (value, why) in [
            (r#"{"name": "acme"}"#.to_owned(), "not a list"),
            ("[1]".to_owned(), "not an object"),
            (
                entry(r#", "name": "Bad Name""#),
                "a name outside [a-z0-9_-]",
            ),
            (entry(r#", "name": "google""#), "a preset's name"),
            (entry(r#", "issuer": "ftp://sso.example""#), "not http(s)"),
            (
                entry(r#", "issuer": "https://sso.example/?x=1""#),
                "a query",
            ),
            (
                entry(r#", "client_secret": 7"#),
                "a secret that is not a string",
            ),
            (entry(r#", "tenant": "x""#), "an unknown field"),
            (
                r#"[{"name": "acme", "issuer": "https://a.example", "client_id": "k"}]"#.to_owned(),
                "no secret",
            ),
        ] {
            let error = oidc_providers(&value).expect_err(why);
            assert!(!error.contains("hush-hush"), "{why}: {error}");
        }
        let twice = r#"[{"name": "a", "issuer": "https://a.example", "client_id": "k", "client_secret": "s"},
                        {"name": "a", "issuer": "https://b.example", "client_id": "k", "client_secret": "s"}]"#;
        assert!(oidc_providers(twice).is_err(), "a name used twice");
    }

    #[test]
    fn oauth_settings_parse_as_flags_and_hide_the_secrets() {
        let config = Config::from_flags([
            "--oauth-google-client-id",
            "id.apps.googleusercontent.com",
            "--oauth-google-client-secret",
            "google-hush",
            "--oauth-oidc-providers",
            r#"[{"name": "acme", "issuer": "https://sso.example", "client_id": "keel", "client_secret": "acme-hush"}]"#,
        ])
        .unwrap();
        config.validate().unwrap();
        let debug = format!("{config:?}");
        assert!(
            !debug.contains("google-hush") && !debug.contains("acme-hush"),
            "{debug}"
        );
        assert_eq!(
            config.oauth_redirect_uri("google"),
            "http://localhost:8000/api/v1/auth/oauth/google/callback",
            "APP_BASE_URL's, when OAUTH_REDIRECT_URI is unset"
        );
        let bad = Config::from_flags([
            "--oauth-oidc-providers",
            r#"[{"client_secret": "acme-hush"}]"#,
        ])
        .expect_err("no name");
        assert!(!bad.to_string().contains("acme-hush"), "{bad}");
    }

    #[test]
    fn the_redirect_uri_needs_a_place_for_the_provider() {
        assert!(
            redirect_uri_template("https://keel.example/api/v1/auth/oauth/{provider}/callback")
                .is_ok()
        );
        assert!(redirect_uri_template("https://keel.example/api/v1/auth/oauth/callback").is_err());
        assert!(redirect_uri_template("keel.example/{provider}").is_err());
    }

    #[test]
    fn oauth_client_ids_and_secrets_come_in_pairs_and_production_wants_https() {
        let lonely = Config::from_flags(["--oauth-github-client-id", "Iv1.abc"]).unwrap();
        assert_eq!(
            lonely.validate().unwrap_err().variables(),
            ["OAUTH_GITHUB_CLIENT_SECRET"]
        );
        let production = Config::from_flags([
            "--environment",
            "production",
            "--app-base-url",
            "https://keel.example.com",
            "--oauth-github-client-id",
            "Iv1.abc",
            "--oauth-github-client-secret",
            "s",
            "--oauth-redirect-uri",
            "http://keel.example.com/api/v1/auth/oauth/{provider}/callback",
        ])
        .unwrap();
        assert_eq!(
            production.validate().unwrap_err().variables(),
            ["OAUTH_REDIRECT_URI"]
        );
    }

    #[test]
    fn production_refuses_every_insecure_setting_at_once_unless_allowed() {
        let base = [
            "--environment",
            "production",
            "--app-base-url",
            "https://keel.example.com",
        ];
        let insecure = [
            "--rate-limit-enabled",
            "false",
            "--trusted-proxies",
            "10.0.0.0/8,::/0",
            "--smtp-host",
            "smtp.example.com",
            "--smtp-tls",
            "none",
            "--emails-from-email",
            "keel@example.com",
        ];
        let config = Config::from_flags(base.iter().chain(&insecure)).unwrap();
        assert_eq!(
            config.validate().unwrap_err().variables(),
            ["RATE_LIMIT_ENABLED", "TRUSTED_PROXIES", "SMTP_TLS"],
            "all three, in one go"
        );
        assert!(config.insecure_overrides().is_empty());
        let allowed = Config::from_flags(base.iter().chain(&insecure).chain(&[
            "--allow-insecure-settings",
            "rate_limit_enabled, TRUSTED_PROXIES ,SMTP_TLS",
        ]))
        .unwrap();
        allowed.validate().unwrap();
        assert_eq!(allowed.insecure_overrides().len(), 3, "each is warned of");

        let loopback_smtp = Config::from_flags(base.iter().chain(&[
            "--smtp-host",
            "127.0.0.1",
            "--smtp-tls",
            "none",
            "--emails-from-email",
            "keel@example.com",
        ]))
        .unwrap();
        loopback_smtp
            .validate()
            .expect("plain SMTP to loopback stays on the machine");
        // Halves that cover everything together are everything.
        let halves = Config::from_flags(
            base.iter()
                .chain(&["--trusted-proxies", "0.0.0.0/1,128.0.0.0/1"]),
        )
        .unwrap();
        assert_eq!(
            halves.insecure_settings(),
            [InsecureSetting::TrustedProxies]
        );
        let v6_halves =
            Config::from_flags(base.iter().chain(&["--trusted-proxies", "::/1,8000::/1"])).unwrap();
        assert_eq!(
            v6_halves.insecure_settings(),
            [InsecureSetting::TrustedProxies]
        );
        let private = Config::from_flags(
            base.iter()
                .chain(&["--trusted-proxies", "10.0.0.0/8,172.16.0.0/12,fc00::/7"]),
        )
        .unwrap();
        assert!(private.insecure_settings().is_empty());
        let development = Config::from_flags(insecure).unwrap();
        development.validate().expect("development allows them");
        assert!(development.insecure_overrides().is_empty());
    }

    #[test]
    fn database_and_redis_urls_are_read_at_start_and_never_quoted() {
        for (flag, value) in [
            ("--database-url", "not a url"),
            ("--database-url", "mysql://root:hush-1@db/keel"),
            ("--database-url", "postgres://root:hush-1@db:99999/keel"),
            ("--redis-url", "not a url"),
            ("--redis-url", "http://:hush-1@cache:6379"),
        ] {
            let e = Config::from_flags([flag, value])
                .expect_err(value)
                .to_string();
            let variable = if flag == "--database-url" {
                "DATABASE_URL"
            } else {
                "REDIS_URL"
            };
            assert!(e.contains(variable), "{value}: {e}");
            assert!(
                !e.contains("hush-1") && !e.contains("not a url"),
                "{value}: {e}"
            );
        }
        Config::from_flags([
            "--database-url",
            "postgresql://u:p@127.0.0.1:5432/keel?sslmode=disable",
            "--redis-url",
            "redis://:p@cache.example:6380/2",
        ])
        .unwrap();
        // This build's Redis client has no TLS: said at start, not at connect.
        let tls = Config::from_flags(["--redis-url", "rediss://:hush-1@cache.example:6380"])
            .expect_err("rediss")
            .to_string();
        assert!(
            tls.contains("REDIS_URL") && tls.contains("TLS") && !tls.contains("hush-1"),
            "{tls}"
        );
    }

    #[test]
    fn generated_secrets_are_long_and_distinct() {
        let (a, b) = (generate_secret(), generate_secret());
        assert!(a.len() >= MIN_SECRET_BYTES * 2);
        assert_ne!(a, b);
    }
}
