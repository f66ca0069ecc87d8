//! `/openapi.json`, Swagger UI and Redoc, all served by the binary; the
//! document checked by an OpenAPI 3.1 validator, against the contract's
//! routes (`../shared/API.md`) and against its committed snapshot.

use std::{
    collections::{BTreeMap, BTreeSet},
    process::Command,
};

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::spawn_app;

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

/// The Python tools' directory, shared with the storage tests' moto server.
pub use keel_testing::tools_bin;

/// Runs the tool `program` (from [`tools_bin`]) with `args` and then the
/// document, written to a file; `Err` is the tool's output.
fn check_document(text: &str, program: &str, args: &[&str]) -> Result<String, String> {
    let tool = tools_bin().join(program);
    assert!(
        tool.exists(),
        "{} is missing: run deploy/local/test.sh, or `source deploy/local/services.sh && \
         ensure_python_tools`, or point KEEL_TOOLS_BIN at a directory that has it",
        tool.display()
    );
    let file = std::env::temp_dir().join(format!("keel-openapi-{}.json", uuid::Uuid::new_v4()));
    std::fs::write(&file, text).expect("the document is written");
    let output = Command::new(&tool).args(args).arg(&file).output();
    let _ = std::fs::remove_file(&file);
    let output = output.unwrap_or_else(|e| panic!("{} runs: {e}", tool.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

#[tokio::test]
async fn openapi_json_is_valid_openapi_3_1() {
    let app = spawn_app().await;
    let text = app.get("/openapi.json").await.text().await.unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");

    let verdict = check_document(
        &text,
        "openapi-spec-validator",
        &["--schema", "3.1", "--validation-errors", "all"],
    );
    if let Err(output) = verdict {
        panic!("openapi-spec-validator rejects /openapi.json:\n{output}");
    }
}

#[tokio::test]
async fn every_example_in_openapi_json_matches_its_schema() {
    let app = spawn_app().await;
    let text = app.get("/openapi.json").await.text().await.unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/api/openapi_examples.py");
    match check_document(&text, "python", &[script]) {
        Ok(output) => assert!(output.contains("examples match"), "{output}"),
        Err(output) => panic!("examples that do not match their schema:\n{output}"),
    }
}

/// The whole document, so a change to any route, schema or example shows in
/// review. The API's version is left out: a release is not an API change.
#[tokio::test]
async fn openapi_json_matches_its_snapshot() {
    let (one, two) = (spawn_app().await, spawn_app().await);
    let text = one.get("/openapi.json").await.text().await.unwrap();
    let again = two.get("/openapi.json").await.text().await.unwrap();
    assert!(
        text == again,
        "two builds of the document differ: something in it is not deterministic"
    );
    let mut doc: Value = serde_json::from_str(&text).unwrap();
    doc["info"]["version"] = "[version]".into();
    insta::with_settings!({
        description => "GET /openapi.json. If the change is intended, accept it: \
            INSTA_UPDATE=always cargo nextest run -p keel-api openapi_json_matches_its_snapshot \
            (or `cargo insta review`), and commit the snapshot.",
        omit_expression => true,
        sort_maps => true,
    }, {
        insta::assert_json_snapshot!("openapi", doc);
    });
}

/// Who may call an operation, as its `security` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Auth {
    Public,
    /// A bearer token only: API keys are refused.
    Session,
    /// A bearer token or an API key.
    Any,
    /// Anyone, or a bearer token or an API key (the answer differs).
    AnyoneOrAny,
}

#[tokio::test]
async fn openapi_documents_every_route_of_the_contract() {
    use Auth::{Any, AnyoneOrAny, Public, Session};
    let app = spawn_app().await;
    let doc = app.openapi().await;
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["api_key"]["name"], "X-API-Key");

    // (method, path, who, deprecated alias): every route of API.md that
    // Keel serves, one a line.
    #[rustfmt::skip]
    let routes = [
        // Auth, 2FA, email verification, password reset.
        ("post", "/api/v1/auth/register", Public, false),
        ("post", "/api/v1/auth/login", Public, false),
        ("post", "/api/v1/auth/token", Public, false),
        ("post", "/api/v1/auth/refresh", Public, false),
        ("post", "/api/v1/auth/token/refresh", Public, true),
        ("post", "/api/v1/auth/token/verify", Public, false),
        ("post", "/api/v1/auth/logout", Public, false),
        ("post", "/api/v1/auth/verify-2fa", Public, false),
        ("post", "/api/v1/auth/enable-2fa", Session, false),
        ("post", "/api/v1/auth/disable-2fa", Session, false),
        ("post", "/api/v1/auth/test-2fa", Session, false),
        ("post", "/api/v1/auth/totp/setup", Session, false),
        ("post", "/api/v1/auth/totp/confirm", Session, false),
        ("post", "/api/v1/auth/totp/disable", Session, false),
        ("get", "/api/v1/auth/oauth/providers", Public, false),
        ("get", "/api/v1/auth/oauth/{provider}/authorize", Public, false),
        ("get", "/api/v1/auth/oauth/{provider}/callback", Public, false),
        ("get", "/api/v1/auth/me", Any, false),
        ("post", "/api/v1/auth/verify-email", Public, false),
        ("get", "/api/v1/auth/verify-email", Public, false),
        ("post", "/api/v1/auth/resend-verification", AnyoneOrAny, false),
        ("post", "/api/v1/auth/password-reset/request", Public, false),
        ("post", "/api/v1/auth/password-reset/confirm", Public, false),
        ("post", "/api/v1/auth/change-password", Session, false),
        // Users, with the seed's aliases.
        ("get", "/api/v1/users/me", Any, false),
        ("patch", "/api/v1/users/me", Any, false),
        ("get", "/api/v1/users", Any, false),
        ("get", "/api/v1/users/{id}", Any, false),
        ("patch", "/api/v1/users/{id}", Any, false),
        ("put", "/api/v1/users/{id}/role", Any, false),
        ("delete", "/api/v1/users/{id}", Any, false),
        ("get", "/api/v1/users/role/{role}", Any, false),
        ("get", "/api/v1/users/get/{id}", Any, true),
        ("put", "/api/v1/users/update/{id}", Any, true),
        ("put", "/api/v1/users/update/{id}/role", Any, true),
        ("delete", "/api/v1/users/delete/{id}", Any, true),
        // Avatars: set by the user (or their key), shown to anyone.
        ("put", "/api/v1/users/me/avatar", Any, false),
        ("delete", "/api/v1/users/me/avatar", Any, false),
        ("get", "/api/v1/avatars/{id}", Public, false),
        // API keys: a key cannot mint keys.
        ("get", "/api/v1/api-keys", Any, false),
        ("post", "/api/v1/api-keys", Session, false),
        ("post", "/api/v1/api-keys/{id}/regenerate", Session, false),
        ("delete", "/api/v1/api-keys/{id}", Any, false),
        // Tasks, with the Celery-era aliases.
        ("post", "/api/v1/tasks", Any, false),
        ("post", "/api/v1/tasks/batch", Any, false),
        ("get", "/api/v1/tasks", Any, false),
        ("get", "/api/v1/tasks/{id}", Any, false),
        ("get", "/api/v1/tasks/{id}/status", Any, false),
        ("post", "/api/v1/tasks/{id}/cancel", Any, false),
        ("post", "/api/v1/tasks/{id}/retry", Any, false),
        ("get", "/api/v1/tasks/kinds", Any, false),
        ("post", "/api/v1/celery/test-task", Any, true),
        ("get", "/api/v1/celery/task-status/{task_id}", Any, true),
        // Files: a task's output file is downloaded through them too.
        ("post", "/api/v1/files", Any, false),
        ("get", "/api/v1/files", Any, false),
        ("get", "/api/v1/files/{id}", Any, false),
        ("delete", "/api/v1/files/{id}", Any, false),
        ("get", "/api/v1/files/{id}/content", Any, false),
        // Schedules (admin).
        ("get", "/api/v1/schedules", Any, false),
        ("post", "/api/v1/schedules", Any, false),
        ("get", "/api/v1/schedules/{id}", Any, false),
        ("patch", "/api/v1/schedules/{id}", Any, false),
        ("delete", "/api/v1/schedules/{id}", Any, false),
        ("post", "/api/v1/schedules/{id}/run-now", Any, false),
        // Operations (admin).
        ("get", "/api/v1/admin/queues", Any, false),
        ("get", "/api/v1/admin/workers", Any, false),
        ("get", "/api/v1/admin/stats", Any, false),
        ("post", "/api/v1/admin/queues/{queue}/pause", Any, false),
        ("post", "/api/v1/admin/queues/{queue}/resume", Any, false),
        ("post", "/api/v1/admin/tasks/purge", Any, false),
        // Health, from `/`.
        ("get", "/health", Public, false),
        ("get", "/live", Public, false),
        ("get", "/ready", Public, false),
        ("get", "/api/v1/health", Public, false),
        ("get", "/api/v1/health/db", Public, false),
        ("get", "/api/v1/health/cache", Public, false),
        // Docs.
        ("get", "/docs/", Public, false),
        ("get", "/redoc", Public, false),
        ("get", "/openapi.json", Public, false),
        ("get", "/api/docs", Public, true),
        ("get", "/api/redoc", Public, true),
        // WebSockets: the credential may also come as `?token=`.
        ("get", "/ws", Any, false),
        ("get", "/ws/{client_id}", Any, true),
        ("get", "/ws/chat/{room}", Any, false),
    ];
    for (method, path, auth, deprecated) in routes {
        let operation = &doc["paths"][path][method];
        assert!(operation.is_object(), "{method} {path} is documented");
        let expected = match auth {
            Public => Value::Null,
            Session => serde_json::json!([{"bearer": []}]),
            Any => serde_json::json!([{"bearer": []}, {"api_key": []}]),
            AnyoneOrAny => serde_json::json!([{}, {"bearer": []}, {"api_key": []}]),
        };
        assert_eq!(
            operation["security"], expected,
            "{method} {path}: who may call it"
        );
        assert_eq!(
            operation["deprecated"].as_bool().unwrap_or(false),
            deprecated,
            "{method} {path}: deprecated as an alias"
        );
    }

    for path in ["/ws", "/ws/{client_id}", "/ws/chat/{room}"] {
        let operation = &doc["paths"][path]["get"];
        assert!(
            operation["responses"]["101"].is_object(),
            "{path}: 101 Switching Protocols"
        );
        let token = operation["parameters"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == "token"));
        assert_eq!(
            token.map(|p| &p["in"]),
            Some(&Value::from("query")),
            "{path}: ?token="
        );
        let protocol = operation["description"].as_str().unwrap_or_default();
        for message in [
            "join_room",
            "room_message",
            "presence",
            "task_update",
            "pong",
            "1008",
        ] {
            assert!(protocol.contains(message), "{path} describes `{message}`");
        }
    }
    let token = &doc["paths"]["/api/v1/auth/token"]["post"]["requestBody"]["content"];
    assert!(
        token["application/x-www-form-urlencoded"].is_object()
            && token["application/json"].is_object(),
        "the token endpoint takes a form or JSON"
    );
}

/// The error statuses the HTTP stack itself gives, by what an operation has.
const JSON_BODY_ERRORS: [&str; 4] = ["400", "413", "415", "422"];
const RESOURCE_ERRORS: [&str; 2] = ["429", "503"];

#[tokio::test]
async fn every_operation_documents_its_errors_examples_and_ids() {
    let app = spawn_app().await;
    let doc = app.openapi().await;
    let resolve = |value: &Value| -> Value {
        let mut value = value.clone();
        while let Some(pointer) = value["$ref"].as_str() {
            value = doc
                .pointer(pointer.trim_start_matches('#'))
                .unwrap_or_else(|| panic!("{pointer} resolves"))
                .clone();
        }
        value
    };
    // An example beside the schema, or on the schema (an array's: on its items).
    let has_example = |media: &Value| {
        let schema = resolve(&media["schema"]);
        let schema = match schema["type"].as_str() {
            Some("array") => resolve(&schema["items"]),
            _ => schema,
        };
        [&media["example"], &media["examples"], &schema["example"]]
            .iter()
            .any(|e| !e.is_null())
    };

    let mut problems = Vec::new();
    let mut ids = BTreeMap::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let name = format!("{} {path}", method.to_uppercase());
            let mut fault = |what: String| problems.push(format!("{name}: {what}"));
            match operation["operationId"].as_str() {
                Some(id) => {
                    if let Some(other) = ids.insert(id.to_owned(), name.clone()) {
                        fault(format!("operationId `{id}` is also {other}'s"));
                    }
                }
                None => fault("no operationId".into()),
            }
            if operation["tags"].as_array().is_none_or(Vec::is_empty) {
                fault("no tag".into());
            }
            if operation["summary"].as_str().is_none_or(str::is_empty) {
                fault("no summary".into());
            }
            let responses: BTreeMap<&str, Value> = operation["responses"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(status, response)| (status.as_str(), resolve(response)))
                .collect();
            let statuses: BTreeSet<&str> = responses.keys().copied().collect();
            let mut expect = |wanted: &[&str], why: &str| {
                for status in wanted {
                    if !statuses.contains(status) {
                        fault(format!("no {status} ({why})"));
                    }
                }
            };
            let secured = operation["security"].is_array();
            let websocket = path.starts_with("/ws");
            // Browsers without a session are sent to the sign-in page instead.
            let dashboard = path.starts_with("/dashboard");
            if secured && !websocket && !dashboard {
                expect(&["401"], "it needs a credential");
            }
            let body = &operation["requestBody"]["content"];
            if body["application/json"].is_object() {
                expect(&JSON_BODY_ERRORS, "it takes a JSON body");
            }
            if path.starts_with("/api/v1/") && !path.starts_with("/api/v1/health") {
                expect(&RESOURCE_ERRORS, "rate limited, and needs the database");
            }
            for (content_type, media) in body.as_object().into_iter().flatten() {
                if !has_example(media) {
                    fault(format!("the {content_type} request body has no example"));
                }
            }
            for (status, response) in &responses {
                let content = response["content"].as_object();
                if status.starts_with('2') {
                    for (content_type, media) in content.into_iter().flatten() {
                        if content_type.ends_with("json") && !has_example(media) {
                            fault(format!("the {status} response has no example"));
                        }
                    }
                } else if status.starts_with(['4', '5']) {
                    // The health report's 503 is the report itself.
                    let is_report = response["content"]["application/json"]["schema"]["$ref"]
                        == "#/components/schemas/HealthReport";
                    let problem = &response["content"]["application/problem+json"]["schema"];
                    // The dashboard's error pages are HTML, for the browser showing them.
                    let is_page = dashboard && response["content"]["text/html"].is_object();
                    if problem["$ref"] != "#/components/schemas/Problem" && !is_report && !is_page {
                        fault(format!(
                            "the {status} response is not a problem+json `Problem`"
                        ));
                    }
                }
            }
            for parameter in operation["parameters"].as_array().into_iter().flatten() {
                let id = matches!(parameter["name"].as_str(), Some("id" | "task_id"));
                if parameter["in"] == "path" && id && parameter["schema"]["format"] != "uuid" {
                    fault(format!(
                        "path parameter {} is not a uuid",
                        parameter["name"]
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
