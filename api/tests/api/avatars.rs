//! Avatars end to end: PNG, JPEG and WebP images set as the caller's
//! avatar and served to anyone; fakes, other types, oversized images and
//! files refused without a trace; replacement and removal deleting the old
//! file, as does a PATCH of `avatar_url` away from it; avatars held to the
//! storage quota; avatars kept apart from the files API both ways, and
//! deleting one there removing it as the avatar.

use keel_shared::domain::Role;
use reqwest::{
    Method, StatusCode, header,
    multipart::{Form, Part},
};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{
    helpers::{TestApp, TestUser, assert_problem, spawn_app, spawn_app_with},
    refusals::{MALFORMED_MULTIPART, NOT_FOUND, QUOTA_EXCEEDED, assert_refused},
    uploads::{assert_gone, delete_file, files_under, items_of, upload, uploaded},
};

const AVATAR: &str = "/api/v1/users/me/avatar";

// ---- Images, made here so each is exactly what a test says it is ----

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn adler32(bytes: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in bytes {
        a = (a + u32::from(byte)) % 65_521;
        b = (b + a) % 65_521;
    }
    (b << 16) | a
}

fn png_chunk(png: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    png.extend(u32::try_from(data.len()).unwrap().to_be_bytes());
    let start = png.len();
    png.extend(kind);
    png.extend(data);
    let crc = crc32(&png[start..]);
    png.extend(crc.to_be_bytes());
}

/// A valid 8-bit grayscale PNG, `width` × `height`, every pixel `shade`;
/// its rows in uncompressed ("stored") deflate blocks.
fn png(width: u32, height: u32, shade: u8) -> Vec<u8> {
    let mut rows = Vec::new();
    for _ in 0..height {
        rows.push(0); // filter: none
        rows.extend(std::iter::repeat_n(shade, width as usize));
    }
    let mut zlib = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = rows.chunks(65_535).collect();
    for (i, block) in blocks.iter().enumerate() {
        zlib.push(u8::from(i + 1 == blocks.len()));
        let len = u16::try_from(block.len()).unwrap();
        zlib.extend(len.to_le_bytes());
        zlib.extend((!len).to_le_bytes());
        zlib.extend(*block);
    }
    zlib.extend(adler32(&rows).to_be_bytes());
    let mut header = Vec::new();
    header.extend(width.to_be_bytes());
    header.extend(height.to_be_bytes());
    header.extend([8, 0, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png_chunk(&mut png, b"IHDR", &header);
    png_chunk(&mut png, b"IDAT", &zlib);
    png_chunk(&mut png, b"IEND", &[]);
    png
}

/// A 1 × 1 PNG whose header (with a right checksum) says `width` × `height`.
fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    let mut png = png(1, 1, 0);
    png[16..20].copy_from_slice(&width.to_be_bytes());
    png[20..24].copy_from_slice(&height.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    png
}

/// A baseline grayscale JPEG whose frame header says `width` × `height`;
/// its scan is one all-grey block, so 1 × 1 is a whole, valid image.
fn jpeg(width: u16, height: u16) -> Vec<u8> {
    let mut jpeg = vec![0xFF, 0xD8];
    // Quantisation table 0: all ones.
    jpeg.extend([0xFF, 0xDB, 0x00, 0x43, 0x00]);
    jpeg.extend([1; 64]);
    // Baseline frame: 8 bits, one component (id 1, 1×1 sampling, table 0).
    jpeg.extend([0xFF, 0xC0, 0x00, 0x0B, 0x08]);
    jpeg.extend(height.to_be_bytes());
    jpeg.extend(width.to_be_bytes());
    jpeg.extend([0x01, 0x01, 0x11, 0x00]);
    // DC and AC Huffman tables 0: one 1-bit code each, for symbol 0 (no
    // DC difference; end of block).
    for class in [0x00, 0x10] {
        jpeg.extend([0xFF, 0xC4, 0x00, 0x14, class, 1]);
        jpeg.extend([0; 15]);
        jpeg.push(0);
    }
    // The scan: bits `0` (DC) and `0` (EOB), padded with ones.
    jpeg.extend([0xFF, 0xDA, 0x00, 0x08, 0x01, 0x01, 0x00, 0x00, 0x3F, 0x00]);
    jpeg.extend([0x3F, 0xFF, 0xD9]);
    jpeg
}

/// A 1 × 1 lossy WebP (the one Modernizr tests browsers with).
const WEBP: &[u8] = b"RIFF\x22\0\0\0WEBPVP8 \x16\0\0\0\x30\x01\0\x9d\x01\x2a\x01\0\x01\0\x0e\xc0\xfe\x25\xa4\0\x03\x70\0\0\0\0";

const GIF: &[u8] = b"GIF89a\x01\0\x01\0\x80\0\0\xff\xff\xff\0\0\0!\xf9\x04\x01\0\0\0\0,\0\0\0\0\x01\0\x01\0\0\x02\x02D\x01\0;";

const PDF: &[u8] =
    b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n";

// ---- Requests ----

fn image(part: &str, name: &str, bytes: &[u8], claimed_type: &str) -> Form {
    Form::new().part(
        part.to_owned(),
        Part::bytes(bytes.to_vec())
            .file_name(name.to_owned())
            .mime_str(claimed_type)
            .unwrap(),
    )
}

async fn put_avatar(app: &TestApp, user: &TestUser, form: Form) -> reqwest::Response {
    app.client
        .put(app.url(AVATAR))
        .bearer_auth(&user.token)
        .multipart(form)
        .send()
        .await
        .unwrap()
}

/// Sets `bytes` as `user`'s avatar: the user's JSON.
async fn set_avatar(app: &TestApp, user: &TestUser, bytes: &[u8]) -> Value {
    let response = put_avatar(app, user, image("file", "me.png", bytes, "image/png")).await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

/// The path of an `avatar_url` (the app's base URL is not where the test
/// app listens), and the file id it names.
fn avatar_path(user: &Value) -> (String, Uuid) {
    let url = url::Url::parse(user["avatar_url"].as_str().expect("an avatar_url")).unwrap();
    let id = url.path().rsplit('/').next().unwrap().parse().unwrap();
    (url.path().to_owned(), id)
}

async fn avatar_url_of(app: &TestApp, user: &TestUser) -> Value {
    app.me(&user.token).await.json::<Value>().await.unwrap()["avatar_url"].clone()
}

async fn rows(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM files")
        .fetch_one(app.pool())
        .await
        .unwrap()
}

/// Objects in the app's local store.
fn objects(app: &TestApp) -> usize {
    files_under(&app.config.storage.files_dir).len()
}

// ---- Tests ----

#[tokio::test]
async fn a_png_avatar_is_served_to_anyone_with_its_exact_bytes() {
    let app = spawn_app().await;
    let user = app.create_user(Role::User).await;
    let bytes = png(3, 2, 0x80);
    // Neither the name nor the part's type counts; the bytes do.
    let response = put_avatar(
        &app,
        &user,
        image("file", "photo.txt", &bytes, "application/octet-stream"),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let me: Value = response.json().await.unwrap();
    assert_eq!(me["id"], user.user.id.to_string());
    let (path, id) = avatar_path(&me);
    assert_eq!(
        me["avatar_url"],
        format!("{}/api/v1/avatars/{id}", app.config.http.app_base_url),
        "under APP_BASE_URL"
    );
    assert_eq!(
        avatar_url_of(&app, &user).await,
        me["avatar_url"],
        "GET /users/me sees it"
    );
    let (purpose, owner, content_type): (String, Uuid, String) =
        sqlx::query_as("SELECT purpose, owner_id, content_type FROM files WHERE id = $1")
            .bind(id)
            .fetch_one(app.pool())
            .await
            .unwrap();
    assert_eq!(
        (purpose.as_str(), owner, content_type.as_str()),
        ("avatar", user.user.id, "image/png")
    );

    // No credential: an <img> sends none.
    let served = app.get(&path).await;
    assert_eq!(served.status(), StatusCode::OK);
    let headers = served.headers().clone();
    assert_eq!(headers[header::CONTENT_TYPE], "image/png");
    assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    assert_eq!(headers[header::CACHE_CONTROL], "public, max-age=3600");
    assert_eq!(headers["cross-origin-resource-policy"], "cross-origin");
    assert!(
        headers[header::CONTENT_DISPOSITION]
            .to_str()
            .unwrap()
            .starts_with("inline;"),
        "shown, not downloaded"
    );
    assert_eq!(served.bytes().await.unwrap().as_ref(), bytes.as_slice());
    let again = app
        .client
        .get(app.url(&path))
        .header(header::IF_NONE_MATCH, headers[header::ETAG].clone())
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
}

#[tokio::test]
async fn jpeg_and_webp_avatars_are_taken_under_either_part_name() {
    let app = spawn_app().await;
    let user = app.create_user(Role::User).await;
    for (part, bytes, content_type) in [
        ("avatar", jpeg(1, 1), "image/jpeg"),
        ("file", WEBP.to_vec(), "image/webp"),
        ("avatar", png(1, 1, 0), "image/png"),
    ] {
        let response = put_avatar(
            &app,
            &user,
            image(part, "me", &bytes, "application/octet-stream"),
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK, "{content_type}");
        let (path, _) = avatar_path(&response.json().await.unwrap());
        let served = app.get(&path).await;
        assert_eq!(served.status(), StatusCode::OK, "{content_type}");
        assert_eq!(served.headers()[header::CONTENT_TYPE], content_type);
        assert_eq!(served.bytes().await.unwrap().as_ref(), bytes.as_slice());
    }
    assert_eq!(rows(&app).await, 1, "each replaced the one before");
    assert_eq!(objects(&app), 1);
}

#[tokio::test]
async fn a_text_file_named_avatar_png_is_refused_and_the_avatar_stays() {
    let app = spawn_app().await;
    let user = app.create_user(Role::User).await;
    let before = set_avatar(&app, &user, &png(1, 1, 0)).await["avatar_url"].clone();
    let fake = image(
        "file",
        "avatar.png",
        b"this is not a picture, whatever its name says",
        "image/png",
    );
    let problem = assert_problem(
        put_avatar(&app, &user, fake).await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_image",
    )
    .await;
    assert!(problem.detail.contains("text/plain"), "{problem:?}");
    assert_eq!(avatar_url_of(&app, &user).await, before, "unchanged");
    assert_eq!(rows(&app).await, 1);
    assert_eq!(objects(&app), 1, "nothing of the fake left");
}

#[tokio::test]
async fn gifs_and_pdfs_are_refused_as_avatars() {
    let app = spawn_app().await;
    let user = app.create_user(Role::User).await;
    for (name, bytes, detected) in [
        ("a.gif", GIF, "image/gif"),
        ("a.png", PDF, "application/pdf"),
    ] {
        let problem = assert_problem(
            put_avatar(&app, &user, image("file", name, bytes, "image/png")).await,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_image",
        )
        .await;
        assert!(problem.detail.contains(detected), "{problem:?}");
    }
    assert_eq!(avatar_url_of(&app, &user).await, Value::Null);
    assert_eq!((rows(&app).await, objects(&app)), (0, 0));
}

#[tokio::test]
async fn images_over_4096_pixels_a_side_or_without_pixels_are_refused() {
    let app = spawn_app().await;
    let user = app.create_user(Role::User).await;
    let mut broken = png(1, 1, 0);
    broken.truncate(14); // the signature, and the header chunk cut short
    let cases = [
        (png_claiming(5000, 5000), "image_too_large", "5000 × 5000"),
        (
            png(4097, 1, 0),
            "image_too_large",
            "a valid PNG, one too wide",
        ),
        (jpeg(1, 4097), "image_too_large", "a JPEG, one too tall"),
        (png_claiming(0, 1), "invalid_image", "no pixels"),
        (broken, "invalid_image", "a header cut short"),
    ];
    for (bytes, code, why) in cases {
        let response = put_avatar(&app, &user, image("file", "a.png", &bytes, "image/png")).await;
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY, "{why}");
        assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, code).await;
    }
    assert_eq!((rows(&app).await, objects(&app)), (0, 0), "nothing kept");
    // The limit itself is allowed, on either side.
    set_avatar(&app, &user, &png(4096, 1, 0)).await;
    set_avatar(&app, &user, &png(1, 4096, 0)).await;
}

#[tokio::test]
async fn an_avatar_over_max_avatar_bytes_is_413_and_leaves_nothing_behind() {
    let app = spawn_app_with(&["--max-avatar-bytes", "1024"]).await;
    let user = app.create_user(Role::User).await;
    let big = png(40, 40, 0);
    assert!(big.len() > 1024);
    let problem = assert_problem(
        put_avatar(&app, &user, image("file", "big.png", &big, "image/png")).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "file_too_large",
    )
    .await;
    assert!(problem.detail.contains("1024"), "{problem:?}");
    assert_eq!(avatar_url_of(&app, &user).await, Value::Null);
    assert_eq!((rows(&app).await, objects(&app)), (0, 0));
    // A smaller one fits.
    let small = png(20, 20, 0);
    assert!(small.len() < 1024);
    set_avatar(&app, &user, &small).await;
}

#[tokio::test]
async fn replacing_an_avatar_deletes_the_old_file() {
    let app = spawn_app().await;
    let user = app.create_user(Role::User).await;
    let (old_path, old_id) = avatar_path(&set_avatar(&app, &user, &png(1, 1, 1)).await);
    let new_bytes = png(1, 1, 2);
    let (new_path, new_id) = avatar_path(&set_avatar(&app, &user, &new_bytes).await);
    assert_ne!(old_id, new_id, "a new image, a new URL");
    assert_refused(app.get(&old_path).await, NOT_FOUND).await;
    let old_row: Option<Uuid> = sqlx::query_scalar("SELECT id FROM files WHERE id = $1")
        .bind(old_id)
        .fetch_optional(app.pool())
        .await
        .unwrap();
    assert_eq!(old_row, None, "the old row is gone");
    assert_eq!((rows(&app).await, objects(&app)), (1, 1), "and its object");
    let served = app.get(&new_path).await;
    assert_eq!(served.status(), StatusCode::OK);
    assert_eq!(served.bytes().await.unwrap().as_ref(), new_bytes.as_slice());
}

#[tokio::test]
async fn deleting_the_avatar_clears_it_and_its_url_answers_404() {
    let app = spawn_app().await;
    let user = app.create_user(Role::User).await;
    let (path, _) = avatar_path(&set_avatar(&app, &user, &png(1, 1, 0)).await);
    for round in ["removes it", "again: nothing to remove"] {
        let response = app.send(Method::DELETE, AVATAR, &user.token, None).await;
        assert_eq!(response.status(), StatusCode::OK, "{round}");
        let me: Value = response.json().await.unwrap();
        assert_eq!(me["avatar_url"], Value::Null, "{round}");
    }
    assert_eq!(avatar_url_of(&app, &user).await, Value::Null);
    assert_refused(app.get(&path).await, NOT_FOUND).await;
    assert_eq!((rows(&app).await, objects(&app)), (0, 0));
}

#[tokio::test]
async fn another_users_avatar_file_is_404_under_files() {
    let app = spawn_app().await;
    let (alice, bob) = (
        app.create_user(Role::User).await,
        app.create_user(Role::User).await,
    );
    let (_, id) = avatar_path(&set_avatar(&app, &alice, &png(1, 1, 0)).await);
    let id = id.to_string();
    assert_gone(&app, &bob, &id).await;
    let response = delete_file(&app, &bob, &id).await;
    assert_refused(response, NOT_FOUND).await;
    assert_eq!(rows(&app).await, 1, "alice's avatar is untouched");
}

#[tokio::test]
async fn a_regular_upload_is_not_served_as_an_avatar() {
    let app = spawn_app().await;
    let user = app.create_user(Role::User).await;
    let form = image("file", "pic.png", &png(1, 1, 0), "image/png");
    let uploaded = items_of(upload(&app, &user, form).await).await;
    let id = uploaded[0]["id"].as_str().unwrap();
    for path in [
        format!("/api/v1/avatars/{id}"),
        format!("/api/v1/avatars/{}", Uuid::now_v7()),
        "/api/v1/avatars/not-a-uuid".to_owned(),
    ] {
        assert_refused(app.get(&path).await, NOT_FOUND).await;
    }
    // Not with the owner's credential either.
    assert_refused(
        app.get_as(&format!("/api/v1/avatars/{id}"), &user.token)
            .await,
        NOT_FOUND,
    )
    .await;
}

#[tokio::test]
async fn changing_the_avatar_needs_a_credential_and_an_api_key_acts_as_its_owner() {
    let app = spawn_app().await;
    let user = app.create_user(Role::User).await;
    let anonymous = app
        .client
        .put(app.url(AVATAR))
        .multipart(image("file", "a.png", &png(1, 1, 0), "image/png"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let anonymous = app.client.delete(app.url(AVATAR)).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(rows(&app).await, 0);

    let key = &app.api_key(&user, "avatar bot").await;
    let response = app
        .client
        .put(app.url(AVATAR))
        .header("x-api-key", key)
        .multipart(image("file", "a.png", &png(1, 1, 0), "image/png"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let me: Value = response.json().await.unwrap();
    assert_eq!(me["id"], user.user.id.to_string(), "the key's owner");
    let removed = app
        .client
        .delete(app.url(AVATAR))
        .header("x-api-key", key)
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status(), StatusCode::OK);
    assert_eq!((rows(&app).await, objects(&app)), (0, 0));
}

#[tokio::test]
async fn a_plain_url_still_works_and_replacing_it_never_deletes_someone_elses_avatar() {
    let app = spawn_app().await;
    let (alice, mallory) = (
        app.create_user(Role::User).await,
        app.create_user(Role::User).await,
    );
    let alices = set_avatar(&app, &alice, &png(1, 1, 0)).await["avatar_url"].clone();
    let (alices_path, _) = avatar_path(&json!({ "avatar_url": alices }));

    // PATCH takes any http(s) URL: a CDN's, or even alice's avatar.
    for url in [json!("https://cdn.example.com/m.png"), alices.clone()] {
        let response = app
            .send(
                Method::PATCH,
                "/api/v1/users/me",
                &mallory.token,
                Some(&json!({ "avatar_url": url })),
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.json::<Value>().await.unwrap()["avatar_url"], url);
    }
    // Replacing or removing that URL leaves alice's file alone.
    set_avatar(&app, &mallory, &png(1, 1, 9)).await;
    let response = app.send(Method::DELETE, AVATAR, &mallory.token, None).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(app.get(&alices_path).await.status(), StatusCode::OK);
    assert_eq!((rows(&app).await, objects(&app)), (1, 1));
}

async fn patch_me(app: &TestApp, user: &TestUser, body: &Value) -> Value {
    let response = app
        .send(Method::PATCH, "/api/v1/users/me", &user.token, Some(body))
        .await;
    assert_eq!(response.status(), StatusCode::OK, "{body}");
    response.json().await.unwrap()
}

#[tokio::test]
async fn an_avatar_replaced_by_a_plain_url_is_deleted_and_no_longer_served() {
    let app = spawn_app().await;
    let user = app.create_user(Role::User).await;
    let me = set_avatar(&app, &user, &png(1, 1, 0)).await;
    let (path, _) = avatar_path(&me);
    // Other fields, or the avatar's own URL again, leave it be.
    patch_me(&app, &user, &json!({"bio": "hello"})).await;
    patch_me(&app, &user, &json!({"avatar_url": me["avatar_url"]})).await;
    assert_eq!(app.get(&path).await.status(), StatusCode::OK);
    assert_eq!((rows(&app).await, objects(&app)), (1, 1));

    let me = patch_me(
        &app,
        &user,
        &json!({"avatar_url": "https://cdn.example.com/me.png"}),
    )
    .await;
    assert_eq!(me["avatar_url"], "https://cdn.example.com/me.png");
    assert_refused(app.get(&path).await, NOT_FOUND).await;
    assert_eq!(
        (rows(&app).await, objects(&app)),
        (0, 0),
        "the stored image is deleted, not left private in the quota"
    );
}

#[tokio::test]
async fn an_admin_setting_someones_avatar_url_deletes_their_stored_avatar() {
    let app = spawn_app().await;
    let (admin, user) = (
        app.create_user(Role::Admin).await,
        app.create_user(Role::User).await,
    );
    let (path, _) = avatar_path(&set_avatar(&app, &user, &png(1, 1, 0)).await);
    let response = app
        .send(
            Method::PATCH,
            &format!("/api/v1/users/{}", user.user.id),
            &admin.token,
            Some(&json!({"avatar_url": null})),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(avatar_url_of(&app, &user).await, Value::Null);
    assert_refused(app.get(&path).await, NOT_FOUND).await;
    assert_eq!((rows(&app).await, objects(&app)), (0, 0));
}

#[tokio::test]
async fn deleting_the_avatars_file_under_files_removes_the_avatar() {
    let app = spawn_app().await;
    let (admin, alice, bob) = (
        app.create_user(Role::Admin).await,
        app.create_user(Role::User).await,
        app.create_user(Role::User).await,
    );
    // By its owner, and by an admin: either way `avatar_url` is cleared,
    // never left naming a file that is gone.
    for (user, deleter) in [(&alice, &alice), (&bob, &admin)] {
        let (path, id) = avatar_path(&set_avatar(&app, user, &png(1, 1, 0)).await);
        let response = delete_file(&app, deleter, &id.to_string()).await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        assert_eq!(avatar_url_of(&app, user).await, Value::Null);
        assert_refused(app.get(&path).await, NOT_FOUND).await;
    }
    assert_eq!((rows(&app).await, objects(&app)), (0, 0));
}

#[tokio::test]
async fn avatars_count_against_the_storage_quota() {
    let first = png(1, 1, 0);
    let quota = 1000 + first.len();
    let app = spawn_app_with(&["--user-storage-quota-bytes", &quota.to_string()]).await;
    let user = app.create_user(Role::User).await;
    uploaded(&app, &user, "filler.bin", &[7u8; 1000]).await;
    // Exactly full, then replaced by one as large: the old image's bytes
    // are freed for the new one.
    set_avatar(&app, &user, &first).await;
    let (path, _) = avatar_path(&set_avatar(&app, &user, &png(1, 1, 1)).await);

    let larger = png(2, 2, 0);
    let refused = put_avatar(&app, &user, image("file", "me.png", &larger, "image/png")).await;
    let problem = assert_refused(refused, QUOTA_EXCEEDED).await;
    assert!(
        problem
            .detail
            .contains(&format!("{} bytes left", first.len())),
        "{problem:?}"
    );
    // Nothing changed: the avatar, its file and the filler stay.
    assert_eq!(app.get(&path).await.status(), StatusCode::OK);
    assert_eq!((rows(&app).await, objects(&app)), (2, 2));
}

#[tokio::test]
async fn a_form_without_exactly_one_image_is_refused_and_stores_nothing() {
    let app = spawn_app().await;
    let user = app.create_user(Role::User).await;
    let one = || {
        Part::bytes(png(1, 1, 0))
            .file_name("a.png")
            .mime_str("image/png")
            .unwrap()
    };
    let forms = [
        (Form::new().text("note", "hi"), "note", "another field"),
        (
            Form::new().part("file", one()).part("avatar", one()),
            "avatar",
            "two images",
        ),
    ];
    for (form, field, why) in forms {
        let problem = assert_problem(
            put_avatar(&app, &user, form).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
        assert_eq!(problem.errors.unwrap()[0].field, field, "{why}");
    }
    // An empty form is one the multipart parser already refuses (400).
    let empty = put_avatar(&app, &user, Form::new()).await;
    assert!(empty.status().is_client_error(), "{}", empty.status());
    assert_eq!(
        empty.headers()[header::CONTENT_TYPE],
        "application/problem+json"
    );
    let garbled = app
        .client
        .put(app.url(AVATAR))
        .bearer_auth(&user.token)
        .header(header::CONTENT_TYPE, "multipart/form-data; boundary=x")
        .body("--x\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nno end")
        .send()
        .await
        .unwrap();
    assert_refused(garbled, MALFORMED_MULTIPART).await;
    let json = app
        .send(
            Method::PUT,
            AVATAR,
            &user.token,
            Some(&json!({"file": "x"})),
        )
        .await;
    assert!(json.status().is_client_error(), "{}", json.status());
    assert_eq!(
        json.headers()[header::CONTENT_TYPE],
        "application/problem+json"
    );
    assert_eq!((rows(&app).await, objects(&app)), (0, 0));
    assert_eq!(avatar_url_of(&app, &user).await, Value::Null);
}
