//! Request ids, security headers and CORS on every response.

use reqwest::StatusCode;

use crate::helpers::{spawn_app, spawn_app_with};

/// The value of `response`'s header `name`, which must be there.
fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response.headers()[name].to_str().unwrap()
}

/// Asserts `response` carries no CORS grant.
fn assert_no_cors(response: &reqwest::Response) {
    let allowed = response.headers().get("access-control-allow-origin");
    assert!(allowed.is_none(), "{allowed:?}");
}

#[tokio::test]
async fn a_request_id_is_generated_when_the_client_sends_none() {
    let app = spawn_app().await;
    let first = app.live().await;
    let second = app.live().await;
    let id = |r: &reqwest::Response| {
        r.headers()
            .get("x-request-id")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned()
    };
    let (a, b) = (id(&first), id(&second));
    assert!(uuid::Uuid::parse_str(&a).is_ok(), "a UUID: {a}");
    assert_ne!(a, b, "each request gets its own");
}

#[tokio::test]
async fn a_client_request_id_is_echoed_on_success_and_on_error() {
    let app = spawn_app().await;
    for path in ["/live", "/nowhere"] {
        let response = app.get_with(path, "x-request-id", "trace-abc.123").await;
        assert_eq!(
            response.headers()["x-request-id"],
            "trace-abc.123",
            "{path}"
        );
        if response.status() == StatusCode::NOT_FOUND {
            let body: serde_json::Value = response.json().await.unwrap();
            assert_eq!(body["request_id"], "trace-abc.123");
        }
    }
}

#[tokio::test]
async fn an_unreasonable_client_request_id_is_replaced() {
    let app = spawn_app().await;
    let long = "a".repeat(500);
    for bad in [long.as_str(), "has spaces in it"] {
        let response = app.get_with("/live", "x-request-id", bad).await;
        let echoed = response.headers()["x-request-id"].to_str().unwrap();
        assert_ne!(echoed, bad);
        assert!(
            uuid::Uuid::parse_str(echoed).is_ok(),
            "replaced by a generated id: {echoed}"
        );
    }
}

#[tokio::test]
async fn responses_carry_security_headers() {
    let app = spawn_app().await;
    for path in ["/live", "/nowhere"] {
        let response = app.get(path).await;
        let headers = response.headers();
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(headers["x-frame-options"], "DENY", "{path}");
        assert_eq!(headers["referrer-policy"], "no-referrer", "{path}");
        assert!(
            headers["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("default-src 'none'"),
            "{path}"
        );
        assert!(
            headers.get("strict-transport-security").is_none(),
            "HSTS only in production"
        );
    }
}

#[tokio::test]
async fn cors_allows_only_the_configured_origins() {
    let app = spawn_app_with(&[
        "--allowed-origins",
        "https://app.example, http://localhost:3000",
    ])
    .await;
    let preflight = |origin: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/api/v1/health"))
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
            .send()
    };

    let allowed = preflight("https://app.example").await.unwrap();
    let origin = header(&allowed, "access-control-allow-origin");
    assert_eq!(origin, "https://app.example");
    let methods = header(&allowed, "access-control-allow-methods");
    assert!(
        methods.contains("POST") && methods.contains("DELETE"),
        "{methods}"
    );

    let refused = preflight("https://evil.example").await.unwrap();
    assert_no_cors(&refused);

    let simple = app
        .get_with("/live", "origin", "http://localhost:3000")
        .await;
    let origin = header(&simple, "access-control-allow-origin");
    assert_eq!(origin, "http://localhost:3000");
    let exposed = header(&simple, "access-control-expose-headers");
    assert!(exposed.contains("x-request-id"), "{exposed}");
}

#[tokio::test]
async fn without_allowed_origins_no_cors_headers_are_sent() {
    let app = spawn_app().await;
    let response = app.get_with("/live", "origin", "https://app.example").await;
    assert_no_cors(&response);
}
