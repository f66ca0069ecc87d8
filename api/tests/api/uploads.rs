//! What the file tests share: building multipart forms, uploading and
//! deleting through `/api/v1/files`, and checking a file is gone.

use std::path::{Path, PathBuf};

use reqwest::{
    Response, StatusCode,
    multipart::{Form, Part},
};
use serde_json::Value;

use crate::{
    helpers::{TestApp, TestUser},
    refusals::{NOT_FOUND, RANGE_NOT_SATISFIABLE, assert_refused},
};

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

/// Uploads `bytes` as `name`, claimed to be nothing in particular.
pub async fn upload_one(app: &TestApp, user: &TestUser, name: &str, bytes: &[u8]) -> Response {
    let form = Form::new().part("file", part(name, bytes, "application/octet-stream"));
    upload(app, user, form).await
}

/// The stored files' JSON of an upload answered 201.
pub async fn items_of(response: Response) -> Vec<Value> {
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();
    body["items"].as_array().expect("the stored files").clone()
}

/// Uploads `bytes` as `name`: the stored file's JSON.
pub async fn uploaded(app: &TestApp, user: &TestUser, name: &str, bytes: &[u8]) -> Value {
    items_of(upload_one(app, user, name, bytes).await).await[0].clone()
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
    app.delete_as(&format!("/api/v1/files/{id}"), &user.token)
        .await
}

/// File `id`'s metadata and content both answer 404 to `user`.
pub async fn assert_gone(app: &TestApp, user: &TestUser, id: &str) {
    for path in [
        format!("/api/v1/files/{id}"),
        format!("/api/v1/files/{id}/content"),
    ] {
        let response = app.get_as(&path, &user.token).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        assert_refused(response, NOT_FOUND).await;
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

/// RFC 9110 §14 range requests against files of 0, 20 and 10,000 bytes on
/// `app`'s store: each case's status, `Content-Range` and bytes.
pub async fn assert_ranges_follow_rfc_9110(app: &TestApp, user: &TestUser) {
    let twenty: Vec<u8> = (0..20u8).collect();
    let big: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let mut ids = std::collections::HashMap::new();
    for (name, bytes) in [("empty", &[][..]), ("twenty", &twenty), ("big", &big)] {
        let id = uploaded(app, user, name, bytes).await["id"]
            .as_str()
            .unwrap()
            .to_owned();
        ids.insert(name, (id, bytes.to_vec()));
    }
    // (file, Range, status, Content-Range, the bytes as start..end); one case a line.
    type Case = (
        &'static str,
        &'static str,
        u16,
        &'static str,
        Option<(usize, usize)>,
    );
    #[rustfmt::skip]
    let cases: &[Case] = &[
        ("empty", "bytes=0-", 416, "bytes */0", None),
        ("empty", "bytes=0-0", 416, "bytes */0", None),
        ("empty", "bytes=0-10", 416, "bytes */0", None),
        ("empty", "bytes=-5", 416, "bytes */0", None),
        ("twenty", "bytes=-100", 206, "bytes 0-19/20", Some((0, 20))),
        ("twenty", "bytes=-0", 416, "bytes */20", None),
        ("twenty", "bytes=00-04", 206, "bytes 0-4/20", Some((0, 5))),
        ("twenty", "bytes=5-99999999999999999999999", 206, "bytes 5-19/20", Some((5, 20))),
        ("twenty", "bytes=20-", 416, "bytes */20", None),
        ("twenty", "bytes=5-1", 200, "", Some((0, 20))),
        ("twenty", "bytes=0-1,5-6", 200, "", Some((0, 20))),
        ("twenty", "items=0-1", 200, "", Some((0, 20))),
        ("big", "bytes=0-499", 206, "bytes 0-499/10000", Some((0, 500))),
        ("big", "bytes=-500", 206, "bytes 9500-9999/10000", Some((9500, 10_000))),
        ("big", "bytes=9500-", 206, "bytes 9500-9999/10000", Some((9500, 10_000))),
        ("big", "bytes=9999-9999", 206, "bytes 9999-9999/10000", Some((9999, 10_000))),
    ];
    for (file, range, status, content_range, slice) in cases {
        let (id, bytes) = &ids[file];
        let path = format!("/api/v1/files/{id}/content");
        let response = get_range(app, user, &path, range).await;
        let what = format!("{range} on the {file} file");
        assert_eq!(response.status().as_u16(), *status, "{what}");
        let got_range = response
            .headers()
            .get(reqwest::header::CONTENT_RANGE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        assert_eq!(&got_range, content_range, "{what}");
        if *status == 416 {
            assert_refused(response, RANGE_NOT_SATISFIABLE).await;
            continue;
        }
        let (start, end) = slice.unwrap();
        assert_eq!(
            response.bytes().await.unwrap(),
            &bytes[start..end],
            "{what}"
        );
    }
}
