//! Resource limits against one `keel-api` process, whose resident memory
//! is read from `/proc/<pid>/status` before and after: oversized bodies
//! (413), deeply nested JSON (400, never a 5xx or a crash), page sizes
//! past the maximum (422 naming `size`; no page is ever larger), the
//! per-user cap on unfinished tasks (429), and the WebSocket caps on
//! message size (1009) and rate (`rate_limited`, then 1008). The same
//! abuse runs in rounds: memory may grow once (allocator arenas, buffers)
//! but not again, which is what "bounded" means here. Bodies sent slowly
//! share one budget of held bytes (503 past it). The figures are printed.

use futures_util::{SinkExt as _, StreamExt as _, stream};
use keel_shared::domain::Role;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    time::Instant,
};
use tokio_tungstenite::tungstenite::{Message, protocol::frame::coding::CloseCode};

use crate::{
    helpers::{TestApp, TestUser, assert_problem, spawn_app},
    ws::{self, ApiProcess, WAIT},
};

/// The process's default body limit (`MAX_BODY_BYTES`).
const BODY_LIMIT: usize = 1024 * 1024;
/// The cap on unfinished tasks the process is started with.
const TASK_CAP: usize = 5;
/// Rounds of abuse, how much resident memory they may add over the
/// warmed-up process, and how much the last may add over the rounds before.
const ROUNDS: usize = 3;
const MAX_GROWTH_MIB: f64 = 64.0;
const MAX_LAST_ROUND_GROWTH_MIB: f64 = 16.0;

/// Resident memory of `pid`, in MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the process lives");
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmRSS line");
    kib / 1024.0
}

/// Resident memory of `pid` once a burst is over: the lowest reading over
/// two seconds. The allocator hands freed pages back after a delay (a
/// second for mimalloc), so a reading taken right after a burst counts
/// memory already free; what a leak holds stays in the floor.
async fn settled_rss_mib(pid: u32) -> f64 {
    let mut lowest = rss_mib(pid);
    for _ in 0..20 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        lowest = lowest.min(rss_mib(pid));
    }
    lowest
}

/// The answer to a hand-written HTTP/1.1 request: status, content type
/// and body.
#[derive(Debug)]
struct RawAnswer {
    status: u16,
    content_type: String,
    body: Value,
}

/// A raw request: its method and path, content type, and a body of `head`
/// followed by `filler_bytes` spaces.
struct RawRequest<'a> {
    method: &'a str,
    path: &'a str,
    content_type: &'a str,
    head: &'a [u8],
    filler_bytes: usize,
    /// Chunked, else after a `Content-Length` of the whole body.
    chunked: bool,
}

/// Writes a request head, then up to `body_bytes` of body (chunked when
/// `chunked`, else after a `Content-Length` of that size), while reading
/// the answer; stops writing once the server has answered or hung up.
async fn raw_post(
    address: &str,
    path: &str,
    token: &str,
    body_bytes: usize,
    chunked: bool,
) -> RawAnswer {
    let request = RawRequest {
        method: "POST",
        path,
        content_type: "application/json",
        head: b"",
        filler_bytes: body_bytes,
        chunked,
    };
    raw_request(address, token, &request).await
}

/// Sends `request` as its bytes go, while reading the answer; stops
/// writing once the server has answered or hung up.
async fn raw_request(address: &str, token: &str, request: &RawRequest<'_>) -> RawAnswer {
    let path = request.path;
    let chunked = request.chunked;
    let body_bytes = request.head.len() + request.filler_bytes;
    let stream = TcpStream::connect(address).await.expect("connects");
    let (mut read, mut write) = stream.into_split();
    let length = if chunked {
        "Transfer-Encoding: chunked".to_owned()
    } else {
        format!("Content-Length: {body_bytes}")
    };
    let head = format!(
        "{} {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: {}\r\n{length}\r\nConnection: close\r\n\r\n",
        request.method, request.content_type
    );
    write.write_all(head.as_bytes()).await.expect("head sent");
    let body_head = request.head.to_vec();
    let writer = tokio::spawn(async move {
        let filler = vec![b' '; 64 * 1024];
        let mut pieces =
            std::iter::once(body_head.as_slice()).chain(std::iter::repeat(filler.as_slice()));
        let mut sent = 0;
        while sent < body_bytes {
            let piece = pieces.next().expect("endless");
            let n = piece.len().min(body_bytes - sent);
            if n == 0 {
                continue;
            }
            let framed = if chunked {
                let mut framed = format!("{n:x}\r\n").into_bytes();
                framed.extend_from_slice(&piece[..n]);
                framed.extend_from_slice(b"\r\n");
                framed
            } else {
                piece[..n].to_vec()
            };
            if write.write_all(&framed).await.is_err() {
                return;
            }
            sent += n;
        }
        if chunked {
            let _ = write.write_all(b"0\r\n\r\n").await;
        }
    });
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, read.read_to_end(&mut answer)).await;
    writer.abort();
    parse_answer(path, &answer)
}

/// A hand-written request's answer, read from its bytes.
fn parse_answer(path: &str, answer: &[u8]) -> RawAnswer {
    let text = String::from_utf8_lossy(answer);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("an HTTP answer to {path}, not {text:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a status line: {head}"));
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_default();
    // The answer is small and, with `Connection: close`, unchunked or one chunk.
    let json = body.find('{').map_or("", |start| {
        &body[start..=body.rfind('}').unwrap_or(body.len() - 1)]
    });
    RawAnswer {
        status,
        content_type,
        body: serde_json::from_str(json).unwrap_or(Value::Null),
    }
}

fn assert_raw_problem(answer: &RawAnswer, status: u16, code: &str, what: &str) {
    assert_eq!(answer.status, status, "{what}: {answer:?}");
    assert_eq!(
        answer.content_type, "application/problem+json",
        "{what}: {answer:?}"
    );
    assert_eq!(answer.body["code"], code, "{what}: {answer:?}");
}

/// What ordinary use allocates once: pools, caches, a task, a page, a socket.
async fn warm_up(app: &TestApp, api: &ApiProcess, user: &TestUser) {
    for _ in 0..20 {
        let response = app
            .client
            .get(format!("{}/api/v1/tasks?size=100", api.base))
            .bearer_auth(&user.token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    let mut socket = ws::connect(&api.ws("/ws/chat/warm", &user.token)).await;
    ws::round_trip(&mut socket).await;
    let _ = socket.close(None).await;
}

/// 500 bodies declared over the limit (the server answers before they
/// come) and 40 streamed past it without a length (it must stop reading
/// at the limit), to an authenticated JSON endpoint and a public one.
async fn oversized_bodies(api: &ApiProcess, user: &TestUser) {
    let address = api.base.trim_start_matches("http://").to_owned();
    let declared = stream::iter(0..500).map(|i| {
        let (address, token) = (address.clone(), user.token.clone());
        async move {
            let path = if i % 2 == 0 {
                "/api/v1/tasks"
            } else {
                "/api/v1/auth/login"
            };
            let answer = raw_post(&address, path, &token, 64 * BODY_LIMIT, false).await;
            assert_raw_problem(&answer, 413, "payload_too_large", "a 64 MiB Content-Length");
        }
    });
    declared.buffer_unordered(16).collect::<Vec<()>>().await;
    let streamed = stream::iter(0..40).map(|i| {
        let (address, token) = (address.clone(), user.token.clone());
        async move {
            let path = if i % 2 == 0 {
                "/api/v1/tasks/batch"
            } else {
                "/api/v1/auth/register"
            };
            let answer = raw_post(&address, path, &token, 4 * BODY_LIMIT, true).await;
            assert_raw_problem(&answer, 413, "payload_too_large", "4 MiB chunked");
        }
    });
    streamed.buffer_unordered(8).collect::<Vec<()>>().await;
}

fn nested_arrays(depth: usize) -> String {
    "[".repeat(depth) + &"]".repeat(depth)
}

fn nested_objects(depth: usize) -> String {
    r#"{"a":"#.repeat(depth) + "1" + &"}".repeat(depth)
}

/// Bodies nested 100,000 deep to endpoints that take JSON, each a 4xx
/// problem: where the nesting is read as free JSON (a task's payload)
/// serde_json stops at depth 128 (400 `malformed_json`); elsewhere the
/// shape is wrong first (422), or an unknown field is skipped without
/// recursion and a required one is missing (422).
async fn deeply_nested_json(app: &TestApp, api: &ApiProcess, user: &TestUser) {
    let deep = 100_000;
    let malformed = (StatusCode::BAD_REQUEST, "malformed_json");
    let invalid = (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    let cases = [
        (
            "/api/v1/tasks",
            format!(r#"{{"name":"deep","payload":{}}}"#, nested_arrays(deep)),
            malformed,
            "arrays in a task's payload",
        ),
        (
            "/api/v1/tasks/batch",
            format!(
                r#"{{"tasks":[{{"name":"deep","payload":{}}}]}}"#,
                nested_objects(deep)
            ),
            malformed,
            "objects in a batch task's payload",
        ),
        (
            "/api/v1/tasks",
            nested_arrays(deep),
            invalid,
            "arrays for a task",
        ),
        (
            "/api/v1/tasks",
            nested_objects(deep),
            invalid,
            "objects for a task",
        ),
        (
            "/api/v1/auth/login",
            nested_objects(deep),
            invalid,
            "objects for a login",
        ),
        (
            "/api/v1/auth/password-reset/request",
            nested_arrays(deep),
            invalid,
            "arrays for a reset",
        ),
    ];
    for (_, body, _, what) in &cases {
        assert!(body.len() < BODY_LIMIT, "{what} fits the body limit");
    }
    let requests = stream::iter((0..30).flat_map(|_| cases.iter())).map(
        |(path, body, (status, code), what)| {
            let request = app
                .client
                .post(format!("{}{path}", api.base))
                .bearer_auth(&user.token)
                .header("content-type", "application/json")
                .body(body.clone());
            async move {
                let response = request.send().await.expect("answered, no crash");
                let problem = assert_problem(response, *status, code).await;
                if *code == "malformed_json" {
                    assert!(
                        problem.detail.contains("recursion limit"),
                        "{what}: {problem:?}"
                    );
                }
            }
        },
    );
    requests.buffer_unordered(4).collect::<Vec<()>>().await;
}

/// Sizes past the maximum are refused naming `size`, and no page is ever
/// larger than 100; a page far past the end is empty, not an overflow.
async fn page_sizes(app: &TestApp, api: &ApiProcess, user: &TestUser) {
    let get = |query: &str| {
        app.client
            .get(format!("{}/api/v1/tasks?{query}", api.base))
            .bearer_auth(&user.token)
            .send()
    };
    for query in ["size=101", "size=1000000000", "size=99999999999999999999"] {
        let problem = assert_problem(
            get(query).await.unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
        let fields: Vec<_> = problem
            .errors
            .unwrap()
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(fields, ["size"], "{query}");
    }
    let page: Value = get("size=100").await.unwrap().json().await.unwrap();
    assert_eq!(page["size"], 100);
    let last: Value = get("page=2147483647&size=100")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(last["items"], json!([]), "{last}");
}

/// Unfinished tasks past the cap: 429 for one more and for a batch, and
/// nothing created; another user is not held back.
async fn task_quota(app: &TestApp, api: &ApiProcess) {
    let user = app.create_user(Role::User).await;
    let other = app.create_user(Role::User).await;
    let create = |user: &TestUser, path: &str, body: Value| {
        app.client
            .post(format!("{}{path}", api.base))
            .bearer_auth(&user.token)
            .json(&body)
            .send()
    };
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let task = json!({"name": "waits", "scheduled_at": later});
    for n in 1..=TASK_CAP {
        let response = create(&user, "/api/v1/tasks", task.clone()).await.unwrap();
        assert_eq!(response.status(), StatusCode::CREATED, "task {n}");
    }
    let problem = assert_problem(
        create(&user, "/api/v1/tasks", task.clone()).await.unwrap(),
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_unfinished_tasks",
    )
    .await;
    assert!(
        problem.detail.contains(&TASK_CAP.to_string()),
        "{problem:?}"
    );
    let batch = json!({"tasks": vec![task.clone(); 1000]});
    assert_problem(
        create(&user, "/api/v1/tasks/batch", batch.clone())
            .await
            .unwrap(),
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_unfinished_tasks",
    )
    .await;
    let listed: Value = app
        .client
        .get(format!("{}/api/v1/tasks", api.base))
        .bearer_auth(&user.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        listed["total"], TASK_CAP,
        "nothing past the cap was created"
    );
    // A batch that would cross the cap is refused whole, for a fresh user too.
    assert_problem(
        create(
            &other,
            "/api/v1/tasks/batch",
            json!({"tasks": vec![task.clone(); TASK_CAP + 1]}),
        )
        .await
        .unwrap(),
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_unfinished_tasks",
    )
    .await;
    assert_eq!(
        create(&other, "/api/v1/tasks", task)
            .await
            .unwrap()
            .status(),
        StatusCode::CREATED,
        "the cap is per user"
    );
}

/// Opens a WebSocket by hand, sends only the header of a masked text
/// frame announcing 1 GiB, and returns the close code the server answers.
async fn announce_huge_frame(api: &ApiProcess, token: &str) -> u16 {
    let address = api.base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).await.expect("connects");
    let upgrade = format!(
        "GET /ws?token={token} HTTP/1.1\r\nHost: {address}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(upgrade.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(WAIT, stream.read(&mut byte))
            .await
            .expect("an upgrade in time")
            .unwrap();
        assert_eq!(
            n,
            1,
            "the upgrade was cut: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // FIN + text; masked, 64-bit length; then the mask key and no payload.
    let mut frame = vec![0x81, 0x80 | 127];
    frame.extend_from_slice(&(1u64 << 30).to_be_bytes());
    frame.extend_from_slice(&[1, 2, 3, 4]);
    stream.write_all(&frame).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut answer)).await;
    // The server's close frame: 0x88, a length under 126, then the code.
    let close = answer
        .windows(2)
        .position(|w| w[0] == 0x88 && w[1] < 126)
        .unwrap_or_else(|| panic!("no close frame in {answer:?}"));
    u16::from_be_bytes([answer[close + 2], answer[close + 3]])
}

/// Floods `socket` with pings; returns the refusals seen before its close code.
async fn flood(socket: ws::Socket) -> (usize, CloseCode) {
    let (mut write, mut read) = socket.split();
    let sender = tokio::spawn(async move {
        for _ in 0..100 {
            let ping = Message::text(json!({"type": "ping"}).to_string());
            if write.feed(ping).await.is_err() {
                break;
            }
        }
        let _ = write.flush().await;
        write
    });
    let deadline = Instant::now() + WAIT;
    let mut refusals = 0;
    let code = loop {
        match tokio::time::timeout_at(deadline, read.next())
            .await
            .expect("a close in time")
        {
            Some(Ok(Message::Text(text))) => {
                let message: Value = serde_json::from_str(&text).unwrap();
                if message["type"] == "error" {
                    assert_eq!(message["code"], "rate_limited", "{message}");
                    refusals += 1;
                }
            }
            Some(Ok(Message::Close(frame))) => break frame.expect("a close code").code,
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("the socket failed before its close frame: {e}"),
            None => panic!("the socket ended without a close frame"),
        }
    };
    let _ = sender.await;
    (refusals, code)
}

/// Messages over the size cap (1009, also far past it), floods (1008),
/// nesting (an error frame; the socket stays), and sockets past the
/// per-user cap (1008), with `users` taking turns so the cap is only met
/// where it is meant to be.
async fn websocket_abuse(api: &ApiProcess, users: &[TestUser]) {
    let url = |i: usize| api.ws("/ws", &users[i % users.len()].token);
    for i in 0..50 {
        let mut socket = ws::connect(&url(i)).await;
        ws::send_text(&mut socket, "x".repeat(64 * 1024 + 1)).await;
        let frame = ws::close_of(&mut socket, "a message over 64 KiB").await;
        assert_eq!(frame.code, CloseCode::Size, "{frame:?}");
    }
    // A frame that announces a gigabyte is refused from its header alone:
    // nothing of it is buffered, nothing more need be sent.
    for i in 0..20 {
        let code = announce_huge_frame(api, &users[i % users.len()].token).await;
        assert_eq!(code, 1009, "a frame announcing 1 GiB");
    }

    for i in 0..5 {
        let socket = ws::connect(&url(i)).await;
        let (refusals, code) = flood(socket).await;
        assert!(refusals >= 1, "past the budget: rate_limited first");
        assert_eq!(code, CloseCode::Policy, "then 1008");
    }

    let mut socket = ws::connect(&url(0)).await;
    for depth in [200, 30_000] {
        ws::send_text(&mut socket, nested_arrays(depth)).await;
        let error = ws::wait_for_type(&mut socket, "error").await;
        assert_eq!(error["code"], "invalid_message", "{error}");
    }
    ws::round_trip(&mut socket).await;
    let _ = socket.close(None).await;

    // One user's sockets past the cap of 10: the 11th is closed with 1008.
    let hog = &users[users.len() - 1];
    let mut held = Vec::new();
    for _ in 0..10 {
        let mut socket = ws::connect(&api.ws("/ws", &hog.token)).await;
        ws::round_trip(&mut socket).await;
        held.push(socket);
    }
    let mut extra = ws::connect(&api.ws("/ws", &hog.token)).await;
    let frame = ws::close_of(&mut extra, "the 11th socket").await;
    assert_eq!(frame.code, CloseCode::Policy, "{frame:?}");
    for mut socket in held {
        let _ = socket.close(None).await;
        // Read to the server's close, so the socket is gone before the next round.
        let deadline = Instant::now() + WAIT;
        while let Ok(Some(Ok(message))) = tokio::time::timeout_at(deadline, socket.next()).await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    }
}

#[tokio::test]
async fn abuse_gets_4xx_answers_and_closes_and_the_api_process_memory_stays_bounded() {
    let app = spawn_app().await;
    let cap = TASK_CAP.to_string();
    let mut api = ApiProcess::spawn(
        &app,
        &[
            ("RATE_LIMIT_ENABLED", "false"),
            ("MAX_UNFINISHED_TASKS_PER_USER", &cap),
            ("RUST_LOG", "warn"),
        ],
    )
    .await;
    let pid = api.process.pid();
    let mut users = Vec::new();
    for _ in 0..4 {
        users.push(app.create_user(Role::User).await);
    }
    let user = &users[0];

    warm_up(&app, &api, user).await;
    let baseline = settled_rss_mib(pid).await;
    let mut after = Vec::new();
    for round in 1..=ROUNDS {
        let start = Instant::now();
        oversized_bodies(&api, user).await;
        let bodies = rss_mib(pid);
        deeply_nested_json(&app, &api, user).await;
        let nested = rss_mib(pid);
        page_sizes(&app, &api, user).await;
        websocket_abuse(&api, &users).await;
        let sockets = rss_mib(pid);
        let settled = settled_rss_mib(pid).await;
        println!(
            "round {round} ({:.1} s): RSS {baseline:.1} MiB warmed up, {bodies:.1} after oversized \
             bodies, {nested:.1} after nested JSON, {sockets:.1} after WebSocket abuse, \
             {settled:.1} settled",
            start.elapsed().as_secs_f64()
        );
        after.push(settled);
    }
    task_quota(&app, &api).await;

    assert!(
        matches!(api.process.child.try_wait(), Ok(None)),
        "the API is still running: {}",
        api.process.stderr()
    );
    let live = app
        .client
        .get(format!("{}/live", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), StatusCode::OK);
    let last = after[ROUNDS - 1];
    let before_last = after[..ROUNDS - 1].iter().copied().fold(f64::MIN, f64::max);
    println!(
        "RSS: {baseline:.1} MiB warmed up, {} after each round (+{:.1} MiB overall, the last \
         round +{:.1} MiB over the highest before it)",
        after
            .iter()
            .map(|m| format!("{m:.1}"))
            .collect::<Vec<_>>()
            .join(", "),
        last - baseline,
        last - before_last
    );
    assert!(
        last - baseline < MAX_GROWTH_MIB,
        "resident memory grew from {baseline:.1} to {last:.1} MiB; at most {MAX_GROWTH_MIB} MiB may be added"
    );
    // The allocator's caches fill over the first rounds (one per thread that
    // served a request); a leak goes on adding with every round after.
    assert!(
        last - before_last < MAX_LAST_ROUND_GROWTH_MIB,
        "the last round took resident memory from {before_last:.1} to {last:.1} MiB: it keeps growing"
    );
    assert!(
        !api.process.stderr().contains("panicked"),
        "no panic: {}",
        api.process.stderr()
    );
}

/// Refused (413 or 422) with the form part named, as problem+json.
fn assert_part_refused(answer: &RawAnswer, field: &str, what: &str) {
    assert!(
        matches!(answer.status, 413 | 422),
        "{what}: refused as too large or invalid: {answer:?}"
    );
    assert_eq!(
        answer.content_type, "application/problem+json",
        "{what}: {answer:?}"
    );
    let named = answer.body["errors"][0]["field"] == field || answer.status == 413;
    assert!(named, "{what}: names {field}: {answer:?}");
}

#[tokio::test]
async fn a_300_mb_text_part_of_an_upload_is_refused_without_the_api_holding_it() {
    const PART_BYTES: usize = 300 * 1024 * 1024;
    /// What a refused part may add to the process's memory: the part's own
    /// small limit and a read buffer, nowhere near the part.
    const MAX_GROWTH_MIB: f64 = 8.0;
    let app = spawn_app().await;
    let api = ApiProcess::spawn(
        &app,
        &[("RATE_LIMIT_ENABLED", "false"), ("RUST_LOG", "warn")],
    )
    .await;
    let pid = api.process.pid();
    let user = app.create_user(Role::User).await;
    warm_up(&app, &api, &user).await;
    let address = api.base.trim_start_matches("http://").to_owned();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let watcher = {
        let peak = std::sync::Arc::clone(&peak);
        tokio::spawn(async move {
            loop {
                let kib = (rss_mib(pid) * 1024.0) as u64;
                peak.fetch_max(kib, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
    };
    for (method, path, field) in [
        ("POST", "/api/v1/files", "description"),
        ("POST", "/api/v1/files", "tags"),
        ("PUT", "/api/v1/users/me/avatar", "description"),
    ] {
        let baseline = rss_mib(pid);
        peak.store(0, std::sync::atomic::Ordering::Relaxed);
        let head = format!("--X\r\nContent-Disposition: form-data; name=\"{field}\"\r\n\r\n");
        let request = RawRequest {
            method,
            path,
            content_type: "multipart/form-data; boundary=X",
            head: head.as_bytes(),
            filler_bytes: PART_BYTES,
            chunked: true,
        };
        let answer = raw_request(&address, &user.token, &request).await;
        let what = format!("{method} {path} with a 300 MB {field}");
        assert_part_refused(&answer, field, &what);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let peak_mib = peak.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1024.0;
        println!("{what}: RSS {baseline:.1} MiB before, peak {peak_mib:.1} MiB");
        assert!(
            peak_mib - baseline < MAX_GROWTH_MIB,
            "{what}: resident memory went from {baseline:.1} to {peak_mib:.1} MiB"
        );
    }
    // The framing around the parts: a part's name, another header of it,
    // and text before the first boundary, each 300 MB. The parser would
    // hold each whole while it looks for its end; it is cut off first.
    for (what, head) in [
        ("a name", "--X\r\nContent-Disposition: form-data; name=\""),
        (
            "a header",
            "--X\r\nContent-Disposition: form-data; name=\"file\"\r\nX-Junk: ",
        ),
        ("a preamble", ""),
    ] {
        let baseline = rss_mib(pid);
        peak.store(0, std::sync::atomic::Ordering::Relaxed);
        let request = RawRequest {
            method: "POST",
            path: "/api/v1/files",
            content_type: "multipart/form-data; boundary=X",
            head: head.as_bytes(),
            filler_bytes: PART_BYTES,
            chunked: true,
        };
        let answer = raw_request(&address, &user.token, &request).await;
        assert_eq!(answer.status, 400, "{what} of 300 MB: {answer:?}");
        assert_eq!(
            answer.body["code"], "malformed_multipart",
            "{what}: {answer:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let peak_mib = peak.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1024.0;
        println!("{what} of 300 MB: RSS {baseline:.1} MiB before, peak {peak_mib:.1} MiB");
        assert!(
            peak_mib - baseline < MAX_GROWTH_MIB,
            "{what}: resident memory went from {baseline:.1} to {peak_mib:.1} MiB"
        );
    }
    watcher.abort();
}

/// What became of a task create whose body was sent in part or whole.
#[derive(Debug)]
enum Sent {
    /// No answer: the server waits for the rest, holding what came.
    Waiting(TcpStream),
    /// Answered.
    Answered(RawAnswer),
    /// Closed without an answer the client could read: a server that
    /// closes with part of a body unread resets the connection, and the
    /// reset may overtake its answer.
    Reset,
}

impl Sent {
    /// A refusal: a 503 `server_busy`, or the reset that may stand in for
    /// it; true if the 503 was read.
    fn assert_busy(&self, what: &str) -> bool {
        match self {
            Self::Waiting(_) => panic!("{what}: refused, not left waiting"),
            Self::Answered(answer) => {
                assert_raw_problem(answer, 503, "server_busy", what);
                true
            }
            Self::Reset => false,
        }
    }
}

/// Where [`send_body`] sends: the route, the body's type, and its first
/// bytes (spaces follow).
struct Route<'a> {
    path: &'a str,
    content_type: &'a str,
    head: &'a [u8],
}

/// A task create.
const TASKS: Route<'static> = Route {
    path: "/api/v1/tasks",
    content_type: "application/json",
    head: b"",
};

/// Opens a connection that sends the head of a request to `route` with a
/// body of `declared` bytes and `sent` of them, reading all the while;
/// stops there, and says what became of it.
async fn send_body(
    address: &str,
    token: &str,
    route: &Route<'_>,
    declared: usize,
    sent: usize,
) -> Sent {
    let stream = TcpStream::connect(address).await.expect("connects");
    let (mut read, mut write) = stream.into_split();
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: {}\r\nContent-Length: {declared}\r\n\r\n",
        route.path, route.content_type
    );
    let mut request = head.into_bytes();
    request.extend_from_slice(route.head);
    request.resize(request.len() + sent - route.head.len(), b' ');
    let writer = tokio::spawn(async move {
        // A refusal may close the socket before the last byte is written.
        let _ = write.write_all(&request).await;
        write
    });
    let mut answer = Vec::new();
    let read_result = tokio::time::timeout(
        std::time::Duration::from_secs(1),
        read.read_to_end(&mut answer),
    )
    .await;
    let write = writer.await.expect("the writer ends");
    match read_result {
        Err(_) if answer.is_empty() => {
            Sent::Waiting(read.reunite(write).expect("the halves of one stream"))
        }
        _ if answer.is_empty() => Sent::Reset,
        _ => Sent::Answered(parse_answer(route.path, &answer)),
    }
}

/// An API process whose bodies share `budget` bytes.
async fn api_with_budget(app: &TestApp, budget: usize) -> ApiProcess {
    let budget = budget.to_string();
    ApiProcess::spawn(
        app,
        &[
            ("RATE_LIMIT_ENABLED", "false"),
            ("HTTP_MAX_BUFFERED_BODY_BYTES", &budget),
            ("RUST_LOG", "warn"),
        ],
    )
    .await
}

#[tokio::test]
async fn slow_bodies_share_one_budget_and_past_it_the_api_answers_busy_not_holding_more() {
    /// The budget the process is started with, and what each stalled body
    /// holds of it (all but the 16 KiB every body gets free).
    const BUDGET: usize = 8 * 1024 * 1024;
    const SENT: usize = 900 * 1024;
    const HELD: usize = SENT - 16 * 1024;
    /// Connections that try to stall once the budget is spent, and what
    /// they may add to the process's memory (without the budget: 88 MiB).
    const LATE: usize = 100;
    const MAX_GROWTH_MIB: f64 = 32.0;
    let app = spawn_app().await;
    let api = api_with_budget(&app, BUDGET).await;
    let pid = api.process.pid();
    let user = app.create_user(Role::User).await;
    warm_up(&app, &api, &user).await;
    let baseline = settled_rss_mib(pid).await;
    let address = api.base.trim_start_matches("http://").to_owned();
    let token = user.token.as_str();

    // One at a time, so each finds the budget as the ones before left it.
    let mut stalled = Vec::new();
    let refusal = loop {
        match send_body(&address, token, &TASKS, BODY_LIMIT, SENT).await {
            Sent::Waiting(stream) => stalled.push(stream),
            refused => break refused,
        }
        assert!(
            stalled.len() <= BUDGET / HELD,
            "the budget holds {} stalled bodies",
            stalled.len()
        );
    };
    let mut read_503 = usize::from(refusal.assert_busy("a body past the budget"));
    assert_eq!(
        stalled.len(),
        BUDGET / HELD,
        "as many stalled bodies as the budget holds"
    );

    // With the budget spent: a body larger than what is left is refused at
    // once, a small one (within the free bytes) is served as ever.
    let whole = send_body(&address, token, &TASKS, SENT, SENT).await;
    read_503 += usize::from(whole.assert_busy("a whole body with the budget spent"));
    let created = app
        .client
        .post(format!("{}/api/v1/tasks", api.base))
        .bearer_auth(token)
        .json(&json!({"name": "small", "kind": "sleep", "payload": {"ms": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        created.status(),
        StatusCode::CREATED,
        "a small create still goes through"
    );

    let late = stream::iter(0..LATE)
        .map(|_| send_body(&address, token, &TASKS, BODY_LIMIT, SENT))
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let peak = rss_mib(pid);
    for sent in &late {
        read_503 += usize::from(sent.assert_busy("a late stalled body"));
    }
    println!(
        "{} bodies of {SENT} bytes stalled in a budget of {BUDGET}; {} more refused ({read_503} \
         read the 503 before the reset); RSS {baseline:.1} MiB warmed up, {peak:.1} with every \
         connection open",
        stalled.len(),
        LATE + 2
    );
    assert!(read_503 > 0, "the refusals say 503 `server_busy`");
    assert!(
        peak - baseline < MAX_GROWTH_MIB,
        "slow bodies took resident memory from {baseline:.1} to {peak:.1} MiB"
    );

    // The stalled bodies give their share back when their connections go.
    drop(stalled);
    let deadline = Instant::now() + WAIT;
    loop {
        match send_body(&address, token, &TASKS, SENT, SENT).await {
            Sent::Answered(answer) if answer.status != 503 => {
                assert_raw_problem(
                    &answer,
                    400,
                    "malformed_json",
                    "a body of spaces, once there is room",
                );
                break;
            }
            other => assert!(
                Instant::now() < deadline,
                "the budget is given back: {other:?}"
            ),
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn stalled_uploads_draw_on_the_budget_what_their_store_buffers() {
    /// The budget: two uploads' worth of buffers (local storage holds three
    /// 256 KiB parts of an upload, and an avatar's head beside them).
    const BUDGET: usize = 2 * 1024 * 1024;
    const HELD: usize = 3 * 256 * 1024 + 256 * 1024;
    /// Each stalled upload sends more than it holds.
    const SENT: usize = 3 * 1024 * 1024;
    let app = spawn_app().await;
    let api = api_with_budget(&app, BUDGET).await;
    let user = app.create_user(Role::User).await;
    let address = api.base.trim_start_matches("http://").to_owned();
    let upload = Route {
        path: "/api/v1/files",
        content_type: "multipart/form-data; boundary=X",
        head: b"--X\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.bin\"\r\n\
                Content-Type: application/octet-stream\r\n\r\n",
    };
    let mut stalled = Vec::new();
    let refusal = loop {
        match send_body(&address, &user.token, &upload, 2 * SENT, SENT).await {
            Sent::Waiting(stream) => stalled.push(stream),
            refused => break refused,
        }
        assert!(
            stalled.len() <= BUDGET / HELD,
            "the budget holds {} stalled uploads",
            stalled.len()
        );
    };
    refusal.assert_busy("an upload past the budget");
    assert_eq!(
        stalled.len(),
        BUDGET / HELD,
        "as many stalled uploads as the budget holds"
    );
    println!(
        "{} uploads of {SENT} bytes stalled in a budget of {BUDGET}",
        stalled.len()
    );

    // An upload draws no more than it holds: with the others gone, one of
    // many times the budget goes through.
    drop(stalled);
    let deadline = Instant::now() + WAIT;
    let big = 4 * BUDGET;
    let body = {
        let mut body = upload.head.to_vec();
        body.resize(upload.head.len() + big, b'x');
        body.extend_from_slice(b"\r\n--X--\r\n");
        body
    };
    loop {
        let response = app
            .client
            .post(format!("{}/api/v1/files", api.base))
            .bearer_auth(&user.token)
            .header("content-type", upload.content_type)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        if response.status() != StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(
                response.status(),
                StatusCode::CREATED,
                "an upload of {big} bytes"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the budget is given back");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Regular files under `dir`, at any depth.
fn files_under(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .map(|entry| match entry.file_type() {
                Ok(kind) if kind.is_dir() => files_under(&entry.path()),
                Ok(kind) if kind.is_file() => 1,
                _ => 0,
            })
            .sum()
    })
}

#[tokio::test]
async fn an_upload_cut_off_by_the_request_timeout_leaves_no_file_behind() {
    let app = spawn_app().await;
    let dir = keel_testing::test_files_dir();
    let api = ApiProcess::spawn(
        &app,
        &[
            ("RATE_LIMIT_ENABLED", "false"),
            ("REQUEST_TIMEOUT_SECONDS", "2"),
            ("FILES_DIR", &dir),
            ("RUST_LOG", "warn"),
        ],
    )
    .await;
    let user = app.create_user(Role::User).await;
    let address = api.base.trim_start_matches("http://").to_owned();
    // One whole file, then the start of a second, and nothing more: the
    // first is stored when the timeout drops the request.
    let mut head = b"--X\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.bin\"\r\n\
        Content-Type: application/octet-stream\r\n\r\n"
        .to_vec();
    head.resize(head.len() + 100 * 1024, b'a');
    head.extend_from_slice(
        b"\r\n--X\r\nContent-Disposition: form-data; name=\"file\"; filename=\"b.bin\"\r\n\r\nb",
    );
    let upload = Route {
        path: "/api/v1/files",
        content_type: "multipart/form-data; boundary=X",
        head: &head,
    };
    let sent = head.len();
    let Sent::Waiting(mut stream) = send_body(&address, &user.token, &upload, 2 * sent, sent).await
    else {
        panic!("the upload waits for the rest of its second file");
    };
    assert_eq!(
        files_under(std::path::Path::new(&dir)),
        1,
        "the first file is stored"
    );
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut answer)).await;
    let answer = parse_answer(upload.path, &answer);
    assert_raw_problem(
        &answer,
        408,
        "request_timeout",
        "an upload past the timeout",
    );
    let deadline = Instant::now() + WAIT;
    while files_under(std::path::Path::new(&dir)) > 0 {
        assert!(
            Instant::now() < deadline,
            "the stored file of the cut-off upload is deleted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
