//! Files on an S3-compatible store (moto in server mode, started per test):
//! a multipart upload of a large file beside a small one, listing,
//! metadata, downloads whole and by range, deletion of row and object, two
//! API replicas sharing one bucket, and the store down answering 503.

use keel_shared::domain::Role;
use keel_testing::MotoServer;
use rand::RngCore as _;
use reqwest::{
    StatusCode,
    header::{self},
    multipart::{Form, Part},
};
use sha2::{Digest as _, Sha256};

use crate::{
    helpers::{TestApp, spawn_app_with},
    refusals::{SERVICE_UNAVAILABLE, assert_refused},
    uploads::{
        assert_gone, delete_file, get_range, hex, items_of, part, upload, upload_one, uploaded,
    },
};

/// A file part whose claimed type says nothing.
fn octets(name: &str, bytes: &[u8]) -> Part {
    part(name, bytes, "application/octet-stream")
}

/// Larger than the store's 8 MiB part, so the upload is a multipart one.
const LARGE: usize = 10 * 1024 * 1024 + 12_345;

fn random_bytes(n: usize) -> Vec<u8> {
    let mut bytes = vec![0; n];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

/// An app (with its own database) whose files are in `moto`'s bucket.
async fn spawn_on(moto: &MotoServer) -> TestApp {
    let flags = moto.flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    spawn_app_with(&flags).await
}

/// Nothing was written to the local directory: the bytes went to S3.
fn assert_local_dir_unused(app: &TestApp) {
    let dir = &app.config.storage.files_dir;
    let entries = std::fs::read_dir(dir).map_or(0, Iterator::count);
    assert_eq!(entries, 0, "{} is unused with S3", dir.display());
}

#[tokio::test]
async fn ranges_follow_rfc_9110_on_s3() {
    let moto = MotoServer::start().await;
    let app = spawn_on(&moto).await;
    let user = app.create_user(Role::User).await;
    crate::uploads::assert_ranges_follow_rfc_9110(&app, &user).await;
}

#[tokio::test]
async fn files_are_uploaded_listed_downloaded_and_deleted_on_s3() {
    let moto = MotoServer::start().await;
    let app = spawn_on(&moto).await;
    let user = app.create_user(Role::User).await;
    let small = b"a small text file\n".repeat(10);
    let large = random_bytes(LARGE);

    let response = upload(
        &app,
        &user,
        Form::new()
            .part("file", octets("small.txt", &small))
            .part("file", octets("large.bin", &large)),
    )
    .await;
    let items = items_of(response).await;
    assert_eq!(items.len(), 2);
    let (small_file, large_file) = (&items[0], &items[1]);
    assert_eq!(small_file["size"], small.len());
    assert_eq!(small_file["content_type"], "text/plain");
    assert_eq!(large_file["size"], LARGE);
    assert_eq!(large_file["sha256"], hex(&Sha256::digest(&large)));
    let ids: Vec<&str> = items.iter().map(|i| i["id"].as_str().unwrap()).collect();
    let mut keys = moto.keys("files/").await;
    keys.sort_unstable();
    let mut expected: Vec<String> = ids.iter().map(|id| format!("files/{id}")).collect();
    expected.sort_unstable();
    assert_eq!(keys, expected, "one object per file, under files/");
    assert_local_dir_unused(&app);

    let list = app.get_json("/api/v1/files", &user.token).await;
    assert_eq!(list["total"], 2);
    let meta = app
        .get_json(&format!("/api/v1/files/{}", ids[1]), &user.token)
        .await;
    assert_eq!(&meta, large_file);

    // Whole: the same bytes, streamed back from the bucket.
    let content = format!("/api/v1/files/{}/content", ids[1]);
    let whole = app.get_as(&content, &user.token).await;
    assert_eq!(whole.status(), StatusCode::OK);
    assert_eq!(
        whole.headers()[header::CONTENT_LENGTH],
        LARGE.to_string().as_str()
    );
    let body = whole.bytes().await.unwrap();
    assert_eq!(hex(&Sha256::digest(&body)), large_file["sha256"]);

    // A range across the boundary of the first two parts (8 MiB).
    let (start, end) = (8 * 1024 * 1024 - 100, 8 * 1024 * 1024 + 99);
    let ranged = get_range(&app, &user, &content, &format!("bytes={start}-{end}")).await;
    assert_eq!(ranged.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        ranged.headers()[header::CONTENT_RANGE],
        format!("bytes {start}-{end}/{LARGE}").as_str()
    );
    assert_eq!(ranged.bytes().await.unwrap(), &large[start..=end]);
    let small_body = app
        .get_as(&format!("/api/v1/files/{}/content", ids[0]), &user.token)
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(small_body, small);

    // Delete: the row, then the object.
    let deleted = delete_file(&app, &user, ids[1]).await;
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    assert_gone(&app, &user, ids[1]).await;
    assert_eq!(
        moto.keys("files/").await,
        [format!("files/{}", ids[0])],
        "the deleted file's object is gone from the bucket"
    );
}

#[tokio::test]
async fn two_replicas_share_one_bucket() {
    let moto = MotoServer::start().await;
    let first = spawn_on(&moto).await;
    let second = first.spawn_replica().await;
    let user = first.create_user(Role::User).await;
    let bytes = random_bytes(64 * 1024);

    let file = uploaded(&first, &user, "shared.bin", &bytes).await;
    let id = file["id"].as_str().unwrap();

    let downloaded = second
        .get_as(&format!("/api/v1/files/{id}/content"), &user.token)
        .await;
    assert_eq!(downloaded.status(), StatusCode::OK);
    assert_eq!(downloaded.bytes().await.unwrap(), bytes);
    let deleted = delete_file(&second, &user, id).await;
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    assert!(moto.keys("files/").await.is_empty());
    assert_local_dir_unused(&first);
}

#[tokio::test]
async fn the_store_down_answers_503_not_500() {
    let mut moto = MotoServer::start().await;
    let app = spawn_on(&moto).await;
    let user = app.create_user(Role::User).await;
    let kept = uploaded(&app, &user, "kept.txt", b"kept while the store was up").await;
    let kept = kept["id"].as_str().unwrap();

    moto.stop();
    for (name, bytes) in [
        ("small.txt", b"written while the store is down".to_vec()),
        ("large.bin", random_bytes(LARGE)),
    ] {
        let response = upload_one(&app, &user, name, &bytes).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "{name}");
        assert_refused(response, SERVICE_UNAVAILABLE).await;
    }
    let content = format!("/api/v1/files/{kept}/content");
    assert_refused(app.get_as(&content, &user.token).await, SERVICE_UNAVAILABLE).await;
    let list = app.get_json("/api/v1/files", &user.token).await;
    assert_eq!(list["total"], 1, "a failed upload records no row");
}

#[tokio::test]
async fn moto_checks_signatures_so_a_wrong_secret_is_refused() {
    // The other tests pass only if moto accepted every signature; this one
    // shows it does check them.
    let moto = MotoServer::start().await;
    let mut flags = moto.flags();
    let secret = flags
        .iter()
        .position(|f| f == "--s3-secret-access-key")
        .unwrap()
        + 1;
    flags[secret] = "not-the-secret-key".to_owned();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let app = spawn_app_with(&flags).await;
    let user = app.create_user(Role::User).await;
    let response = upload_one(&app, &user, "refused.txt", b"signed with the wrong key").await;
    assert_refused(response, SERVICE_UNAVAILABLE).await;
    assert!(moto.keys("").await.is_empty());
}

#[tokio::test]
async fn an_upload_cut_off_by_the_request_timeout_leaves_no_open_multipart_upload() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let moto = MotoServer::start().await;
    let mut flags = moto.flags();
    flags.extend(["--request-timeout-seconds", "2"].map(str::to_owned));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let app = spawn_app_with(&flags).await;
    let user = app.create_user(Role::User).await;

    // More than one part's worth of a longer file, then silence: the
    // store has begun a multipart upload when the timeout drops the handler.
    let head = "--cut\r\nContent-Disposition: form-data; name=\"file\"; filename=\"cut.bin\"\r\n\
                Content-Type: application/octet-stream\r\n\r\n";
    let request = format!(
        "POST /api/v1/files HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n\
         Content-Type: multipart/form-data; boundary=cut\r\nContent-Length: {}\r\n\r\n{head}",
        user.token,
        head.len() + 2 * LARGE
    );
    let address = app.address.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.write_all(&random_bytes(LARGE)).await.unwrap();
    let mut answer = vec![0; 1024];
    let n = stream.read(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while moto.open_multipart_uploads().await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dropped upload's multipart upload was never aborted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(moto.keys("").await.is_empty());
}
