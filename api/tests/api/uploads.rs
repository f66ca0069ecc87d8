//! What the file tests share: building multipart forms, uploading and
//! deleting through `/api/v1/files`, and checking a file is gone.

use std::path::{Path, PathBuf};

use reqwest::{
    Method, Response, StatusCode,
    multipart::{Form, Part},
};
use serde_json::Value;

use crate::helpers::{TestApp, TestUser, assert_problem};

/// `bytes` as lower-case hex, as the API shows a SHA-256.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A file part named `name`, its `Content-Type` claimed to be `claimed_type`
/// (which the API must not believe).
pub fn part(name: &str, bytes: &[u8], claimed_type: &str) -> Part {
    Part::bytes(bytes.to_vec())
        .file_name(name.to_owned())
        .mime_str(claimed_type)
        .unwrap()
}

/// `POST /api/v1/files` with `form`, as `user`.
pub async fn upload(app: &TestApp, user: &TestUser, form: Form) -> Response {
    app.client
        .post(app.url("/api/v1/files"))
        .bearer_auth(&user.token)
        .multipart(form)
        .send()
        .await
        .unwrap()
}

/// Uploads `bytes` as `name`: the stored file's JSON.
pub async fn uploaded(app: &TestApp, user: &TestUser, name: &str, bytes: &[u8]) -> Value {
    let form = Form::new().part("file", part(name, bytes, "application/octet-stream"));
    let response = upload(app, user, form).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    response.json::<Value>().await.unwrap()["items"][0].clone()
}

/// `GET path` as `user` with `Range: {range}` (e.g. `bytes=0-99`).
pub async fn get_range(app: &TestApp, user: &TestUser, path: &str, range: &str) -> Response {
    app.client
        .get(app.url(path))
        .bearer_auth(&user.token)
        .header(reqwest::header::RANGE, range)
        .send()
        .await
        .unwrap()
}

/// `DELETE /api/v1/files/{id}`, as `user`.
pub async fn delete_file(app: &TestApp, user: &TestUser, id: &str) -> Response {
    app.send(
        Method::DELETE,
        &format!("/api/v1/files/{id}"),
        &user.token,
        None,
    )
    .await
}

/// File `id`'s metadata and content both answer 404 to `user`.
pub async fn assert_gone(app: &TestApp, user: &TestUser, id: &str) {
    for path in [
        format!("/api/v1/files/{id}"),
        format!("/api/v1/files/{id}/content"),
    ] {
        assert_problem(
            app.get_as(&path, &user.token).await,
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
    }
}

/// Every regular file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_under(&path));
        } else {
            found.push(path);
        }
    }
    found
}
