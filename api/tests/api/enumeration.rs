//! Account enumeration: login, register, password reset and the signed-out
//! resend of a verification link answer an existing account and an unknown
//! one alike — the same status, header names and body (set aside what is
//! per request: request ids; for register the echoed username and email and
//! the new id and timestamps, whose form is checked instead) — and in the
//! same time: over 200 interleaved requests, the medians of the two kinds
//! are within 15 ms. (A timed assertion, against the house rule, because
//! the time is the property; medians of interleaved requests with a wide
//! margin keep it steady on a loaded machine. The figures are printed.)
//!
//! The rate limits are off in the timed tests, so all 200 requests reach
//! the handlers; the mail tests run with them on.

use std::{collections::BTreeSet, net::Ipv4Addr, time::Duration};

use keel_api::auth::password::PasswordHasher;
use keel_shared::{
    db::users::{self, NewUser, ProfileChanges, User},
    domain::{EmailAddress, Password, Role, Username},
};
use keel_testing::SmtpServer;
use reqwest::{RequestBuilder, StatusCode};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::{
    helpers::{TestApp, assert_problem, registration, spawn_app_with},
    mail,
    pipeline::{Stack, mail_stack},
    refusals::{NOT_AUTHENTICATED, RATE_LIMITED, assert_refused},
};

/// Pairs of requests (one existing, one unknown) measured per endpoint.
const PAIRS: usize = 100;
/// Pairs sent first and not measured: connections, caches, hash buffers.
const WARM_UP: usize = 5;
/// How far apart the two medians may be.
const MAX_MEDIAN_GAP: Duration = Duration::from_millis(15);
/// Accounts the "existing" requests take turns at.
const ACCOUNTS: usize = 10;
const LONG: Duration = Duration::from_secs(30);

/// What one request answered, and how long it took from sending to the
/// last byte of the body.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    /// Header names, and the values of those that must match.
    headers: BTreeSet<String>,
    body: Value,
    took: Duration,
}

/// Headers whose values must be the same for both kinds of request.
const SAME_VALUE_HEADERS: [&str; 2] = ["content-type", "www-authenticate"];

async fn answer(request: RequestBuilder) -> Answer {
    let start = Instant::now();
    let response = request.send().await.expect("request sent");
    let status = response.status();
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| {
            if SAME_VALUE_HEADERS.contains(&name.as_str()) {
                format!("{name}: {}", value.to_str().unwrap_or("?"))
            } else {
                name.as_str().to_owned()
            }
        })
        .collect();
    let bytes = response.bytes().await.expect("a body");
    let took = start.elapsed();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("a JSON body, not {bytes:?}: {e}"));
    Answer {
        status,
        headers,
        body,
        took,
    }
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    let mid = times.len() / 2;
    if times.len().is_multiple_of(2) {
        (times[mid - 1] + times[mid]) / 2
    } else {
        times[mid]
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A request and the JSON body it sends.
type Sent = (RequestBuilder, Value);

/// Sends `WARM_UP + PAIRS` pairs, one request about an existing account
/// and one about an unknown, taking turns at which goes first. Every answer
/// must have `status` and, after `normalize` (given what was sent), the
/// same header names and body as the first existing one; then the medians
/// of the measured pairs must be within `MAX_MEDIAN_GAP`.
async fn assert_alike(
    what: &str,
    status: StatusCode,
    existing: impl Fn(usize) -> Sent,
    unknown: impl Fn(usize) -> Sent,
    normalize: impl Fn(&Value, Value) -> Value,
) {
    let mut reference: Option<(BTreeSet<String>, Value)> = None;
    let (mut existing_times, mut unknown_times) = (Vec::new(), Vec::new());
    for i in 0..WARM_UP + PAIRS {
        let order = if i % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for is_existing in order {
            let kind = if is_existing { "existing" } else { "unknown" };
            let (request, sent) = if is_existing { existing(i) } else { unknown(i) };
            let answer = answer(request).await;
            assert_eq!(
                answer.status, status,
                "{what}, {kind} account, request {i}: {}",
                answer.body
            );
            let body = normalize(&sent, answer.body);
            match &reference {
                None => reference = Some((answer.headers, body)),
                Some((headers, reference_body)) => {
                    assert_eq!(
                        &answer.headers, headers,
                        "{what}: the header names of request {i} ({kind}) are those of the first"
                    );
                    assert_eq!(
                        &body, reference_body,
                        "{what}: the body of request {i} ({kind}) is that of the first"
                    );
                }
            }
            if i >= WARM_UP {
                if is_existing {
                    existing_times.push(answer.took);
                } else {
                    unknown_times.push(answer.took);
                }
            }
        }
    }
    let (existing, unknown) = (median(existing_times), median(unknown_times));
    let gap = existing.abs_diff(unknown);
    println!(
        "{what}: median {:.1} ms for existing accounts, {:.1} ms for unknown ones, {:.2} ms apart \
         ({PAIRS} interleaved pairs)",
        ms(existing),
        ms(unknown),
        ms(gap)
    );
    assert!(
        gap <= MAX_MEDIAN_GAP,
        "{what}: the medians are {:.1} ms (existing) and {:.1} ms (unknown), {:.1} ms apart; \
         at most {MAX_MEDIAN_GAP:?} may tell them apart",
        ms(existing),
        ms(unknown),
        ms(gap)
    );
}

/// A problem body without its request id.
fn without_request_id(_sent: &Value, mut body: Value) -> Value {
    body.as_object_mut()
        .expect("a problem object")
        .remove("request_id");
    body
}

fn as_sent(_sent: &Value, body: Value) -> Value {
    body
}

fn suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// `ACCOUNTS` users with one real password hash, inserted directly (hashing
/// each would cost seconds).
async fn accounts(app: &TestApp, email_verified: bool) -> Vec<User> {
    let hash = PasswordHasher::new()
        .hash(&Password::parse("the accounts' own password").unwrap())
        .await
        .unwrap();
    let mut accounts = Vec::new();
    for _ in 0..ACCOUNTS {
        let name = format!("owner_{}", suffix());
        let new = NewUser {
            username: Username::parse(&name).unwrap(),
            email: EmailAddress::parse(&format!("{name}@example.com")).unwrap(),
            password_hash: hash.clone(),
            role: Role::User,
            email_verified,
            profile: ProfileChanges::default(),
        };
        accounts.push(users::insert(app.pool(), &new).await.unwrap());
    }
    accounts
}

async fn timed_app() -> TestApp {
    spawn_app_with(&["--rate-limit-enabled", "false"]).await
}

fn post(app: &TestApp, path: &str, body: Value) -> Sent {
    (app.client.post(app.url(path)).json(&body), body)
}

#[tokio::test]
async fn login_answers_a_wrong_password_and_an_unknown_account_alike_and_in_the_same_time() {
    let app = timed_app().await;
    let accounts = accounts(&app, true).await;
    // Half the requests name the account by username, half by email.
    let name = |account: &User, i: usize| {
        if i % 4 < 2 {
            account.username.clone()
        } else {
            account.email.clone()
        }
    };
    assert_alike(
        "login",
        StatusCode::UNAUTHORIZED,
        |i| {
            let account = &accounts[i % ACCOUNTS];
            post(
                &app,
                "/api/v1/auth/login",
                json!({"username_or_email": name(account, i), "password": "not the password at all"}),
            )
        },
        |i| {
            let nobody = format!("nobody_{}", suffix());
            let name = if i % 4 < 2 {
                nobody
            } else {
                format!("{nobody}@example.com")
            };
            post(
                &app,
                "/api/v1/auth/login",
                json!({"username_or_email": name, "password": "not the password at all"}),
            )
        },
        without_request_id,
    )
    .await;
}

/// A registration's answer with the fields that differ per request checked
/// and set aside: the echoed username and email, a fresh UUID v7, and
/// equal timestamps with at most microseconds (as Postgres keeps them).
fn registered(sent: &Value, mut body: Value) -> Value {
    let user = body.as_object_mut().expect("a user object");
    assert_eq!(user.remove("username").as_ref(), Some(&sent["username"]));
    assert_eq!(user.remove("email").as_ref(), Some(&sent["email"]));
    let id = user.remove("id").expect("an id");
    let id = uuid::Uuid::parse_str(id.as_str().expect("a string id")).expect("a UUID");
    assert_eq!(id.get_version_num(), 7, "a UUID v7: {id}");
    let created = user.remove("created_at").expect("created_at");
    let updated = user.remove("updated_at").expect("updated_at");
    assert_eq!(created, updated, "a new account was never updated");
    let created = created.as_str().expect("a timestamp string");
    assert!(
        chrono::DateTime::parse_from_rfc3339(created).is_ok(),
        "RFC 3339: {created}"
    );
    let fraction = created
        .split_once('.')
        .map_or(0, |(_, rest)| rest.trim_end_matches('Z').len());
    assert!(fraction <= 6, "at most microseconds: {created}");
    body
}

#[tokio::test]
async fn register_answers_a_taken_email_as_a_fresh_account_and_in_the_same_time() {
    let app = timed_app().await;
    let owners = accounts(&app, true).await;
    let fake_usernames = std::sync::Mutex::new(Vec::new());
    assert_alike(
        "register",
        StatusCode::CREATED,
        |i| {
            let owner = &owners[i % ACCOUNTS];
            let username = format!("taker_{}", suffix());
            fake_usernames.lock().unwrap().push(username.clone());
            post(
                &app,
                "/api/v1/auth/register",
                json!({"username": username, "email": owner.email,
                       "password": format!("a long passphrase {}", suffix())}),
            )
        },
        |_| post(&app, "/api/v1/auth/register", registration()),
        registered,
    )
    .await;

    for owner in &owners {
        let now = users::find_by_id(app.pool(), owner.id).await.unwrap();
        assert_eq!(
            now.as_ref(),
            Some(owner),
            "the owner's account is unchanged"
        );
    }
    let fake_usernames = fake_usernames.into_inner().unwrap();
    let made: i64 = app
        .scalar_with(
            "SELECT count(*) FROM users WHERE username = ANY($1)",
            &fake_usernames,
        )
        .await;
    assert_eq!(made, 0, "no account for a taken email");
    let fresh: i64 = app.scalar("SELECT count(*) FROM users").await;
    assert_eq!(
        fresh,
        i64::try_from(ACCOUNTS + WARM_UP + PAIRS).unwrap(),
        "the owners, and one account per fresh registration"
    );
}

/// [`assert_alike`] for a route that takes `{"email": …}` and answers 202:
/// the addresses of `accounts` against unknown ones.
async fn assert_email_route_alike(app: &TestApp, what: &str, path: &str, accounts: &[User]) {
    assert_alike(
        what,
        StatusCode::ACCEPTED,
        |i| post(app, path, json!({"email": accounts[i % ACCOUNTS].email})),
        |_| {
            let unknown = format!("nobody_{}@example.com", suffix());
            post(app, path, json!({"email": unknown}))
        },
        as_sent,
    )
    .await;
}

#[tokio::test]
async fn a_password_reset_request_answers_every_address_alike_and_in_the_same_time() {
    let app = timed_app().await;
    let accounts = accounts(&app, true).await;
    let path = "/api/v1/auth/password-reset/request";
    assert_email_route_alike(&app, "password reset", path, &accounts).await;
}

#[tokio::test]
async fn a_signed_out_resend_of_the_verification_link_answers_every_address_alike_and_in_the_same_time()
 {
    let app = timed_app().await;
    let unverified = accounts(&app, false).await;
    let (what, path) = (
        "resend verification (signed out)",
        "/api/v1/auth/resend-verification",
    );
    assert_email_route_alike(&app, what, path, &unverified).await;
}

/// Raw messages to `address`.
fn mails_to(smtp: &SmtpServer, address: &str) -> Vec<String> {
    smtp.messages()
        .into_iter()
        .filter(|m| m.contains(&format!("To: {address}")))
        .collect()
}

#[tokio::test]
async fn registering_with_a_taken_email_creates_nothing_changes_nothing_and_tells_the_owner() {
    let smtp = SmtpServer::start().await;
    let Stack { app, worker: _w } = &mail_stack(&smtp, &[]).await;
    let owner = app.create_user(Role::User).await;
    let before = users::find_by_id(app.pool(), owner.user.id).await.unwrap();

    let mut attempt = registration();
    // Any case: addresses are stored lower-case.
    attempt["email"] = json!(owner.user.email.to_uppercase());
    let response = app.register(&attempt).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let answered: Value = response.json().await.unwrap();
    assert_eq!(answered["username"], attempt["username"]);
    assert_eq!(answered["email"], owner.user.email.as_str());
    assert_eq!(answered["email_verified"], false);
    assert_ne!(answered["id"], owner.user.id.to_string());

    let notices = smtp.wait_for(1, LONG).await;
    mail::assert_subject(
        &notices[0],
        "Someone tried to register with your email address",
    );
    assert!(notices[0].contains(&format!("To: {}", owner.user.email)));
    assert!(
        !notices[0].contains(attempt["password"].as_str().unwrap()),
        "the notice never holds what the other party typed"
    );
    assert_eq!(
        users::find_by_id(app.pool(), owner.user.id).await.unwrap(),
        before,
        "the owner's account is unchanged"
    );
    assert!(
        users::find_by_login(app.pool(), attempt["username"].as_str().unwrap())
            .await
            .unwrap()
            .is_none(),
        "no account was made"
    );
    // The attempt's username stays free; the owner's password still works.
    let mut fresh = registration();
    fresh["username"] = attempt["username"].clone();
    assert_eq!(app.register(&fresh).await.status(), StatusCode::CREATED);
    assert_eq!(
        app.login(&owner.user.email, &owner.password).await.status(),
        StatusCode::OK
    );

    // A username that is taken as well still says so: usernames are public.
    let mut both = registration();
    both["email"] = json!(owner.user.email);
    both["username"] = json!(owner.user.username);
    assert_problem(
        app.register(&both).await,
        StatusCode::CONFLICT,
        "username_taken",
    )
    .await;

    // Three notices an hour per address: repeated attempts do not flood the owner.
    for _ in 0..3 {
        let mut again = registration();
        again["email"] = json!(owner.user.email);
        assert_eq!(app.register(&again).await.status(), StatusCode::CREATED);
    }
    smtp.wait_for(4, LONG).await; // the notices, and `fresh`'s verification mail
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        mails_to(&smtp, &owner.user.email).len(),
        3,
        "at most three notices an hour"
    );
}

/// The `POST` of a signed-out resend for `email`, as from `ip` (the app
/// trusts loopback's `X-Forwarded-For`).
async fn resend_for(app: &TestApp, email: &str, ip: Ipv4Addr) -> reqwest::Response {
    app.client
        .post(app.url("/api/v1/auth/resend-verification"))
        .header("x-forwarded-for", ip.to_string())
        .json(&json!({"email": email}))
        .send()
        .await
        .expect("request sent")
}

#[tokio::test]
async fn a_signed_out_resend_mails_a_fresh_link_only_to_an_unverified_account() {
    let smtp = SmtpServer::start().await;
    let Stack { app, worker: _w } =
        &mail_stack(&smtp, &["--trusted-proxies", "127.0.0.1/32"]).await;
    let new = registration();
    assert_eq!(app.register(&new).await.status(), StatusCode::CREATED);
    let address = new["email"].as_str().unwrap();
    let first = smtp.wait_for(1, LONG).await.remove(0);
    let verified = app.create_user(Role::User).await;

    let mut bodies = Vec::new();
    for (email, octet) in [
        (address.to_owned(), 1),
        (verified.user.email.clone(), 2),
        ("nobody@example.com".to_owned(), 3),
    ] {
        let response = resend_for(app, &email, Ipv4Addr::new(203, 0, 113, octet)).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED, "{email}");
        bodies.push(response.json::<Value>().await.unwrap());
    }
    assert!(
        bodies.iter().all(|b| *b == bodies[0]),
        "one answer for every address: {bodies:?}"
    );

    let messages = smtp.wait_for(2, LONG).await;
    let second = &messages[1];
    assert!(second.contains(&format!("To: {address}")), "{second}");
    mail::assert_subject(second, "Confirm your email address");
    let token = |m: &str| {
        let unfolded = mail::unfold(m);
        let start = unfolded.find("verify-email?token=").expect("a link") + 19;
        unfolded[start..start + 20].to_owned()
    };
    assert_ne!(token(&first), token(second), "a fresh link");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        smtp.messages().len(),
        2,
        "nothing for a verified or an unknown address"
    );

    // Without a credential or a body it is the signed-in form, unsigned.
    assert_refused(
        app.client
            .post(app.url("/api/v1/auth/resend-verification"))
            .send()
            .await
            .unwrap(),
        NOT_AUTHENTICATED,
    )
    .await;
    assert_problem(
        app.post_json(
            "/api/v1/auth/resend-verification",
            &json!({"mail": address}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
}

#[tokio::test]
async fn signed_out_resends_are_limited_per_address_and_per_ip_alike_for_every_address() {
    let app = spawn_app_with(&["--trusted-proxies", "127.0.0.1/32"]).await;
    let unverified = accounts(&app, false).await.remove(0);
    // Per address: five an hour, from any number of IPs, known or not.
    for email in [
        unverified.email.as_str(),
        &format!("nobody_{}@example.com", suffix()),
    ] {
        for n in 1..=5u8 {
            let response = resend_for(&app, email, Ipv4Addr::new(198, 51, 100, n)).await;
            assert_eq!(response.status(), StatusCode::ACCEPTED, "{email}, {n}");
        }
        assert_refused(
            resend_for(&app, email, Ipv4Addr::new(198, 51, 100, 99)).await,
            RATE_LIMITED,
        )
        .await;
    }
    // Per IP: ten a minute, whatever the addresses.
    let ip = Ipv4Addr::new(192, 0, 2, 7);
    for n in 1..=10 {
        let email = format!("nobody_{n}_{}@example.com", suffix());
        assert_eq!(
            resend_for(&app, &email, ip).await.status(),
            StatusCode::ACCEPTED
        );
    }
    assert_refused(
        resend_for(&app, "nobody_else@example.com", ip).await,
        RATE_LIMITED,
    )
    .await;
}
