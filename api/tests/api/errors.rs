//! Every refusal is problem+json: the API's own, axum's and tower-http's.

use std::time::Duration;

use axum::{Router, routing::post};
use keel_api::{error::ApiError, extract::AppJson, middleware};
use keel_testing as testing;
use reqwest::StatusCode;
use serde::Deserialize;

use crate::{
    helpers::{assert_invalid, assert_problem, send_raw, spawn_app, spawn_app_with},
    refusals::{MALFORMED_JSON, NOT_FOUND, UNSUPPORTED_MEDIA_TYPE, assert_refused},
};

#[tokio::test]
async fn an_unknown_route_is_a_404_problem() {
    let app = spawn_app().await;
    let problem = assert_refused(app.get("/api/v1/nothing-here").await, NOT_FOUND).await;
    assert!(
        problem.detail.contains("/api/v1/nothing-here"),
        "{problem:?}"
    );
}

#[tokio::test]
async fn a_wrong_method_is_a_405_problem_with_allow() {
    let app = spawn_app().await;
    let response = app.client.delete(app.url("/health")).send().await.unwrap();
    let allow = response
        .headers()
        .get("allow")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert_problem(
        response,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await;
    assert!(allow.contains("GET"), "{allow}");
}

#[tokio::test]
async fn a_body_over_the_limit_is_a_413_problem() {
    let app = spawn_app_with(&["--max-body-bytes", "1024"]).await;
    let response = app
        .client
        .post(app.url("/api/v1/health"))
        .body(vec![b'x'; 4096])
        .send()
        .await
        .unwrap();
    assert_problem(response, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
}

/// The API's extractors and middleware on routes of the test's own: JSON
/// bodies, a slow handler, a panicking one. Same stack as every real route.
async fn serve_probe_routes(extra: &[&str]) -> String {
    #[derive(Deserialize)]
    struct Greeting {
        #[allow(dead_code)]
        name: String,
        #[allow(dead_code)]
        count: u32,
    }
    let config = testing::config(&testing::unreachable_database_url(), "unused", extra);
    let router = Router::new()
        .route(
            "/json",
            post(|AppJson(_): AppJson<Greeting>| async { "ok" }),
        )
        .route(
            "/slow",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }),
        )
        .route(
            "/panic",
            post(|| async {
                if true {
                    panic!("boom");
                }
                Err::<(), ApiError>(ApiError::not_found("unreachable"))
            }),
        );
    let app = middleware::apply(router, &config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    address
}

/// `POST base + path` with no body.
async fn post_empty(base: &str, path: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{base}{path}"))
        .send()
        .await
        .unwrap()
}

/// `POST base/json` with `body` as is, declared as `content_type`.
async fn post_json_route(
    base: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    let request = reqwest::Client::new().post(format!("{base}/json"));
    send_raw(request, content_type, body).await
}

#[tokio::test]
async fn malformed_json_is_a_400_problem() {
    let base = serve_probe_routes(&[]).await;
    let response = post_json_route(&base, "application/json", "{\"name\": ").await;
    assert_refused(response, MALFORMED_JSON).await;
}

#[tokio::test]
async fn a_body_without_json_content_type_is_a_415_problem() {
    let base = serve_probe_routes(&[]).await;
    let response = post_json_route(&base, "text/plain", r#"{"name":"a","count":1}"#).await;
    assert_refused(response, UNSUPPORTED_MEDIA_TYPE).await;
}

#[tokio::test]
async fn json_of_the_wrong_shape_is_a_422_problem_naming_the_field() {
    let base = serve_probe_routes(&[]).await;
    // One case a line: (body, the field named, what is wrong with it).
    #[rustfmt::skip]
    let cases = [
        (r#"{"name":"a"}"#, "count", "a missing field"),
        (r#"{"name":"a","count":"three"}"#, "count", "a field of the wrong type"),
        (r#"{"name":7,"count":1}"#, "name", "a field of the wrong type"),
        (r#" ["a", 1]"#, "body", "an array, which serde would read as the struct's fields in order"),
    ];
    for (body, field, why) in cases {
        let response = post_json_route(&base, "application/json", body).await;
        let problem = assert_invalid(response).await;
        let errors = problem.errors.expect("field errors");
        assert_eq!(errors[0].field, field, "{why}: {errors:?}");
    }
}

#[tokio::test]
async fn a_refusal_quotes_at_most_a_little_of_a_huge_value() {
    let base = serve_probe_routes(&[]).await;
    // serde's message quotes the string it could not take as a number.
    let body = format!(r#"{{"name":"a","count":"{}"}}"#, "x".repeat(900 * 1024));
    let response = post_json_route(&base, "application/json", body).await;
    let problem = assert_invalid(response).await;
    let errors = problem.errors.expect("field errors");
    assert_eq!(errors[0].field, "count", "{errors:?}");
    let message = &errors[0].message;
    assert!(message.contains("string \"xxx"), "{message}");
    assert!(
        message.chars().count() <= 301 && problem.detail.chars().count() <= 310,
        "the refusal is small: {} and {} characters",
        message.chars().count(),
        problem.detail.chars().count()
    );
}

#[tokio::test]
async fn a_json_body_over_the_limit_is_a_413_problem() {
    let base = serve_probe_routes(&["--max-body-bytes", "64"]).await;
    let body = format!(r#"{{"name":"{}","count":1}}"#, "x".repeat(200));
    let response = post_json_route(&base, "application/json", body).await;
    assert_problem(response, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
}

#[tokio::test]
async fn a_request_over_the_timeout_is_a_408_problem() {
    let base = serve_probe_routes(&["--request-timeout-seconds", "1"]).await;
    let response = post_empty(&base, "/slow").await;
    assert_problem(response, StatusCode::REQUEST_TIMEOUT, "request_timeout").await;
}

#[tokio::test]
async fn a_panicking_handler_is_a_500_problem_that_reveals_nothing() {
    let base = serve_probe_routes(&[]).await;
    let response = post_empty(&base, "/panic").await;
    let problem = assert_problem(
        response,
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
    )
    .await;
    assert!(
        !problem.detail.contains("boom"),
        "the panic message stays in the log: {problem:?}"
    );
}
