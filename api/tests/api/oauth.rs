//! OAuth 2.0 / OpenID Connect sign-in, end to end against a real OpenID
//! provider (npm `oidc-provider`, `api/tests/oidc/provider.mjs`) on
//! loopback, through the whole authorization-code + PKCE flow; and the
//! Google and GitHub presets by the URLs they send browsers to.
//!
//! The test plays the browser. Keel's redirect URI names the host
//! `keel.invalid`, which nothing resolves: the provider's last redirect is
//! taken there and its query brought to the test app, as a browser would
//! bring it to a deployed Keel. So the provider can be started, with that
//! redirect URI registered, before the app whose port it cannot know.

use std::{path::PathBuf, time::Duration};

use keel_shared::db::oauth;
use keel_testing::{self as testing, ChildGuard};
use reqwest::{StatusCode, Url, header};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::{
    helpers::{TestApp, assert_problem, spawn_app_with},
    refusals::{INVALID_CREDENTIALS, INVALID_REFRESH_TOKEN, NOT_FOUND, Refusal, assert_refused},
};

const CLIENT_ID: &str = "keel-test-client";
const CLIENT_SECRET: &str = "oidc-test-client-secret-4f9a1c";
/// Where providers send the browser back, as Keel is configured to say.
const REDIRECT_BASE: &str = "http://keel.invalid";
const REDIRECT_TEMPLATE: &str = "http://keel.invalid/api/v1/auth/oauth/{provider}/callback";

/// The OpenID provider of one test, killed when dropped.
struct TestProvider {
    issuer: String,
    _process: ChildGuard,
}

impl TestProvider {
    /// A provider whose one client has Keel's redirect URI for `acme`.
    async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// # Panics
    /// When node or the provider's npm packages are missing.
    async fn start_with(env: &[(&str, &str)]) -> Self {
        testing::record_secret(CLIENT_SECRET);
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/oidc");
        let mut command = std::process::Command::new("node");
        command
            .arg("provider.mjs")
            .current_dir(&dir)
            .env("PORT", "0")
            .env("CLIENT_ID", CLIENT_ID)
            .env("CLIENT_SECRET", CLIENT_SECRET)
            .env(
                "REDIRECT_URI",
                REDIRECT_TEMPLATE.replace("{provider}", "acme"),
            );
        for (name, value) in env {
            command.env(name, value);
        }
        let mut process = ChildGuard::spawn(command);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(port) = process
                .stdout()
                .lines()
                .find_map(|line| line.strip_prefix("ready "))
            {
                let issuer = format!("http://127.0.0.1:{}", port.trim());
                return Self {
                    issuer,
                    _process: process,
                };
            }
            if let Ok(Some(status)) = process.child.try_wait() {
                panic!(
                    "the OpenID provider exited with {status}: {} \
                     (the test command runs `npm ci` in api/tests/oidc)",
                    process.stderr()
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the OpenID provider did not start: {}",
                process.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `OAUTH_OIDC_PROVIDERS` naming `issuer` as `acme`.
fn acme(issuer: &str) -> String {
    json!([{
        "name": "acme", "display_name": "Acme SSO", "issuer": issuer,
        "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
    }])
    .to_string()
}

/// An app offering `provider` as `acme`.
async fn app_with(provider: &TestProvider) -> TestApp {
    app_for_issuer(&provider.issuer).await
}

/// The provider cannot be reached: its routes answer 503.
const PROVIDER_DOWN: Refusal = (
    StatusCode::SERVICE_UNAVAILABLE,
    "oauth_provider_unavailable",
);

/// A provider, and an app offering it as `acme`; the provider lives as
/// long as the first of the pair.
async fn provider_and_app() -> (TestProvider, TestApp) {
    let provider = TestProvider::start().await;
    let app = app_with(&provider).await;
    (provider, app)
}

async fn app_for_issuer(issuer: &str) -> TestApp {
    spawn_app_with(&[
        "--oauth-oidc-providers",
        &acme(issuer),
        "--oauth-redirect-uri",
        REDIRECT_TEMPLATE,
    ])
    .await
}

/// A browser: it keeps cookies, and follows no redirect by itself.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn query(url: &Url) -> std::collections::HashMap<String, String> {
    url.query_pairs().into_owned().collect()
}

/// `authorize`'s redirect: to the provider, with the binding cookie set.
async fn start_sign_in(app: &TestApp, browser: &reqwest::Client, provider: &str) -> Url {
    let response = browser
        .get(app.url(&format!("/api/v1/auth/oauth/{provider}/authorize")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FOUND, "authorize redirects");
    let location = response.headers()[header::LOCATION].to_str().unwrap();
    let url = Url::parse(location).unwrap();
    if let Some(state) = query(&url).get("state") {
        testing::record_secret(state);
    }
    url
}

/// Signs in at the provider as `email` and returns where it sends the
/// browser back (on Keel's configured host): the callback URL with `code`
/// and `state`.
async fn through_provider(browser: &reqwest::Client, authorize: Url, email: &str) -> Url {
    let mut url = authorize;
    url.query_pairs_mut().append_pair("login_hint", email);
    for _ in 0..10 {
        let response = browser.get(url.clone()).send().await.unwrap();
        if !response.status().is_redirection() {
            let status = response.status();
            panic!(
                "the provider answered {status} at {url}: {}",
                response.text().await.unwrap_or_default()
            );
        }
        let location = response.headers()[header::LOCATION].to_str().unwrap();
        url = url.join(location).unwrap();
        if url.as_str().starts_with(REDIRECT_BASE) {
            if let Some(code) = query(&url).get("code") {
                testing::record_secret(code);
            }
            return url;
        }
    }
    panic!("the provider never sent the browser back");
}

/// The callback URL the provider named, on the test app's real address.
fn on_app(app: &TestApp, callback: &Url) -> String {
    app.url(&callback.as_str()[REDIRECT_BASE.len()..])
}

/// The browser brings the provider's answer to Keel.
async fn finish(app: &TestApp, browser: &reqwest::Client, callback: &Url) -> reqwest::Response {
    browser.get(on_app(app, callback)).send().await.unwrap()
}

/// A whole sign-in as `email`; the answer of the callback.
async fn sign_in(app: &TestApp, email: &str) -> reqwest::Response {
    let browser = browser();
    let authorize = start_sign_in(app, &browser, "acme").await;
    let callback = through_provider(&browser, authorize, email).await;
    finish(app, &browser, &callback).await
}

/// A whole sign-in that must succeed; its tokens.
async fn signed_in(app: &TestApp, email: &str) -> Value {
    let response = sign_in(app, email).await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "signed in as {email}: {body}");
    for token in ["access_token", "refresh_token"] {
        testing::record_secret(body[token].as_str().unwrap_or_default());
    }
    body
}

async fn me(app: &TestApp, tokens: &Value) -> Value {
    let response = app.me(tokens["access_token"].as_str().unwrap()).await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

async fn user_count(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(app.pool())
        .await
        .unwrap()
}

async fn identity_count(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM oauth_identities")
        .fetch_one(app.pool())
        .await
        .unwrap()
}

/// Registers an account with a password, through the API (its address unverified).
async fn register(app: &TestApp, username: &str, email: &str) -> String {
    let password = format!("a long passphrase for {username}");
    testing::record_secret(&password);
    let response = app
        .register(&json!({"username": username, "email": email, "password": password}))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    password
}

#[tokio::test]
async fn providers_lists_the_configured_ones_and_no_secret() {
    let app = spawn_app_with(&[
        "--oauth-google-client-id",
        "google-client.apps.googleusercontent.com",
        "--oauth-google-client-secret",
        "google-secret-7c1d",
        "--oauth-github-client-id",
        "github-client-id",
        "--oauth-github-client-secret",
        "github-secret-9e2b",
        "--oauth-oidc-providers",
        &acme("https://sso.acme.example"),
    ])
    .await;
    let response = app.get("/api/v1/auth/oauth/providers").await;
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    for secret in ["google-secret-7c1d", "github-secret-9e2b", CLIENT_SECRET] {
        assert!(!text.contains(secret), "a client secret in {text}");
    }
    let list: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        list,
        json!([
            {"name": "google", "display_name": "Google", "kind": "oidc",
                "authorize_url": "/api/v1/auth/oauth/google/authorize"},
            {"name": "github", "display_name": "GitHub", "kind": "oauth2",
                "authorize_url": "/api/v1/auth/oauth/github/authorize"},
            {"name": "acme", "display_name": "Acme SSO", "kind": "oidc",
                "authorize_url": "/api/v1/auth/oauth/acme/authorize"},
        ])
    );

    let none = crate::helpers::spawn_app().await;
    let list: Value = none
        .get("/api/v1/auth/oauth/providers")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list, json!([]), "nothing configured, nothing offered");
}

#[tokio::test]
async fn authorize_redirects_with_state_pkce_and_nonce_and_sets_the_binding_cookie() {
    let (provider, app) = provider_and_app().await;
    let response = browser()
        .get(app.url("/api/v1/auth/oauth/acme/authorize"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FOUND);
    let cookie = response.headers()[header::SET_COOKIE].to_str().unwrap();
    for attribute in [
        "keel_oauth_binding=",
        "HttpOnly",
        "SameSite=Lax",
        "Path=/api/v1/auth/oauth",
    ] {
        assert!(cookie.contains(attribute), "{attribute} in {cookie}");
    }
    let url = Url::parse(response.headers()[header::LOCATION].to_str().unwrap()).unwrap();
    assert_eq!(
        url.as_str().split('?').next().unwrap(),
        format!("{}/auth", provider.issuer),
        "the provider's discovered authorization endpoint"
    );
    let params = query(&url);
    assert_eq!(params["response_type"], "code");
    assert_eq!(params["client_id"], CLIENT_ID);
    assert_eq!(
        params["redirect_uri"],
        "http://keel.invalid/api/v1/auth/oauth/acme/callback"
    );
    assert_eq!(params["code_challenge_method"], "S256");
    // base64url of a SHA-256: 43 characters.
    assert_eq!(params["code_challenge"].len(), 43, "{params:?}");
    assert!(params["state"].len() >= 16 && params["nonce"].len() >= 16);
    let scopes: Vec<&str> = params["scope"].split(' ').collect();
    for scope in ["openid", "email", "profile"] {
        assert!(scopes.contains(&scope), "{scope} in {scopes:?}");
    }

    // Kept in Redis under the state's hash, for ten minutes at most.
    let ttl: i64 = redis::cmd("TTL")
        .arg(state_key(&app, &params["state"]))
        .query_async(&mut app.redis().conn())
        .await
        .unwrap();
    assert!((1..=600).contains(&ttl), "TTL {ttl}");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn a_first_sign_in_creates_a_passwordless_account_whose_tokens_work() {
    let (_provider, app) = provider_and_app().await;
    let tokens = signed_in(&app, "ada.lovelace@example.com").await;
    assert_eq!(tokens["token_type"], "bearer");

    let user = me(&app, &tokens).await;
    assert_eq!(user["email"], "ada.lovelace@example.com");
    assert_eq!(user["email_verified"], true, "the provider verified it");
    assert_eq!(user["username"], "ada.lovelace", "from preferred_username");
    assert_eq!(user["role"], "user");
    let id: uuid::Uuid = user["id"].as_str().unwrap().parse().unwrap();
    let identities = oauth::list_for_user(app.pool(), id).await.unwrap();
    assert_eq!(identities.len(), 1);
    assert_eq!(identities[0].provider, "acme");

    // No password was ever set: a password sign-in fails as any wrong one does.
    for account in ["ada.lovelace", "ada.lovelace@example.com"] {
        let login = app.login(account, "any password at all").await;
        assert_refused(login, INVALID_CREDENTIALS).await;
    }
    // The refresh token is a normal one.
    let refreshed = app.refresh(tokens["refresh_token"].as_str().unwrap()).await;
    assert_eq!(refreshed.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_second_sign_in_finds_the_same_account() {
    let (_provider, app) = provider_and_app().await;
    let first = me(&app, &signed_in(&app, "returning@example.com").await).await;
    let second = me(&app, &signed_in(&app, "returning@example.com").await).await;
    assert_eq!(first["id"], second["id"]);
    assert_eq!((user_count(&app).await, identity_count(&app).await), (1, 1));
}

#[tokio::test]
async fn a_taken_username_gets_a_suffix() {
    let (_provider, app) = provider_and_app().await;
    register(&app, "grace", "someone.else@example.com").await;
    let user = me(&app, &signed_in(&app, "grace@example.com").await).await;
    let username = user["username"].as_str().unwrap();
    assert!(
        username.starts_with("grace_") && username.len() > "grace_".len(),
        "{username}"
    );
}

#[tokio::test]
async fn a_verified_address_links_to_the_existing_account() {
    let (_provider, app) = provider_and_app().await;
    let existing = app.create_user(keel_shared::domain::Role::User).await;
    let user = me(&app, &signed_in(&app, &existing.user.email).await).await;
    assert_eq!(user["id"], existing.user.id.to_string(), "the same account");
    assert_eq!(user_count(&app).await, 1, "no second account");
    let identities = oauth::list_for_user(app.pool(), existing.user.id)
        .await
        .unwrap();
    assert_eq!(identities.len(), 1, "linked");
    // A verified account keeps its password.
    let login = app.login(&existing.user.username, &existing.password).await;
    assert_eq!(login.status(), StatusCode::OK);
}

#[tokio::test]
async fn linking_an_account_whose_address_was_never_verified_ends_everything_its_holder_set() {
    let (_provider, app) = provider_and_app().await;
    // Someone registered the address without ever proving it is theirs.
    let password = register(&app, "squatter", "owner@example.com").await;
    let squatter: Value = app.login("squatter", &password).await.json().await.unwrap();
    testing::record_secret(squatter["refresh_token"].as_str().unwrap_or_default());
    let squatter_id: uuid::Uuid = me(&app, &squatter).await["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    // An API key and second factors the squatter set (as the API allowed
    // before keys and factors needed a proven address), put in directly.
    let (key, prefix, hash) = keel_api::auth::tokens::new_api_key();
    testing::record_secret(&key);
    keel_shared::db::api_keys::insert(app.pool(), squatter_id, "kept", &prefix, &hash, None)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO totp_secrets (user_id, secret_sealed, confirmed_at) VALUES ($1, '\\x00', now())",
    )
    .bind(squatter_id)
    .execute(app.pool())
    .await
    .unwrap();
    sqlx::query("INSERT INTO totp_recovery_codes (user_id, code_hash) VALUES ($1, '\\x01')")
        .bind(squatter_id)
        .execute(app.pool())
        .await
        .unwrap();
    sqlx::query("UPDATE users SET totp_enabled = true, two_fa_enabled = true WHERE id = $1")
        .bind(squatter_id)
        .execute(app.pool())
        .await
        .unwrap();
    let by_key = |key: String| {
        app.client
            .get(app.url("/api/v1/users/me"))
            .header("x-api-key", key)
            .send()
    };
    assert_eq!(by_key(key.clone()).await.unwrap().status(), StatusCode::OK);

    // The owner is signed straight in: no second step of the squatter's.
    let owner = me(&app, &signed_in(&app, "owner@example.com").await).await;
    assert_eq!(owner["two_fa_enabled"], false);
    assert_eq!(owner["totp_enabled"], false);
    assert_eq!(
        by_key(key).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    let left: (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM api_keys WHERE user_id = $1), \
                (SELECT count(*) FROM totp_secrets WHERE user_id = $1), \
                (SELECT count(*) FROM totp_recovery_codes WHERE user_id = $1)",
    )
    .bind(squatter_id)
    .fetch_one(app.pool())
    .await
    .unwrap();
    assert_eq!(
        left,
        (0, 0, 0),
        "no key, TOTP secret or recovery code is left"
    );
    let notice: Value = sqlx::query_scalar(
        "SELECT data FROM email_deliveries WHERE template = 'account_claimed' AND to_address = 'owner@example.com'",
    )
    .fetch_one(app.pool())
    .await
    .unwrap();
    assert_eq!(notice["api_keys_deleted"], 1, "{notice}");
    assert_eq!(notice["second_factors_removed"], true, "{notice}");
    assert_eq!(
        owner["username"], "squatter",
        "the account with the address"
    );
    assert_eq!(owner["email_verified"], true);
    let login = app.login("squatter", &password).await;
    assert_refused(login, INVALID_CREDENTIALS).await;
    let refresh = app
        .refresh(squatter["refresh_token"].as_str().unwrap())
        .await;
    assert_refused(refresh, INVALID_REFRESH_TOKEN).await;
    let old_access = app.me(squatter["access_token"].as_str().unwrap()).await;
    assert_eq!(old_access.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn an_unverified_address_never_takes_over_an_existing_account() {
    let (_provider, app) = provider_and_app().await;
    let password = register(&app, "holder", "unverified.holder@example.com").await;
    let before: (Option<String>, bool, i32) = sqlx::query_as(
        "SELECT password_hash, email_verified, token_version FROM users WHERE username = 'holder'",
    )
    .fetch_one(app.pool())
    .await
    .unwrap();

    let response = sign_in(&app, "unverified.holder@example.com").await;
    let problem = assert_problem(response, StatusCode::CONFLICT, "oauth_email_unverified").await;
    assert!(problem.detail.contains("Acme SSO"), "{problem:?}");

    let after: (Option<String>, bool, i32) = sqlx::query_as(
        "SELECT password_hash, email_verified, token_version FROM users WHERE username = 'holder'",
    )
    .fetch_one(app.pool())
    .await
    .unwrap();
    assert_eq!(before, after, "the account is untouched");
    assert_eq!(identity_count(&app).await, 0, "nothing linked");
    let login = app.login("holder", &password).await;
    assert_eq!(login.status(), StatusCode::OK, "its owner still signs in");
}

#[tokio::test]
async fn an_unverified_address_without_an_account_creates_nothing_and_answers_alike() {
    let (_provider, app) = provider_and_app().await;
    let response = sign_in(&app, "unverified.newcomer@example.com").await;
    assert_problem(response, StatusCode::CONFLICT, "oauth_email_unverified").await;
    assert_eq!((user_count(&app).await, identity_count(&app).await), (0, 0));
}

#[tokio::test]
async fn a_bad_or_missing_state_is_refused() {
    let (_provider, app) = provider_and_app().await;
    let browser = browser();
    let authorize = start_sign_in(&app, &browser, "acme").await;
    let callback = through_provider(&browser, authorize, "someone@example.com").await;
    let code = query(&callback)["code"].clone();

    for (query, why) in [
        (
            format!("code={code}&state=forged-state"),
            "an unknown state",
        ),
        (format!("code={code}"), "no state"),
    ] {
        let response = browser
            .get(app.url(&format!("/api/v1/auth/oauth/acme/callback?{query}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{why}");
        assert_problem(response, StatusCode::BAD_REQUEST, "invalid_oauth_state").await;
    }
    assert_eq!(user_count(&app).await, 0);
}

#[tokio::test]
async fn a_state_works_once() {
    let (_provider, app) = provider_and_app().await;
    let browser = browser();
    let authorize = start_sign_in(&app, &browser, "acme").await;
    let callback = through_provider(&browser, authorize, "once@example.com").await;
    let first = finish(&app, &browser, &callback).await;
    assert_eq!(first.status(), StatusCode::OK);
    testing::record_secret(
        first.json::<Value>().await.unwrap()["refresh_token"]
            .as_str()
            .unwrap_or_default(),
    );
    // The callback removed the binding cookie; bring one back, as a replaying attacker would.
    let again = reqwest::Client::new()
        .get(on_app(&app, &callback))
        .header(header::COOKIE, "keel_oauth_binding=replayed")
        .send()
        .await
        .unwrap();
    assert_problem(again, StatusCode::BAD_REQUEST, "invalid_oauth_state").await;
}

/// The Redis key of a started sign-in.
fn state_key(app: &TestApp, state: &str) -> String {
    app.redis().key(&format!(
        "oauth-state:{}",
        hex(&Sha256::digest(state.as_bytes()))
    ))
}

#[tokio::test]
async fn a_replayed_code_is_refused_and_signs_nothing_in() {
    let (provider, app) = provider_and_app().await;
    let browser = browser();
    let response = browser
        .get(app.url("/api/v1/auth/oauth/acme/authorize"))
        .send()
        .await
        .unwrap();
    let binding = response.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    testing::record_secret(binding.trim_start_matches("keel_oauth_binding="));
    let authorize = Url::parse(response.headers()[header::LOCATION].to_str().unwrap()).unwrap();
    let state = query(&authorize)["state"].clone();
    testing::record_secret(&state);
    let used = through_provider(&browser, authorize, "replay@example.com").await;
    let pending: String = redis::cmd("GET")
        .arg(state_key(&app, &state))
        .query_async(&mut app.redis().conn())
        .await
        .unwrap();
    assert_eq!(finish(&app, &browser, &used).await.status(), StatusCode::OK);

    // Keel takes a state once; put it back, as if that check were gone, so
    // that only the provider stands between the spent code and a second
    // sign-in: the same code, state, cookie and PKCE verifier.
    let _: () = redis::cmd("SET")
        .arg(state_key(&app, &state))
        .arg(&pending)
        .arg("EX")
        .arg(600)
        .query_async(&mut app.redis().conn())
        .await
        .unwrap();
    let replay = reqwest::Client::new()
        .get(on_app(&app, &used))
        .header(header::COOKIE, &binding)
        .send()
        .await
        .unwrap();
    let headers = replay.headers().clone();
    let problem = assert_problem(replay, StatusCode::BAD_REQUEST, "oauth_code_rejected").await;
    assert!(problem.detail.contains("Acme SSO"), "{problem:?}");
    assert!(
        headers
            .get_all(header::SET_COOKIE)
            .iter()
            .any(|c| c.to_str().unwrap().starts_with("keel_oauth_binding=;")),
        "the binding cookie is removed: {headers:?}"
    );

    // The spent code in a fresh sign-in of its own (new state, cookie and verifier).
    let authorize = start_sign_in(&app, &browser, "acme").await;
    let mut transplanted =
        Url::parse(&format!("{REDIRECT_BASE}/api/v1/auth/oauth/acme/callback")).unwrap();
    transplanted
        .query_pairs_mut()
        .append_pair("code", &query(&used)["code"])
        .append_pair("state", &query(&authorize)["state"])
        .append_pair("iss", &provider.issuer);
    let response = finish(&app, &browser, &transplanted).await;
    assert_problem(response, StatusCode::BAD_REQUEST, "oauth_code_rejected").await;
    assert_eq!(
        user_count(&app).await,
        1,
        "only the first sign-in's account"
    );
}

#[tokio::test]
async fn a_callback_without_this_browsers_cookie_is_refused() {
    let (_provider, app) = provider_and_app().await;

    // Another browser (an attacker's link, login CSRF): no cookie.
    let browser = browser();
    let authorize = start_sign_in(&app, &browser, "acme").await;
    let callback = through_provider(&browser, authorize, "victim@example.com").await;
    let elsewhere = reqwest::Client::new()
        .get(on_app(&app, &callback))
        .send()
        .await
        .unwrap();
    assert_problem(elsewhere, StatusCode::BAD_REQUEST, "invalid_oauth_state").await;
    // The try spent the state: not even the right browser can use it now.
    let late = finish(&app, &browser, &callback).await;
    assert_problem(late, StatusCode::BAD_REQUEST, "invalid_oauth_state").await;

    // A cookie, but another one.
    let browser = self::browser();
    let authorize = start_sign_in(&app, &browser, "acme").await;
    let callback = through_provider(&browser, authorize, "victim@example.com").await;
    let forged = reqwest::Client::new()
        .get(on_app(&app, &callback))
        .header(header::COOKIE, "keel_oauth_binding=not-the-one-set")
        .send()
        .await
        .unwrap();
    assert_problem(forged, StatusCode::BAD_REQUEST, "invalid_oauth_state").await;
    assert_eq!(user_count(&app).await, 0, "nobody signed in");
}

#[tokio::test]
async fn a_provider_error_is_refused() {
    let (_provider, app) = provider_and_app().await;
    let browser = browser();
    let authorize = start_sign_in(&app, &browser, "acme").await;
    let state = query(&authorize)["state"].clone();
    let response = browser
        .get(app.url(&format!(
            "/api/v1/auth/oauth/acme/callback?error=access_denied&error_description=no&state={state}"
        )))
        .send()
        .await
        .unwrap();
    let problem = assert_problem(response, StatusCode::BAD_REQUEST, "oauth_denied").await;
    assert!(problem.detail.contains("access_denied"), "{problem:?}");
}

#[tokio::test]
async fn an_answer_naming_another_issuer_is_refused() {
    let (_provider, app) = provider_and_app().await;
    let browser = browser();
    let authorize = start_sign_in(&app, &browser, "acme").await;
    let mut callback = through_provider(&browser, authorize, "mixup@example.com").await;
    let params: Vec<(String, String)> = callback
        .query_pairs()
        .into_owned()
        .filter(|(k, _)| k != "iss")
        .collect();
    callback
        .query_pairs_mut()
        .clear()
        .extend_pairs(params)
        .append_pair("iss", "https://evil.example");
    let response = finish(&app, &browser, &callback).await;
    assert_problem(response, StatusCode::BAD_REQUEST, "oauth_issuer_mismatch").await;
}

#[tokio::test]
async fn a_disabled_account_gets_the_same_401_as_login() {
    let (_provider, app) = provider_and_app().await;
    let user = me(&app, &signed_in(&app, "disabled@example.com").await).await;
    sqlx::query("UPDATE users SET is_active = false WHERE id = $1")
        .bind(uuid::Uuid::parse_str(user["id"].as_str().unwrap()).unwrap())
        .execute(app.pool())
        .await
        .unwrap();
    let response = sign_in(&app, "disabled@example.com").await;
    assert_refused(response, INVALID_CREDENTIALS).await;
}

#[tokio::test]
async fn an_account_with_2fa_on_is_asked_for_its_second_factor() {
    let (_provider, app) = provider_and_app().await;
    let existing = app.create_user(keel_shared::domain::Role::User).await;
    sqlx::query("UPDATE users SET two_fa_enabled = true WHERE id = $1")
        .bind(existing.user.id)
        .execute(app.pool())
        .await
        .unwrap();
    let response = sign_in(&app, &existing.user.email).await;
    assert_eq!(response.status(), StatusCode::OK);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["two_factor_required"], true, "{answer}");
    assert!(answer.get("access_token").is_none(), "{answer}");
}

#[tokio::test]
async fn email_claims_in_the_id_token_sign_in_too() {
    // By default the provider gives the address from userinfo only; here in the ID token.
    let provider = TestProvider::start_with(&[("CLAIMS_IN_ID_TOKEN", "1")]).await;
    let app = app_with(&provider).await;
    let user = me(&app, &signed_in(&app, "in.token@example.com").await).await;
    assert_eq!(user["email"], "in.token@example.com");
}

#[tokio::test]
async fn a_provider_that_is_down_answers_503_for_its_own_routes_only() {
    let down = format!("http://127.0.0.1:{}", testing::free_port());
    let app = app_for_issuer(&down).await;
    let response = app.get("/api/v1/auth/oauth/acme/authorize").await;
    let problem = assert_refused(response, PROVIDER_DOWN).await;
    assert!(problem.detail.contains("Acme SSO"), "{problem:?}");
    let list = app.get("/api/v1/auth/oauth/providers").await;
    assert_eq!(list.status(), StatusCode::OK, "the list needs no provider");
}

#[tokio::test]
async fn a_provider_going_down_mid_sign_in_answers_503() {
    let (provider, app) = provider_and_app().await;
    let browser = browser();
    let authorize = start_sign_in(&app, &browser, "acme").await;
    let callback = through_provider(&browser, authorize, "late@example.com").await;
    drop(provider);
    let response = finish(&app, &browser, &callback).await;
    assert_refused(response, PROVIDER_DOWN).await;
    assert_eq!(user_count(&app).await, 0);
}

#[tokio::test]
async fn an_unknown_provider_is_404() {
    let app = crate::helpers::spawn_app().await;
    for path in [
        "/api/v1/auth/oauth/nope/authorize",
        "/api/v1/auth/oauth/nope/callback?code=x&state=y",
    ] {
        assert_refused(app.get(path).await, NOT_FOUND).await;
    }
}

/// Where a preset's authorize redirect must send the browser.
struct Expected {
    host: &'static str,
    path: &'static str,
    scope: &'static str,
    client_id: &'static str,
    redirect_uri: &'static str,
}

/// Asserts `url` goes to the provider `expected` names, over https, as its
/// client, back to the callback, with PKCE by S256; returns its query.
fn assert_authorize_url(
    url: &Url,
    expected: &Expected,
) -> std::collections::HashMap<String, String> {
    let what = expected.host;
    assert_eq!(url.scheme(), "https", "{what}");
    assert_eq!(url.host_str(), Some(expected.host), "{what}");
    assert_eq!(url.path(), expected.path, "{what}");
    let params = query(url);
    assert_eq!(params["scope"], expected.scope, "{what}");
    assert_eq!(params["client_id"], expected.client_id, "{what}");
    assert_eq!(params["redirect_uri"], expected.redirect_uri, "{what}");
    assert_eq!(params["code_challenge_method"], "S256", "{what}");
    params
}

/// The authorize redirect of a preset, which needs no network.
async fn preset_redirect(flags: &[&str], provider: &str) -> Url {
    let app = spawn_app_with(flags).await;
    let response = browser()
        .get(app.url(&format!("/api/v1/auth/oauth/{provider}/authorize")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FOUND, "{provider}");
    Url::parse(response.headers()[header::LOCATION].to_str().unwrap()).unwrap()
}

#[tokio::test]
async fn the_google_preset_sends_browsers_to_google_with_openid_email_profile() {
    let url = preset_redirect(
        &[
            "--oauth-google-client-id",
            "1234-abc.apps.googleusercontent.com",
            "--oauth-google-client-secret",
            "google-secret-test",
        ],
        "google",
    )
    .await;
    let expected = Expected {
        host: "accounts.google.com",
        path: "/o/oauth2/v2/auth",
        scope: "openid email profile",
        client_id: "1234-abc.apps.googleusercontent.com",
        // Unset OAUTH_REDIRECT_URI: APP_BASE_URL's (the default http://localhost:8000).
        redirect_uri: "http://localhost:8000/api/v1/auth/oauth/google/callback",
    };
    let params = assert_authorize_url(&url, &expected);
    assert_eq!(params["response_type"], "code");
    for param in ["code_challenge", "state", "nonce"] {
        assert!(
            params.get(param).is_some_and(|v| !v.is_empty()),
            "{param}: {params:?}"
        );
    }
}

#[tokio::test]
async fn the_github_preset_sends_browsers_to_github_with_its_scopes() {
    let url = preset_redirect(
        &[
            "--oauth-github-client-id",
            "Iv1.0123456789abcdef",
            "--oauth-github-client-secret",
            "github-secret-test",
            "--oauth-redirect-uri",
            "https://keel.example.com/api/v1/auth/oauth/{provider}/callback",
        ],
        "github",
    )
    .await;
    let expected = Expected {
        host: "github.com",
        path: "/login/oauth/authorize",
        scope: "read:user user:email",
        client_id: "Iv1.0123456789abcdef",
        redirect_uri: "https://keel.example.com/api/v1/auth/oauth/github/callback",
    };
    let params = assert_authorize_url(&url, &expected);
    assert!(params.get("state").is_some_and(|s| !s.is_empty()));
    assert!(
        !params.contains_key("nonce"),
        "plain OAuth 2.0 has no nonce: {params:?}"
    );
}

#[tokio::test]
async fn the_binding_cookie_is_secure_when_the_callback_is_https() {
    let app = spawn_app_with(&[
        "--oauth-github-client-id",
        "Iv1.0123456789abcdef",
        "--oauth-github-client-secret",
        "github-secret-test",
        "--oauth-redirect-uri",
        "https://keel.example.com/keel/api/v1/auth/oauth/{provider}/callback",
    ])
    .await;
    let response = browser()
        .get(app.url("/api/v1/auth/oauth/github/authorize"))
        .send()
        .await
        .unwrap();
    let cookie = response.headers()[header::SET_COOKIE].to_str().unwrap();
    assert!(cookie.contains("Secure"), "{cookie}");
    assert!(cookie.contains("Path=/keel/api/v1/auth/oauth"), "{cookie}");
}
