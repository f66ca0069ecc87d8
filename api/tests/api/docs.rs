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

#[tokio::test]
async fn openapi_documents_every_account_route_with_security_and_deprecated_aliases() {
    let app = spawn_app().await;
    let doc = app.openapi().await;
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["api_key"]["name"], "X-API-Key");
    let operations = [
        ("post", "/api/v1/auth/register", false, false),
        ("post", "/api/v1/auth/login", false, false),
        ("post", "/api/v1/auth/token", false, false),
        ("post", "/api/v1/auth/refresh", false, false),
        ("post", "/api/v1/auth/token/refresh", false, true),
        ("post", "/api/v1/auth/token/verify", false, false),
        ("post", "/api/v1/auth/logout", false, false),
        ("get", "/api/v1/auth/me", true, false),
        ("post", "/api/v1/auth/change-password", true, false),
        ("get", "/api/v1/users/me", true, false),
        ("patch", "/api/v1/users/me", true, false),
        ("get", "/api/v1/users", true, false),
        ("get", "/api/v1/users/{id}", true, false),
        ("patch", "/api/v1/users/{id}", true, false),
        ("delete", "/api/v1/users/{id}", true, false),
        ("put", "/api/v1/users/{id}/role", true, false),
        ("get", "/api/v1/users/role/{role}", true, false),
        ("get", "/api/v1/users/get/{id}", true, true),
        ("put", "/api/v1/users/update/{id}", true, true),
        ("put", "/api/v1/users/update/{id}/role", true, true),
        ("delete", "/api/v1/users/delete/{id}", true, true),
        ("get", "/api/v1/api-keys", true, false),
        ("post", "/api/v1/api-keys", true, false),
        ("post", "/api/v1/api-keys/{id}/regenerate", true, false),
        ("delete", "/api/v1/api-keys/{id}", true, false),
    ];
    for (method, path, secured, deprecated) in operations {
        let operation = &doc["paths"][path][method];
        assert!(operation.is_object(), "{method} {path} is documented");
        assert_eq!(
            operation["security"].is_array(),
            secured,
            "{method} {path} security"
        );
        assert_eq!(
            operation["deprecated"].as_bool().unwrap_or(false),
            deprecated,
            "{method} {path} deprecated"
        );
        assert!(
            operation["responses"]
                .as_object()
                .is_some_and(|r| !r.is_empty()),
            "{method} {path} responses"
        );
    }
    let token = &doc["paths"]["/api/v1/auth/token"]["post"]["requestBody"]["content"];
    assert!(
        token["application/x-www-form-urlencoded"].is_object()
            && token["application/json"].is_object()
    );
}
