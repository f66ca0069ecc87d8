//! Files end to end on the local store: multipart uploads, listing,
//! metadata, downloads whole and by range with ETags, deletion of row and
//! object, names made safe, types from the bytes, limits, quotas, other
//! users' files, and a 100 MB upload through a separate `keel-api` process
//! whose memory stays flat.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use keel_shared::domain::Role;
use keel_testing::{self as testing, ChildGuard};
use reqwest::{
    StatusCode,
    header::{self, HeaderValue},
    multipart::{Form, Part},
};
use secrecy::ExposeSecret as _;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::{
    helpers::{
        API_BIN, TEST_SECRET, TestApp, assert_invalid, assert_problem, send_raw, spawn_app_with,
    },
    refusals::{
        MALFORMED_MULTIPART, NOT_FOUND, QUOTA_EXCEEDED, RANGE_NOT_SATISFIABLE,
        UNSUPPORTED_MEDIA_TYPE, assert_refused,
    },
    uploads::{
        assert_gone, delete_file, files_under, get_range, hex, items_of, part, upload, uploaded,
    },
};

/// How many files rows there are.
async fn rows(app: &TestApp) -> i64 {
    app.scalar("SELECT count(*) FROM files").await
}

const PNG_HEAD: &[u8] =
    b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0\x1f\x15\xc4\x89";

#[tokio::test]
async fn upload_list_describe_download_and_delete() {
    let app = spawn_app_with(&[]).await;
    let user = app.create_user(Role::User).await;
    let text = "first line, with a comma\nsecond line\n".repeat(50);
    let png = [PNG_HEAD, &[7u8; 100]].concat();
    let form = Form::new()
        // The client's types are lies; the stored ones come from the bytes.
        .part("file", part("notes.txt", text.as_bytes(), "image/png"))
        .part("file", part("pixel.png", &png, "text/plain"))
        .text("description", "two files")
        .text("tags", "alpha, beta,alpha");
    let items = items_of(upload(&app, &user, form).await).await;
    assert_eq!(items.len(), 2);
    let (notes, pixel) = (&items[0], &items[1]);
    assert_eq!(notes["name"], "notes.txt");
    assert_eq!(notes["size"], text.len());
    assert_eq!(notes["content_type"], "text/plain");
    assert_eq!(notes["sha256"], hex(&Sha256::digest(text.as_bytes())));
    assert_eq!(notes["description"], "two files");
    assert_eq!(notes["tags"], serde_json::json!(["alpha", "beta"]));
    assert_eq!(notes["owner_id"], user.user.id.to_string());
    assert_eq!(pixel["content_type"], "image/png");
    assert_eq!(pixel["size"], png.len());

    let list = app.get_json("/api/v1/files", &user.token).await;
    assert_eq!(list["total"], 2);
    let id = notes["id"].as_str().unwrap();
    let meta = app
        .get_json(&format!("/api/v1/files/{id}"), &user.token)
        .await;
    assert_eq!(&meta, notes);

    // Whole.
    let content = format!("/api/v1/files/{id}/content");
    let whole = app.get_as(&content, &user.token).await;
    assert_eq!(whole.status(), StatusCode::OK);
    let etag = format!("\"{}\"", notes["sha256"].as_str().unwrap());
    let headers = whole.headers().clone();
    assert_eq!(headers[header::ETAG], etag.as_str());
    assert_eq!(headers[header::ACCEPT_RANGES], "bytes");
    assert_eq!(headers[header::CONTENT_TYPE], "text/plain");
    assert!(
        headers[header::CONTENT_DISPOSITION]
            .to_str()
            .unwrap()
            .starts_with("attachment; filename=\"notes.txt\"")
    );
    assert_eq!(whole.bytes().await.unwrap(), text.as_bytes());

    // By range: a span, an open end, a suffix; past the end is 416.
    let ranged = |range: &'static str| get_range(&app, &user, &content, range);
    let span = ranged("bytes=6-10").await;
    assert_eq!(span.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        span.headers()[header::CONTENT_RANGE],
        format!("bytes 6-10/{}", text.len()).as_str()
    );
    assert_eq!(span.bytes().await.unwrap(), &text.as_bytes()[6..=10]);
    let open = ranged("bytes=1800-").await;
    assert_eq!(open.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(open.bytes().await.unwrap(), &text.as_bytes()[1800..]);
    let suffix = ranged("bytes=-12").await;
    assert_eq!(
        suffix.bytes().await.unwrap(),
        &text.as_bytes()[text.len() - 12..]
    );
    let past = ranged("bytes=999999-").await;
    assert_eq!(
        past.headers()[header::CONTENT_RANGE],
        format!("bytes */{}", text.len()).as_str()
    );
    assert_refused(past, RANGE_NOT_SATISFIABLE).await;

    // A current copy: 304, no body.
    let cached = app
        .client
        .get(app.url(&content))
        .bearer_auth(&user.token)
        .header(header::IF_NONE_MATCH, HeaderValue::from_str(&etag).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);

    // Delete: the row and the object go.
    let dir = app.config.storage.files_dir.clone();
    assert_eq!(files_under(&dir).len(), 2);
    let deleted = delete_file(&app, &user, id).await;
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    assert_gone(&app, &user, id).await;
    let left = files_under(&dir);
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].ends_with(pixel["id"].as_str().unwrap()));
}

#[tokio::test]
async fn ranges_follow_rfc_9110_on_the_local_store() {
    let app = spawn_app_with(&[]).await;
    let user = app.create_user(Role::User).await;
    crate::uploads::assert_ranges_follow_rfc_9110(&app, &user).await;
}

#[tokio::test]
async fn ranges_across_the_stores_read_chunks_come_back_exact() {
    let app = spawn_app_with(&[]).await;
    let user = app.create_user(Role::User).await;
    // Past two of the 256 KiB chunks the local store reads at a time.
    let bytes: Vec<u8> = (0..600 * 1024).map(|i: u32| (i % 251) as u8).collect();
    let id = uploaded(&app, &user, "chunks.bin", &bytes).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let content = format!("/api/v1/files/{id}/content");
    for (start, end) in [
        (0, 262_143),
        (262_000, 524_400),
        (524_288, bytes.len() - 1),
        (5, 5),
    ] {
        let ranged = get_range(&app, &user, &content, &format!("bytes={start}-{end}")).await;
        assert_eq!(ranged.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(
            ranged.bytes().await.unwrap(),
            &bytes[start..=end],
            "{start}-{end}"
        );
    }
    let whole = app
        .get_as(&content, &user.token)
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(whole, bytes.as_slice());
}

#[tokio::test]
async fn a_name_like_a_path_is_cut_to_its_last_part_and_stored_under_the_files_dir() {
    let app = spawn_app_with(&[]).await;
    let user = app.create_user(Role::User).await;
    let dir = app.config.storage.files_dir.clone();
    for raw in ["../../etc/passwd", "..\\..\\etc\\passwd", "/etc/passwd"] {
        let file = uploaded(&app, &user, raw, b"root:x:0:0:root:/root:/bin/bash\n").await;
        assert_eq!(file["name"], "passwd", "{raw}");
        let download = app
            .get_as(
                &format!("/api/v1/files/{}/content", file["id"].as_str().unwrap()),
                &user.token,
            )
            .await;
        assert!(
            download.headers()[header::CONTENT_DISPOSITION]
                .to_str()
                .unwrap()
                .contains("filename=\"passwd\"")
        );
    }
    // Every object is a `files/<uuid>` inside the directory; nothing escaped it.
    let stored = files_under(&dir);
    assert_eq!(stored.len(), 3);
    for path in &stored {
        let relative = path.strip_prefix(&dir).unwrap();
        assert_eq!(
            relative.parent(),
            Some(Path::new("files")),
            "{}",
            path.display()
        );
        assert!(uuid::Uuid::parse_str(&relative.file_name().unwrap().to_string_lossy()).is_ok());
    }
    assert!(!dir.join("../../etc/passwd").exists());
    assert!(!dir.join("../etc/passwd").exists());
}

#[tokio::test]
async fn other_users_files_answer_404_and_admins_see_everyones() {
    let app = spawn_app_with(&[]).await;
    let (alice, bob) = (
        app.create_user(Role::User).await,
        app.create_user(Role::User).await,
    );
    let admin = app.create_user(Role::Admin).await;
    let file = uploaded(&app, &alice, "alice.txt", b"alice's").await;
    uploaded(&app, &bob, "bob.txt", b"bob's").await;
    let id = file["id"].as_str().unwrap();
    assert_gone(&app, &bob, id).await;
    let delete = delete_file(&app, &bob, id).await;
    assert_refused(delete, NOT_FOUND).await;
    let bobs = app.get_json("/api/v1/files", &bob.token).await;
    assert_eq!(bobs["total"], 1);
    assert_eq!(bobs["items"][0]["name"], "bob.txt");
    let all = app.get_json("/api/v1/files", &admin.token).await;
    assert_eq!(all["total"], 2);
    // Still there for its owner.
    let mine = app
        .get_as(&format!("/api/v1/files/{id}/content"), &alice.token)
        .await;
    assert_eq!(mine.bytes().await.unwrap(), "alice's".as_bytes());
    // No token: 401.
    assert_eq!(
        app.get("/api/v1/files").await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn an_oversized_file_is_413_and_leaves_nothing_behind() {
    let app = spawn_app_with(&["--max-upload-bytes", "1000"]).await;
    let user = app.create_user(Role::User).await;
    let form = Form::new()
        .part("file", part("small.txt", b"fits", "text/plain"))
        .part(
            "file",
            part("big.bin", &[1u8; 1001], "application/octet-stream"),
        );
    let problem = assert_problem(
        upload(&app, &user, form).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "file_too_large",
    )
    .await;
    assert!(problem.detail.contains("1000"), "{problem:?}");
    assert_eq!(rows(&app).await, 0);
    assert_eq!(
        files_under(&app.config.storage.files_dir),
        Vec::<PathBuf>::new(),
        "no object left"
    );
    // Exactly the limit fits.
    uploaded(&app, &user, "edge.bin", &[1u8; 1000]).await;
}

#[tokio::test]
async fn the_quota_counts_every_file_of_the_user() {
    let app = spawn_app_with(&["--user-storage-quota-bytes", "1500"]).await;
    let user = app.create_user(Role::User).await;
    uploaded(&app, &user, "one.bin", &[1u8; 1000]).await;
    let form = Form::new().part(
        "file",
        part("two.bin", &[2u8; 1000], "application/octet-stream"),
    );
    assert_refused(upload(&app, &user, form).await, QUOTA_EXCEEDED).await;
    // Another user has a quota of their own.
    let other = app.create_user(Role::User).await;
    uploaded(&app, &other, "two.bin", &[2u8; 1000]).await;
    assert_eq!(files_under(&app.config.storage.files_dir).len(), 2);
}

#[tokio::test]
async fn two_uploads_that_each_fit_the_quota_but_not_together_keep_only_one() {
    let app = spawn_app_with(&["--user-storage-quota-bytes", "1500"]).await;
    let user = app.create_user(Role::User).await;
    // The first upload sends half its file, then waits: the quota it was
    // checked against at the start (1500 bytes free) is stale by the time
    // it ends, because the second one is kept meanwhile.
    let (first_half, rest) = tokio::sync::mpsc::channel::<Vec<u8>>(1);
    let body = reqwest::Body::wrap_stream(futures_util::stream::unfold(rest, |mut rx| async {
        let chunk = rx.recv().await?;
        Some((Ok::<_, std::io::Error>(chunk), rx))
    }));
    let slow = upload(
        &app,
        &user,
        Form::new().part(
            "file",
            Part::stream_with_length(body, 1000).file_name("slow.bin"),
        ),
    );
    let meanwhile = async {
        let first_half = first_half;
        first_half.send(vec![1u8; 500]).await.unwrap();
        // Time for the server to read the headers and check the quota.
        tokio::time::sleep(Duration::from_millis(500)).await;
        uploaded(&app, &user, "quick.bin", &[2u8; 1000]).await;
        first_half.send(vec![1u8; 500]).await.unwrap();
    };
    let (slow, ()) = tokio::join!(slow, meanwhile);

    let problem = assert_refused(slow, QUOTA_EXCEEDED).await;
    assert!(problem.detail.contains("500 bytes left"), "{problem:?}");
    let used: i64 = app.scalar("SELECT sum(size)::bigint FROM files").await;
    assert_eq!(used, 1000, "within the quota");
    assert_eq!(
        files_under(&app.config.storage.files_dir).len(),
        1,
        "the refused object is gone"
    );
}

#[tokio::test]
async fn malformed_forms_are_4xx_problems() {
    let app = spawn_app_with(&["--max-files-per-upload", "2"]).await;
    let user = app.create_user(Role::User).await;
    // No `file` part at all, or one that is a text field (no file name):
    // either way, no file.
    for (case, form) in [
        ("no file", Form::new().text("description", "nothing")),
        ("a text part", Form::new().text("file", "{}")),
    ] {
        let response = upload(&app, &user, form).await;
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{case}"
        );
        let problem = assert_invalid(response).await;
        assert_eq!(problem.errors.unwrap()[0].field, "file", "{case}");
    }
    let unknown = Form::new()
        .text("owner_id", "someone")
        .part("file", part("a", b"a", "text/plain"));
    assert_invalid(upload(&app, &user, unknown).await).await;
    let three = Form::new()
        .part("file", part("a", b"a", "text/plain"))
        .part("file", part("b", b"b", "text/plain"))
        .part("file", part("c", b"c", "text/plain"));
    assert_invalid(upload(&app, &user, three).await).await;
    let json = app
        .post_as(
            "/api/v1/files",
            &user.token,
            &serde_json::json!({"file": "x"}),
        )
        .await;
    assert_refused(json, UNSUPPORTED_MEDIA_TYPE).await;
    for (method, path) in [
        (reqwest::Method::POST, "/api/v1/files"),
        (reqwest::Method::PUT, "/api/v1/users/me/avatar"),
    ] {
        let request = || {
            app.client
                .request(method.clone(), app.url(path))
                .bearer_auth(&user.token)
        };
        let no_boundary = send_raw(request(), "multipart/form-data", "--X\r\n").await;
        assert_refused(no_boundary, MALFORMED_MULTIPART).await;
        let text = send_raw(request(), "text/plain", "hello").await;
        assert_refused(text, UNSUPPORTED_MEDIA_TYPE).await;
    }
    let cut = send_raw(
        app.client
            .post(app.url("/api/v1/files"))
            .bearer_auth(&user.token),
        "multipart/form-data; boundary=X",
        "--X\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\nabc",
    )
    .await;
    assert_refused(cut, MALFORMED_MULTIPART).await;
    assert_eq!(rows(&app).await, 0);
    assert!(files_under(&app.config.storage.files_dir).is_empty());
}

/// Resident memory of process `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

/// 100 MB of reproducible noise, in 1 MiB chunks, and its SHA-256.
fn noise(total: usize) -> (Vec<bytes::Bytes>, [u8; 32]) {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut hash = Sha256::new();
    let chunks = (0..total.div_ceil(1 << 20))
        .map(|i| {
            let len = (total - i * (1 << 20)).min(1 << 20);
            let chunk: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            hash.update(&chunk);
            bytes::Bytes::from(chunk)
        })
        .collect();
    (chunks, hash.finalize().into())
}

#[tokio::test]
async fn a_100_mb_file_streams_through_a_keel_api_process_whose_memory_stays_flat() {
    const SIZE: usize = 100_000_000;
    // The in-process app only makes the database and the user; the upload
    // goes to a separate keel-api process, so its memory is its own.
    let app = spawn_app_with(&[]).await;
    let user = app.create_user(Role::User).await;
    let port = testing::free_port().to_string();
    let files_dir = testing::test_files_dir();
    let api = ChildGuard::spawn({
        let mut command = testing::command(API_BIN);
        command.envs([
            ("DATABASE_URL", app.config.database.url.expose_secret()),
            ("REDIS_URL", testing::redis_url().as_str()),
            ("REDIS_PREFIX", testing::unique_redis_prefix().as_str()),
            ("SECRET_KEY", TEST_SECRET),
            ("HOST", "127.0.0.1"),
            ("PORT", port.as_str()),
            ("FILES_DIR", files_dir.as_str()),
            ("RATE_LIMIT_ENABLED", "false"),
        ]);
        command
    });
    let base = format!("http://127.0.0.1:{port}");
    let health = format!("{base}/api/v1/health");
    testing::wait_for_status(&health, 200, Duration::from_secs(30)).await;
    let client = reqwest::Client::new();
    // Warm up (pools, allocator) with a small upload, then take the baseline.
    let warm = client
        .post(format!("{base}/api/v1/files"))
        .bearer_auth(&user.token)
        .multipart(Form::new().part(
            "file",
            part("warm.bin", &[0u8; 1 << 20], "application/octet-stream"),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(warm.status(), StatusCode::CREATED);
    let pid = api.pid();
    let baseline = rss(pid);

    let (chunks, sha256) = noise(SIZE);
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let watcher = {
        let peak = std::sync::Arc::clone(&peak);
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss(pid), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(
        chunks.into_iter().map(Ok::<_, std::io::Error>),
    ));
    let started = Instant::now();
    let response = client
        .post(format!("{base}/api/v1/files"))
        .bearer_auth(&user.token)
        .multipart(Form::new().part(
            "file",
            Part::stream_with_length(body, SIZE as u64).file_name("big.bin"),
        ))
        .send()
        .await
        .unwrap();
    let upload_time = started.elapsed();
    assert_eq!(response.status(), StatusCode::CREATED);
    let file = response.json::<Value>().await.unwrap()["items"][0].clone();
    assert_eq!(file["size"], SIZE);
    assert_eq!(file["sha256"], hex(&sha256));
    let upload_peak = peak.swap(0, std::sync::atomic::Ordering::Relaxed);

    let started = Instant::now();
    let mut download = client
        .get(format!(
            "{base}/api/v1/files/{}/content",
            file["id"].as_str().unwrap()
        ))
        .bearer_auth(&user.token)
        .send()
        .await
        .unwrap();
    assert_eq!(download.status(), StatusCode::OK);
    let (mut received, mut hash) = (0usize, Sha256::new());
    while let Some(chunk) = download.chunk().await.unwrap() {
        received += chunk.len();
        hash.update(&chunk);
    }
    let download_time = started.elapsed();
    watcher.abort();
    let download_peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(received, SIZE);
    assert_eq!(<[u8; 32]>::from(hash.finalize()), sha256);

    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    let rate = |d: Duration| SIZE as f64 / 1e6 / d.as_secs_f64();
    // Figures for the record (not asserted: timing depends on the machine).
    eprintln!(
        "100 MB file through keel-api (local store): upload {:.0} MB/s ({:.2} s), download {:.0} MB/s ({:.2} s); \
         RSS baseline {:.1} MiB, peak during upload {:.1} MiB, during download {:.1} MiB",
        rate(upload_time),
        upload_time.as_secs_f64(),
        rate(download_time),
        download_time.as_secs_f64(),
        mib(baseline),
        mib(upload_peak),
        mib(download_peak),
    );
    // Flat: a file held in memory would add its 95 MiB; streaming adds at
    // most a few parts of 8 MiB.
    let grown = upload_peak.max(download_peak).saturating_sub(baseline);
    assert!(grown < 48 << 20, "RSS grew by {:.1} MiB", mib(grown));
    let _ = std::fs::remove_dir_all(&files_dir);
}
