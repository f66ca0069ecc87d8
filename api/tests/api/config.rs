//! The binary's configuration and command line, run as a user would.

use std::process::Output;

use keel_testing::{self as testing, TestDatabase};

use crate::helpers::API_BIN;

fn run(env: &[(&str, &str)], args: &[&str]) -> Output {
    testing::command(API_BIN)
        .envs(env.iter().copied())
        .args(args)
        .output()
        .expect("keel-api runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A production configuration that passes: the settings production requires.
const PRODUCTION: [(&str, &str); 3] = [
    ("ENVIRONMENT", "production"),
    ("APP_BASE_URL", "https://keel.example"),
    ("SECRET_KEY", "0123456789abcdef0123456789abcdef"),
];

/// [`PRODUCTION`] with `more` settings after it.
fn production_with<'a>(more: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    [&PRODUCTION[..], more].concat()
}

/// Starts the API with `env` and no arguments: its exit code and stderr.
fn start(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let output = run(env, &[]);
    (output.status.code(), stderr(&output))
}

/// Starts the API with `env`, which it must refuse (exit 2): its stderr.
fn refused(env: &[(&str, &str)]) -> String {
    let (code, err) = start(env);
    assert_eq!(code, Some(2), "{err}");
    err
}

/// Asserts `err` does not show `secret`; `what` says which it is.
fn assert_not_shown(err: &str, secret: &str, what: &str) {
    assert!(!err.contains(secret), "{what} is never shown: {err}");
}

#[test]
fn a_bad_value_stops_with_exit_2_and_one_line_naming_the_variable() {
    let cert = std::env::temp_dir().join("keel-test-cert.pem");
    std::fs::write(&cert, "not really a certificate").unwrap();
    let cert = cert.to_str().unwrap();
    // One case a line: (variable, value, what is wrong with it).
    #[rustfmt::skip]
    let cases: &[(&str, &str, &str)] = &[
        ("PORT", "eighty", "not a number"),
        ("PORT", "70000", "out of range"),
        ("ENVIRONMENT", "staging", "not a known environment"),
        ("ACCESS_TOKEN_EXPIRE_MINUTES", "0", "below the minimum"),
        ("DATABASE_MAX_CONNECTIONS", "-1", "negative"),
        ("RATE_LIMIT_ENABLED", "maybe", "not a boolean"),
        ("ALLOWED_ORIGINS", "https://app.example/path", "an origin has no path"),
        ("TRUSTED_PROXIES", "10.0.0.0/99", "not a CIDR"),
        ("APP_BASE_URL", "not a url", "not a URL"),
        ("DATABASE_URL", "not a url", "not a URL"),
        ("DATABASE_URL", "mysql://u:p@db/keel", "not PostgreSQL"),
        ("REDIS_URL", "not a url", "not a URL"),
        ("S3_ENDPOINT", "minio:9000", "no scheme"),
        ("SMTP_TLS", "sometimes", "not a TLS mode"),
        ("ALGORITHM", "none", "`none` is never an algorithm"),
        ("RUST_LOG", "info,keel=loud", "not a log filter"),
        ("REDIS_PREFIX", "has space", "not a key prefix"),
        ("TLS_KEY_FILE", cert, "one TLS file without the other"),
    ];
    for &(variable, value, why) in cases {
        let (code, err) = start(&[(variable, value)]);
        assert_eq!(code, Some(2), "{variable}={value} ({why}): {err}");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "one line for {variable}: {err}"
        );
        let named = if variable == "TLS_KEY_FILE" {
            "TLS_CERT_FILE"
        } else {
            variable
        };
        assert!(
            err.contains(named),
            "{variable}={value} ({why}) is named: {err}"
        );
    }
}

#[test]
fn production_refuses_a_missing_or_short_secret_key() {
    let production = [
        ("ENVIRONMENT", "production"),
        ("APP_BASE_URL", "https://keel.example"),
    ];
    let missing = refused(&production);
    assert!(missing.contains("SECRET_KEY"), "{missing}");

    let short_key = [
        production[0],
        production[1],
        ("SECRET_KEY", "0123456789abcdef0123456789abcde"),
    ];
    let short = refused(&short_key);
    assert!(
        short.contains("SECRET_KEY") && short.contains("32"),
        "{short}"
    );
}

#[test]
fn production_refuses_a_short_previous_secret_key() {
    let env = production_with(&[("SECRET_KEY_PREVIOUS", "a key of 20 bytes!!!")]);
    let err = refused(&env);
    assert!(
        err.contains("SECRET_KEY_PREVIOUS") && err.contains("32"),
        "{err}"
    );
    assert_not_shown(&err, "too short to have", "the key");
}

#[test]
fn production_accepts_a_32_byte_secret_key_and_goes_on_to_connect() {
    let database_url = testing::unreachable_database_url();
    let env = production_with(&[("DATABASE_URL", database_url.as_str())]);
    let (code, err) = start(&env);
    let past = "past configuration, the database is down";
    assert_eq!(code, Some(1), "{past}: {err}");
    assert!(err.contains("cannot reach PostgreSQL"), "{err}");
    assert_not_shown(&err, "0123456789abcdef", "the secret");
}

#[test]
fn a_malformed_database_url_names_the_variable_and_exits_2_whatever_the_command() {
    for args in [&[][..], &["migrate"], &["admin", "list-users"]] {
        let output = run(&[("DATABASE_URL", "not a url")], args);
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains("DATABASE_URL"), "{args:?}: {err}");
        assert_not_shown(&err, "not a url", "the value");
    }
}

#[test]
fn production_lists_every_refused_setting_at_once() {
    let env = [
        ("ENVIRONMENT", "production"),
        ("APP_BASE_URL", "http://keel.example"),
        ("ALLOWED_ORIGINS", "*"),
        ("RATE_LIMIT_ENABLED", "false"),
        ("TRUSTED_PROXIES", "0.0.0.0/0"),
        ("SMTP_HOST", "smtp.example.com"),
        ("SMTP_TLS", "none"),
        ("EMAILS_FROM_EMAIL", "keel@example.com"),
    ];
    let err = refused(&env);
    for variable in [
        "APP_BASE_URL",
        "ALLOWED_ORIGINS",
        "RATE_LIMIT_ENABLED",
        "TRUSTED_PROXIES",
        "SMTP_TLS",
        "SECRET_KEY",
    ] {
        assert_eq!(
            err.lines()
                .filter(|l| l.contains(&format!("error: {variable}:")))
                .count(),
            1,
            "{variable} on a line of its own: {err}"
        );
    }

    // Named in ALLOW_INSECURE_SETTINGS, the three are kept, with a warning
    // at the start; the process goes on (to a database that is not there).
    let database_url = testing::unreachable_database_url();
    let allowed = production_with(&[
        ("DATABASE_URL", database_url.as_str()),
        ("RATE_LIMIT_ENABLED", "false"),
        ("TRUSTED_PROXIES", "::/0"),
        ("SMTP_HOST", "smtp.example.com"),
        ("SMTP_TLS", "none"),
        ("EMAILS_FROM_EMAIL", "keel@example.com"),
        (
            "ALLOW_INSECURE_SETTINGS",
            "RATE_LIMIT_ENABLED,TRUSTED_PROXIES,SMTP_TLS",
        ),
    ]);
    let output = run(&allowed, &[]);
    let (out, err) = (String::from_utf8_lossy(&output.stdout), stderr(&output));
    assert_eq!(output.status.code(), Some(1), "past configuration: {err}");
    for variable in ["RATE_LIMIT_ENABLED", "TRUSTED_PROXIES", "SMTP_TLS"] {
        assert!(
            out.lines()
                .chain(err.lines())
                .any(|l| l.contains("ALLOW_INSECURE_SETTINGS") && l.contains(variable)),
            "a warning for {variable}: {out}{err}"
        );
    }
}

#[test]
fn production_refuses_cors_for_any_origin() {
    let env = production_with(&[("ALLOWED_ORIGINS", "*")]);
    let (code, err) = start(&env);
    assert_eq!(code, Some(2));
    assert!(err.contains("ALLOWED_ORIGINS"), "{err}");
}

#[tokio::test]
async fn an_unreachable_redis_stops_the_api_with_exit_1() {
    let db = TestDatabase::create().await.unwrap();
    let redis_url = testing::unreachable_redis_url();
    let (code, err) = start(&[("DATABASE_URL", &db.url), ("REDIS_URL", &redis_url)]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot reach Redis"), "{err}");
}

#[test]
fn help_documents_every_variable() {
    let output = run(&[], &["--help"]);
    assert_eq!(output.status.code(), Some(0));
    let help = String::from_utf8_lossy(&output.stdout);
    let variables = [
        "DATABASE_URL",
        "REDIS_URL",
        "SECRET_KEY",
        "ENVIRONMENT",
        "HOST",
        "PORT",
        "TLS_CERT_FILE",
        "TLS_KEY_FILE",
        "TRUSTED_PROXIES",
        "ALGORITHM",
        "ACCESS_TOKEN_EXPIRE_MINUTES",
        "REFRESH_TOKEN_EXPIRE_DAYS",
        "TWO_FA_CODE_EXPIRE_MINUTES",
        "RATE_LIMIT_ENABLED",
        "RATE_LIMIT_PER_MINUTE",
        "ALLOWED_ORIGINS",
        "SMTP_HOST",
        "SMTP_PORT",
        "SMTP_USER",
        "SMTP_PASSWORD",
        "SMTP_TLS",
        "EMAILS_FROM_EMAIL",
        "APP_BASE_URL",
        "LOG_FORMAT",
        "RUST_LOG",
        "WORKER_QUEUES",
        "WORKER_CONCURRENCY",
        "SHUTDOWN_GRACE_SECONDS",
        "METRICS_PORT",
    ];
    for variable in variables {
        assert!(
            help.contains(&format!("[env: {variable}")),
            "--help documents {variable}"
        );
    }
    for command in ["serve", "migrate", "gen-secret"] {
        assert!(help.contains(command), "--help lists {command}");
    }
}

#[test]
fn version_prints_the_crate_version() {
    let output = run(&[], &["--version"]);
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("keel-api {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn gen_secret_prints_a_fresh_key_and_writes_env_on_request() {
    let first = run(&[], &["gen-secret"]);
    let second = run(&[], &["gen-secret"]);
    let key = String::from_utf8_lossy(&first.stdout).trim().to_owned();
    assert_eq!(first.status.code(), Some(0));
    assert!(
        key.len() >= 43
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "{key}"
    );
    assert_ne!(
        key,
        String::from_utf8_lossy(&second.stdout).trim(),
        "fresh each time"
    );

    let dir = std::env::temp_dir().join(format!("keel-gen-secret-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(".env"), "PORT=9000\n").unwrap();
    let write = |extra: &[&str]| {
        testing::command(API_BIN)
            .current_dir(&dir)
            .args(["gen-secret", "--write-env"])
            .args(extra)
            .output()
            .unwrap()
    };
    assert_eq!(write(&[]).status.code(), Some(0));
    let env = std::fs::read_to_string(dir.join(".env")).unwrap();
    assert!(env.starts_with("PORT=9000\nSECRET_KEY="), "{env}");

    let again = write(&[]);
    assert_eq!(
        again.status.code(),
        Some(1),
        "an existing key is not replaced silently"
    );
    assert!(stderr(&again).contains("--force"));
    assert_eq!(write(&["--force"]).status.code(), Some(0));
    let replaced = std::fs::read_to_string(dir.join(".env")).unwrap();
    assert_ne!(replaced, env);
    assert_eq!(replaced.matches("SECRET_KEY=").count(), 1);

    // The written key is what the API then reads from .env.
    let production = testing::command(API_BIN)
        .current_dir(&dir)
        .envs([
            ("ENVIRONMENT", "production"),
            ("APP_BASE_URL", "https://keel.example"),
        ])
        .env("DATABASE_URL", testing::unreachable_database_url())
        .output()
        .unwrap();
    assert_eq!(
        production.status.code(),
        Some(1),
        "the key from .env passes: {}",
        stderr(&production)
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn migrate_creates_the_database_and_applies_every_migration() {
    let name = format!(
        "{}{}",
        testing::DATABASE_PREFIX,
        uuid::Uuid::new_v4().simple()
    );
    let url = testing::database_url(&name).unwrap();
    let output = run(&[("DATABASE_URL", &url)], &["migrate"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));

    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    assert!(keel_shared::db::migrations_current(&pool).await.unwrap());
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(users, 0, "the users table exists");

    let again = run(&[("DATABASE_URL", &url)], &["migrate"]);
    assert_eq!(
        again.status.code(),
        Some(0),
        "migrating twice is harmless: {}",
        stderr(&again)
    );
}
