//! `/openapi.json`, Swagger UI and Redoc, all served by the binary.

use reqwest::StatusCode;

use crate::helpers::spawn_app;

#[tokio::test]
async fn openapi_json_is_openapi_3_1_and_documents_the_health_routes() {
    let app = spawn_app().await;
    let doc = app.openapi().await;
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["title"], "Keel API");
    for path in [
        "/health",
        "/live",
        "/ready",
        "/metrics",
        "/api/v1/health",
        "/api/v1/health/db",
        "/api/v1/health/cache",
    ] {
        assert!(
            doc["paths"][path]["get"].is_object(),
            "{path} is documented"
        );
    }
    assert!(
        doc["components"]["schemas"]["Problem"].is_object(),
        "the problem schema is shared"
    );
}

#[tokio::test]
async fn swagger_ui_is_served_from_the_binary() {
    let app = spawn_app().await;
    let page = app.get("/docs/").await;
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "{html}");
    assert!(!html.contains("https://"), "no asset from a CDN: {html}");

    for asset in [
        "/docs/swagger-ui.css",
        "/docs/swagger-ui-bundle.js",
        "/docs/swagger-initializer.js",
    ] {
        assert_eq!(app.get(asset).await.status(), StatusCode::OK, "{asset}");
    }
    let initializer = app
        .get("/docs/swagger-initializer.js")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        initializer.contains("/openapi.json"),
        "Swagger UI loads our document: {initializer}"
    );
}

#[tokio::test]
async fn redoc_is_served_from_the_binary() {
    let app = spawn_app().await;
    let html = app.get("/redoc").await.text().await.unwrap();
    assert!(
        html.contains(r#"<redoc spec-url="/openapi.json">"#),
        "{html}"
    );
    assert!(!html.contains("https://"), "no asset from a CDN: {html}");
    let js = app.get("/redoc/redoc.standalone.js").await;
    assert_eq!(js.status(), StatusCode::OK);
    assert!(
        js.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    assert!(
        js.bytes().await.unwrap().len() > 500_000,
        "the whole bundle"
    );
}

#[tokio::test]
async fn docs_aliases_lead_to_the_docs() {
    let app = spawn_app().await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for (alias, target) in [("/api/docs", "/docs/"), ("/api/redoc", "/redoc")] {
        let response = client.get(app.url(alias)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::PERMANENT_REDIRECT, "{alias}");
        assert_eq!(response.headers()["location"], target, "{alias}");
    }
    // Followed, as a browser would.
    assert_eq!(app.get("/api/docs").await.status(), StatusCode::OK);
    assert_eq!(app.get("/api/redoc").await.status(), StatusCode::OK);
}
