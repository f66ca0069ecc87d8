//! TOTP end to end: setup, confirm, sign-in with a code from an
//! authenticator (±1 step, never twice), recovery codes, disabling, and the
//! notice mailed to the owner when TOTP is turned on or off.
//! Codes come from an RFC 6238 implementation here, over `hmac` and `sha1`,
//! not from the totp-rs the API uses, and are checked against the RFC's own
//! test vector first.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit as _, Mac as _};
use keel_shared::domain::Role;
use keel_testing::record_secret;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{
    helpers::{TEST_SECRET, TestApp, TestUser, assert_invalid, assert_problem, spawn_app_with},
    pipeline::{Stack, unlimited_mail_stack},
    refusals::{CHALLENGE_CLOSED, SECOND_FACTOR_LOCKED, TWO_FACTOR_REQUIRED, assert_refused},
    two_factor::change_notices,
};

/// How long a mail may take through the worker to the SMTP server.
const LONG: Duration = Duration::from_secs(30);

/// RFC 4226 HOTP, truncated to six digits, at counter `step`.
fn hotp(key: &[u8], step: u64) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(key).unwrap();
    mac.update(&step.to_be_bytes());
    let digest = mac.finalize().into_bytes();
    let offset = usize::from(digest[19] & 0x0f);
    let number = u32::from_be_bytes(digest[offset..offset + 4].try_into().unwrap()) & 0x7fff_ffff;
    format!("{:06}", number % 1_000_000)
}

/// RFC 4648 base32, upper case, no padding — what `secret` holds.
fn base32_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let (mut bits, mut value, mut out) = (0u32, 0u32, Vec::new());
    for c in text.trim_end_matches('=').bytes() {
        let index = ALPHABET.iter().position(|&a| a == c).expect("base32") as u32;
        value = (value << 5) | index;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((value >> bits) as u8);
            value &= (1 << bits) - 1;
        }
    }
    out
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An authenticator app: the secret, and codes for the step now plus `offset`.
struct Authenticator {
    key: Vec<u8>,
    /// The step every code of one test is relative to.
    step: u64,
}

impl Authenticator {
    /// Waits until at least 15 s remain of the current 30-second step, so a
    /// test's requests all fall in the step it computed codes for.
    async fn new(secret: &str) -> Self {
        while now() % 30 > 15 {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Self {
            key: base32_decode(secret),
            step: now() / 30,
        }
    }

    fn code(&self, offset: i64) -> String {
        let code = hotp(&self.key, self.step.checked_add_signed(offset).unwrap());
        record_secret(&code);
        code
    }
}

#[test]
fn the_test_implementation_matches_rfc_6238() {
    // RFC 6238 appendix B, SHA-1, T = 59 s: 94287082 (8 digits), so 287082.
    assert_eq!(hotp(b"12345678901234567890", 59 / 30), "287082");
    assert_eq!(hotp(b"12345678901234567890", 1_111_111_109 / 30), "081804");
    assert_eq!(base32_decode("GEZDGNBVGY3TQOJQ"), b"1234567890");
}

async fn app() -> TestApp {
    spawn_app_with(&["--rate-limit-enabled", "false"]).await
}

/// `POST /totp/setup` for `user`: the base32 secret (the JSON checked).
async fn setup(app: &TestApp, user: &TestUser) -> String {
    let response = app
        .post_as("/api/v1/auth/totp/setup", &user.token, None)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    let secret = body["secret"].as_str().unwrap().to_owned();
    record_secret(&secret);
    assert_eq!(base32_decode(&secret).len(), 20, "160 bits");
    let uri = url::Url::parse(body["otpauth_uri"].as_str().unwrap()).unwrap();
    assert_eq!(uri.scheme(), "otpauth");
    assert_eq!(uri.host_str(), Some("totp"));
    let query: std::collections::HashMap<_, _> = uri.query_pairs().into_owned().collect();
    assert_eq!(query["secret"], secret);
    assert_eq!(query["issuer"], "Keel");
    assert!(
        uri.path().contains(&user.user.email.replace('@', "%40"))
            || uri.path().contains(&user.user.email),
        "{uri}"
    );
    let svg = body["qr_svg"].as_str().unwrap();
    assert!(svg.contains("<svg") && svg.ends_with("</svg>"), "{svg}");
    secret
}

async fn confirm(app: &TestApp, user: &TestUser, code: &str) -> reqwest::Response {
    let body = json!({"code": code});
    app.post_as("/api/v1/auth/totp/confirm", &user.token, &body)
        .await
}

/// The recovery codes a successful confirmation answers with, each
/// recorded as a secret.
async fn recovery_codes(confirmed: reqwest::Response) -> Vec<String> {
    assert_eq!(confirmed.status(), StatusCode::OK);
    let body: Value = confirmed.json().await.unwrap();
    let codes: Vec<String> = serde_json::from_value(body["recovery_codes"].clone()).unwrap();
    codes.iter().for_each(|c| record_secret(c));
    codes
}

/// How many of `user`'s rows `sql` (a `count(*)` with `$1` the user's id) counts.
async fn count_of(app: &TestApp, user: &TestUser, sql: &'static str) -> i64 {
    app.scalar_with(sql, user.user.id).await
}

/// A user with TOTP on, their authenticator (its step's code used by the
/// confirmation) and their recovery codes.
async fn totp_user(app: &TestApp) -> (TestUser, Authenticator, Vec<String>) {
    let user = app.create_user(Role::User).await;
    let secret = setup(app, &user).await;
    let authenticator = Authenticator::new(&secret).await;
    let codes = recovery_codes(confirm(app, &user, &authenticator.code(0)).await).await;
    (user, authenticator, codes)
}

/// Signs in with the password: the TOTP challenge's id.
async fn challenge(app: &TestApp, user: &TestUser) -> String {
    let response = app.login(&user.user.username, &user.password).await;
    assert_eq!(response.status(), StatusCode::OK);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["two_factor_required"], true, "{answer}");
    assert_eq!(answer["method"], "totp", "{answer}");
    assert!(answer.get("access_token").is_none());
    answer["challenge_id"].as_str().unwrap().to_owned()
}

/// Answers a fresh challenge with `code`: whether it signed in (and the
/// token it gave works).
async fn signs_in_with(app: &TestApp, user: &TestUser, code: &str) -> bool {
    let id = challenge(app, user).await;
    let response = app.verify_2fa(&id, code).await;
    if response.status() != StatusCode::OK {
        assert_problem(response, StatusCode::UNAUTHORIZED, "invalid_code").await;
        return false;
    }
    let tokens: Value = response.json().await.unwrap();
    let token = tokens["access_token"].as_str().unwrap();
    record_secret(token);
    record_secret(tokens["refresh_token"].as_str().unwrap());
    let me = app.get_json("/api/v1/users/me", token).await;
    assert_eq!(me["id"], user.user.id.to_string());
    true
}

#[tokio::test]
async fn setup_then_confirm_turns_totp_on_with_ten_recovery_codes_stored_hashed() {
    let app = app().await;
    let user = app.create_user(Role::User).await;
    let secret = setup(&app, &user).await;

    // Pending: nothing changes at sign-in yet.
    let before = app.sign_in(&user).await;
    assert!(before["access_token"].is_string(), "{before}");
    let me = app.get_json("/api/v1/users/me", &user.token).await;
    assert_eq!(me["totp_enabled"], false);

    // At rest the secret is sealed: its bytes appear nowhere in the row.
    let sealed: Vec<u8> = app
        .scalar_with(
            "SELECT secret_sealed FROM totp_secrets WHERE user_id = $1",
            user.user.id,
        )
        .await;
    let raw = base32_decode(&secret);
    assert!(!sealed.windows(raw.len()).any(|w| w == raw.as_slice()));
    assert!(!String::from_utf8_lossy(&sealed).contains(&secret));

    let authenticator = Authenticator::new(&secret).await;
    let wrong = confirm(&app, &user, &authenticator.code(5)).await;
    let problem = assert_invalid(wrong).await;
    assert_eq!(problem.errors.unwrap()[0].field, "code");

    let codes = recovery_codes(confirm(&app, &user, &authenticator.code(0)).await).await;
    assert_eq!(codes.len(), 10);
    assert_eq!(
        codes.iter().collect::<std::collections::HashSet<_>>().len(),
        10
    );
    let stored: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT code_hash FROM totp_recovery_codes WHERE user_id = $1")
            .bind(user.user.id)
            .fetch_all(app.pool())
            .await
            .unwrap();
    assert_eq!(stored.len(), 10);
    for code in &codes {
        assert!(
            stored
                .iter()
                .all(|h| !h.windows(code.len()).any(|w| w == code.as_bytes()))
        );
    }

    let me = app.get_json("/api/v1/users/me", &user.token).await;
    assert_eq!(me["totp_enabled"], true);
    // Once on, the secret cannot be swapped without disabling first.
    let again = app
        .post_as("/api/v1/auth/totp/setup", &user.token, None)
        .await;
    assert_problem(again, StatusCode::CONFLICT, "totp_already_enabled").await;
    let reconfirm = confirm(&app, &user, &authenticator.code(1)).await;
    assert_problem(reconfirm, StatusCode::CONFLICT, "totp_already_enabled").await;

    // Sign-in now asks for a TOTP code; the OAuth2 token endpoint, which
    // cannot answer a challenge, sends the client to the two-step flow.
    challenge(&app, &user).await;
    let token = app
        .client
        .post(app.url("/api/v1/auth/token"))
        .form(&[
            ("grant_type", "password"),
            ("username", user.user.username.as_str()),
            ("password", user.password.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_refused(token, TWO_FACTOR_REQUIRED).await;
}

#[tokio::test]
async fn codes_one_step_either_side_pass_two_steps_off_fail_and_no_step_passes_twice() {
    let app = app().await;
    let user = app.create_user(Role::User).await;
    let secret = setup(&app, &user).await;
    let authenticator = Authenticator::new(&secret).await;

    // Confirming accepts the same window: two steps off fail, one step back passes.
    for offset in [-2, 2] {
        let response = confirm(&app, &user, &authenticator.code(offset)).await;
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "offset {offset}"
        );
    }
    let confirmed = confirm(&app, &user, &authenticator.code(-1)).await;
    assert_eq!(confirmed.status(), StatusCode::OK);

    // The step confirmation used cannot sign in: a replay.
    assert!(!signs_in_with(&app, &user, &authenticator.code(-1)).await);
    // Two steps ahead is too far; one step ahead (a fast phone) passes.
    assert!(!signs_in_with(&app, &user, &authenticator.code(2)).await);
    assert!(signs_in_with(&app, &user, &authenticator.code(1)).await);
    // That code again, in a new challenge: refused. And the current step's
    // code, older than the one just used, is refused as well.
    assert!(!signs_in_with(&app, &user, &authenticator.code(1)).await);
    assert!(!signs_in_with(&app, &user, &authenticator.code(0)).await);

    let last: Option<i64> = app
        .scalar_with(
            "SELECT last_step FROM totp_secrets WHERE user_id = $1",
            user.user.id,
        )
        .await;
    assert_eq!(last, Some(i64::try_from(authenticator.step + 1).unwrap()));
}

#[tokio::test]
async fn five_wrong_codes_close_a_totp_challenge() {
    let app = app().await;
    let (user, authenticator, _) = totp_user(&app).await;
    let id = challenge(&app, &user).await;
    for left in (1..5).rev() {
        let problem = assert_problem(
            app.verify_2fa(&id, "000000").await,
            StatusCode::UNAUTHORIZED,
            "invalid_code",
        )
        .await;
        assert!(
            problem.detail.contains(&format!("{left} tries left")),
            "{problem:?}"
        );
    }
    assert_refused(app.verify_2fa(&id, "000000").await, CHALLENGE_CLOSED).await;
    // Even the right code cannot open a closed challenge.
    assert_refused(
        app.verify_2fa(&id, &authenticator.code(1)).await,
        CHALLENGE_CLOSED,
    )
    .await;
}

/// A six-digit code the authenticator would not give now (nor a step either side).
fn wrong_code(authenticator: &Authenticator) -> String {
    let near: Vec<String> = (-1..=1).map(|o| authenticator.code(o)).collect();
    (0..)
        .map(|n: u32| format!("{:06}", (n * 7919) % 1_000_000))
        .find(|c| !near.contains(c))
        .unwrap()
}

#[tokio::test]
async fn wrong_codes_count_per_account_across_challenges_and_ten_pause_the_second_step() {
    // Rate limits off: the pause is the account's, kept in PostgreSQL.
    let app = app().await;
    let (user, authenticator, recovery) = totp_user(&app).await;
    let wrong = wrong_code(&authenticator);
    // Nine wrong, then a right one: the count starts again.
    for _ in 0..9 {
        assert!(!signs_in_with(&app, &user, &wrong).await);
    }
    assert!(signs_in_with(&app, &user, &recovery[0]).await);
    // Ten wrong across three challenges (a fresh password each): 5, 4, 1.
    let mut last = String::new();
    for wrong_here in [5, 4, 1] {
        last = challenge(&app, &user).await;
        for _ in 0..wrong_here {
            let response = app.verify_2fa(&last, &wrong).await;
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        }
    }
    // The last challenge is still open, but the account's second step is paused.
    for code in [authenticator.code(0), recovery[1].clone()] {
        assert_refused(app.verify_2fa(&last, &code).await, SECOND_FACTOR_LOCKED).await;
    }
    // No new challenge is opened meanwhile, even with the right password.
    assert_refused(
        app.login(&user.user.username, &user.password).await,
        SECOND_FACTOR_LOCKED,
    )
    .await;
    // Disabling TOTP with a code is paused too.
    assert_refused(
        disable(&app, &user, &user.password, &authenticator.code(0)).await,
        SECOND_FACTOR_LOCKED,
    )
    .await;
    let notices: i64 = app
        .scalar_with(
            "SELECT count(*) FROM email_deliveries \
             WHERE template = 'second_factor_locked' AND to_address = $1",
            &user.user.email,
        )
        .await;
    assert_eq!(notices, 1, "the owner is mailed once");
    let unused = count_of(
        &app,
        &user,
        "SELECT count(*) FROM totp_recovery_codes WHERE user_id = $1 AND used_at IS NULL",
    )
    .await;
    assert_eq!(unused, 9, "a refused code is not spent");
}

#[tokio::test]
async fn each_recovery_code_signs_in_once() {
    let app = app().await;
    let (user, _, codes) = totp_user(&app).await;
    assert!(signs_in_with(&app, &user, &codes[0]).await);
    assert!(!signs_in_with(&app, &user, &codes[0]).await);
    // Copied loosely (upper case, a space for the dash): still the code.
    let loose = codes[1].to_uppercase().replace('-', " ");
    assert!(signs_in_with(&app, &user, &loose).await);
    assert!(!signs_in_with(&app, &user, "aaaa-bbbb-cccc-dddd-eeee-ffff").await);

    let used = count_of(
        &app,
        &user,
        "SELECT count(*) FROM totp_recovery_codes WHERE user_id = $1 AND used_at IS NOT NULL",
    )
    .await;
    assert_eq!(used, 2);
}

async fn disable(app: &TestApp, user: &TestUser, password: &str, code: &str) -> reqwest::Response {
    let body = json!({"password": password, "code": code});
    app.post_as("/api/v1/auth/totp/disable", &user.token, &body)
        .await
}

/// Asserts a disable went through and the answer says TOTP is off.
async fn assert_disabled(disabled: reqwest::Response) {
    assert_eq!(disabled.status(), StatusCode::OK);
    assert_eq!(
        disabled.json::<Value>().await.unwrap()["totp_enabled"],
        false
    );
}

#[tokio::test]
async fn a_rotated_secret_key_keeps_totp_and_sessions_while_the_old_one_is_previous() {
    const NEW_KEY: &str = "the-next-secret-key-also-at-least-32-bytes";
    record_secret(NEW_KEY);
    let app = app().await;
    let (user, authenticator, _) = totp_user(&app).await;
    let sealed = || {
        sqlx::query_scalar::<_, Vec<u8>>(
            "SELECT secret_sealed FROM totp_secrets WHERE user_id = $1",
        )
        .bind(user.user.id)
        .fetch_one(app.pool())
    };
    let before = sealed().await.unwrap();

    let rotating = app
        .spawn_replica_with(|c| {
            c.auth.secret_key = Some(NEW_KEY.to_owned().into());
            c.auth.secret_key_previous = Some(TEST_SECRET.to_owned().into());
        })
        .await;
    // The session signed with the old key goes on.
    assert_eq!(rotating.me(&user.token).await.status(), StatusCode::OK);
    // Starting with both keys reseals the secret under the new one.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while sealed().await.unwrap() == before {
        assert!(tokio::time::Instant::now() < deadline, "never resealed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Once the previous key is dropped, tokens it signed end, and the new
    // key alone opens the secret: the authenticator app still signs in.
    let rotated = app
        .spawn_replica_with(|c| {
            c.auth.secret_key = Some(NEW_KEY.to_owned().into());
            c.auth.secret_key_previous = None;
        })
        .await;
    assert_eq!(
        rotated.me(&user.token).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert!(signs_in_with(&rotated, &user, &authenticator.code(1)).await);
}

#[tokio::test]
async fn turning_totp_on_and_off_mails_the_owner() {
    let (Stack { app, worker: _w }, smtp) = &unlimited_mail_stack().await;
    let (user, authenticator, _) = totp_user(app).await;
    let on = &smtp
        .wait_for_subject("Two-step sign-in was turned on", 1, LONG)
        .await[0];
    assert!(on.contains(&user.user.email), "{on}");

    // A refused attempt changes nothing and mails nothing.
    let refused = disable(app, &user, "not-the-password", &authenticator.code(1)).await;
    assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let off = disable(app, &user, &user.password, &authenticator.code(1)).await;
    assert_eq!(off.status(), StatusCode::OK);
    smtp.wait_for_subject("Two-step sign-in was turned off", 1, LONG)
        .await;
    assert_eq!(change_notices(app, &user).await, [true, false]);
}

#[tokio::test]
async fn disabling_needs_the_password_and_a_current_code() {
    let app = app().await;
    let (user, authenticator, _) = totp_user(&app).await;

    let wrong_password = disable(&app, &user, "not-the-password", &authenticator.code(1)).await;
    let problem = assert_invalid(wrong_password).await;
    assert_eq!(problem.errors.unwrap()[0].field, "password");
    for code in ["000000", &authenticator.code(0), &authenticator.code(3)] {
        let problem = assert_invalid(disable(&app, &user, &user.password, code).await).await;
        assert_eq!(problem.errors.unwrap()[0].field, "code", "{code}");
    }
    // Still on after every refusal.
    let me = app.get_json("/api/v1/users/me", &user.token).await;
    assert_eq!(me["totp_enabled"], true);

    assert_disabled(disable(&app, &user, &user.password, &authenticator.code(1)).await).await;
    for table in [
        "SELECT count(*) FROM totp_secrets WHERE user_id = $1",
        "SELECT count(*) FROM totp_recovery_codes WHERE user_id = $1",
    ] {
        assert_eq!(count_of(&app, &user, table).await, 0, "{table}");
    }
    let login = app.sign_in(&user).await;
    assert!(login["access_token"].is_string(), "{login}");
    let again = disable(&app, &user, &user.password, &authenticator.code(1)).await;
    assert_problem(again, StatusCode::CONFLICT, "totp_not_enabled").await;
}

#[tokio::test]
async fn a_recovery_code_disables_totp_when_the_app_is_lost() {
    let app = app().await;
    let (user, _, codes) = totp_user(&app).await;
    assert_disabled(disable(&app, &user, &user.password, &codes[3]).await).await;
}

#[tokio::test]
async fn with_email_2fa_on_too_totp_is_asked_for_and_email_returns_when_it_is_off() {
    let app = app().await;
    let (user, authenticator, recovery) = totp_user(&app).await;
    let enabled = app
        .post_as("/api/v1/auth/enable-2fa", &user.token, None)
        .await;
    assert_eq!(enabled.status(), StatusCode::OK);
    let id = challenge(&app, &user).await;
    // A TOTP challenge mails nothing: no code is ever made for it.
    let (method, code_hash): (String, Option<Vec<u8>>) =
        sqlx::query_as("SELECT method, code_hash FROM two_factor_challenges WHERE id = $1::uuid")
            .bind(&id)
            .fetch_one(app.pool())
            .await
            .unwrap();
    assert_eq!((method.as_str(), code_hash), ("totp", None));
    assert!(
        app.verify_2fa(&id, &authenticator.code(1))
            .await
            .status()
            .is_success()
    );

    let disabled = disable(&app, &user, &user.password, &recovery[0]).await;
    assert_eq!(disabled.status(), StatusCode::OK);
    let me: Value = disabled.json().await.unwrap();
    assert_eq!(
        (me["totp_enabled"].clone(), me["two_fa_enabled"].clone()),
        (json!(false), json!(true))
    );
    let answer = app.sign_in(&user).await;
    assert_eq!(answer["method"], "email", "{answer}");
}

#[tokio::test]
async fn confirm_without_setup_and_api_keys_are_refused() {
    let app = app().await;
    let user = app.create_user(Role::User).await;
    assert_problem(
        confirm(&app, &user, "123456").await,
        StatusCode::CONFLICT,
        "totp_not_set_up",
    )
    .await;
    let key = app.api_key(&user, "ci").await;
    let response = app
        .send_with_key(Method::POST, "/api/v1/auth/totp/setup", &key, None)
        .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
}
