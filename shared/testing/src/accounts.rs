//! An account on a running API, registered and signed in over HTTP as a
//! client would, for tests that run `keel-api` as a process.

use serde_json::{Value, json};

/// Registers a fresh account at the API on `base` and signs in: a bearer
/// token. The password and the token are recorded as secrets the suite's
/// logs must not hold.
///
/// # Panics
/// When the API refuses either step.
pub async fn sign_up(client: &reqwest::Client, base: &str) -> String {
    let name = format!("u{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let password = "correct-horse-battery-staple-42";
    crate::record_secret(password);
    let account =
        json!({"username": name, "email": format!("{name}@example.com"), "password": password});
    let registered = client
        .post(format!("{base}/api/v1/auth/register"))
        .json(&account)
        .send()
        .await
        .expect("the API answers");
    let status = registered.status();
    assert_eq!(
        status,
        201,
        "{}",
        registered.text().await.unwrap_or_default()
    );
    let tokens: Value = client
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({"username_or_email": name, "password": password}))
        .send()
        .await
        .expect("the API answers")
        .json()
        .await
        .expect("tokens");
    let token = tokens["access_token"].as_str().expect("tokens").to_owned();
    crate::record_secret(&token);
    token
}
