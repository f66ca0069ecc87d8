//! What a client may hold open: `HTTP_MAX_CONNECTIONS` (one past it is
//! answered 503 and closed; WebSockets count) and `HTTP_KEEP_ALIVE_SECONDS`
//! (silent, idle, slow-head and not-reading connections are closed; slow
//! but steady readers are not), over HTTP/1.1 alone.

use std::time::Duration;

use keel_shared::domain::Role;
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    time::Instant,
};

use crate::{helpers::spawn_app_with, uploads::uploaded, ws::connect};

/// Longer than any wait these tests expect to end.
const PATIENCE: Duration = Duration::from_secs(10);

/// Everything the server sends until it closes the connection.
async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut bytes = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut bytes))
        .await
        .expect("the server closes the connection in time")
        .expect("read until closed");
    String::from_utf8(bytes).expect("text")
}

/// Sends `GET /health` on a kept-alive connection and reads its whole answer,
/// leaving the connection open; returns the status line.
async fn get_health(stream: &mut TcpStream) -> String {
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: keel\r\n\r\n")
        .await
        .unwrap();
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + PATIENCE;
    loop {
        let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .expect("an answer in time")
            .expect("read");
        assert!(n > 0, "the connection stays open after the answer");
        bytes.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&bytes);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_owned)
                })
                .expect("a content-length")
                .trim()
                .parse()
                .unwrap();
            if body.len() >= length {
                return head.lines().next().unwrap().to_owned();
            }
        }
    }
}

/// Asks `GET /health` on new connections until one is served: each earlier
/// one must be the cap's 503, and a place must come free within `PATIENCE`.
async fn wait_for_a_place(address: &str, what: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut next = TcpStream::connect(address).await.unwrap();
        next.write_all(b"GET /health HTTP/1.1\r\nHost: keel\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let answer = read_to_close(&mut next).await;
        if answer.starts_with("HTTP/1.1 200") {
            return;
        }
        assert!(
            answer.starts_with("HTTP/1.1 503") && Instant::now() < deadline,
            "{what}: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_connection_past_http_max_connections_gets_a_503_problem_and_a_freed_place_is_reused() {
    let app = spawn_app_with(&["--http-max-connections", "3"]).await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let user = app.create_user(Role::User).await;

    // Two kept-alive HTTP connections and one WebSocket fill the three places.
    let mut first = TcpStream::connect(&address).await.unwrap();
    assert_eq!(get_health(&mut first).await, "HTTP/1.1 200 OK");
    let mut second = TcpStream::connect(&address).await.unwrap();
    assert_eq!(get_health(&mut second).await, "HTTP/1.1 200 OK");
    let ws_base = app.address.replacen("http://", "ws://", 1);
    let socket = connect(&format!("{ws_base}/ws/chat/lobby?token={}", user.token)).await;

    // The fourth is answered and closed, whatever it sent.
    let mut fourth = TcpStream::connect(&address).await.unwrap();
    fourth
        .write_all(b"GET /health HTTP/1.1\r\nHost: keel\r\n\r\n")
        .await
        .unwrap();
    let answer = read_to_close(&mut fourth).await;
    let (head, body) = answer.split_once("\r\n\r\n").expect("a whole answer");
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 503"), "503: {answer}");
    assert!(
        head.contains("content-type: application/problem+json"),
        "{answer}"
    );
    assert!(head.contains("retry-after: 1"), "{answer}");
    assert!(head.contains("connection: close"), "{answer}");
    let problem: Value = serde_json::from_str(body).expect("a JSON problem");
    assert_eq!(problem["code"], "too_many_connections", "{problem}");
    assert_eq!(problem["status"], 503, "{problem}");

    // The places held are untouched: the kept-alive connections still serve.
    assert_eq!(get_health(&mut first).await, "HTTP/1.1 200 OK");

    // Closing the WebSocket frees its place for a new connection.
    drop(socket);
    wait_for_a_place(&address, "the WebSocket's place is freed once it closes").await;

    let scrape = app
        .client
        .get(format!("{}/metrics", app.metrics_address))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let refused = scrape
        .lines()
        .find_map(|l| l.strip_prefix("keel_http_connections_refused_total "))
        .expect("the refusals are counted");
    assert!(refused.trim().parse::<f64>().unwrap() >= 1.0, "{scrape}");
}

#[tokio::test]
async fn idle_and_slow_head_connections_are_closed_after_http_keep_alive_seconds() {
    let app = spawn_app_with(&["--http-keep-alive-seconds", "1"]).await;
    let address = app.address.trim_start_matches("http://").to_owned();

    // Opened and never used: closed too, not held until the client gives up.
    let mut silent = TcpStream::connect(&address).await.unwrap();
    let started = Instant::now();
    assert_eq!(
        read_to_close(&mut silent).await,
        "",
        "closed without a word"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "not before HTTP_KEEP_ALIVE_SECONDS: {:?}",
        started.elapsed()
    );

    // Kept alive after an answer, then idle: closed with nothing more sent.
    let mut idle = TcpStream::connect(&address).await.unwrap();
    assert_eq!(get_health(&mut idle).await, "HTTP/1.1 200 OK");
    let started = Instant::now();
    assert_eq!(read_to_close(&mut idle).await, "", "closed without a word");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "not before HTTP_KEEP_ALIVE_SECONDS: {:?}",
        started.elapsed()
    );

    // A head that never ends (slowloris) is not waited for either.
    let mut slow = TcpStream::connect(&address).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: keel\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(PATIENCE, slow.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(_) | Err(_))),
        "the unfinished head's connection is closed"
    );

    // A connection in use is not cut: a request every half second keeps it.
    let mut busy = TcpStream::connect(&address).await.unwrap();
    for _ in 0..4 {
        assert_eq!(get_health(&mut busy).await, "HTTP/1.1 200 OK");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn a_client_that_stops_reading_its_answers_loses_its_place_after_http_keep_alive_seconds() {
    let app = spawn_app_with(&[
        "--http-max-connections",
        "1",
        "--http-keep-alive-seconds",
        "1",
    ])
    .await;
    let address: std::net::SocketAddr = app.address.trim_start_matches("http://").parse().unwrap();

    // A small receive window and sixty pipelined requests for the API
    // document, never read: the server's writes stall once the buffers fill.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(2048).unwrap();
    let mut reader = socket.connect(address).await.unwrap();
    let request = b"GET /openapi.json HTTP/1.1\r\nHost: keel\r\n\r\n";
    reader.write_all(&request.repeat(60)).await.unwrap();

    // The only place is freed well before sixty answers could be written.
    wait_for_a_place(&address.to_string(), "the stalled reader's place is freed").await;
    drop(reader);
}

#[tokio::test]
async fn http2_prior_knowledge_is_not_served() {
    let app = spawn_app_with(&[]).await;
    let address = app.address.trim_start_matches("http://").to_owned();

    // HTTP/2 would answer the preface with a SETTINGS frame and then take
    // none of the HTTP/1.1 limits; the API answers as HTTP/1.1 and closes.
    let mut h2 = TcpStream::connect(&address).await.unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let mut bytes = Vec::new();
    tokio::time::timeout(PATIENCE, h2.read_to_end(&mut bytes))
        .await
        .expect("closed in time")
        .ok();
    let answer = String::from_utf8_lossy(&bytes);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 4") || answer.starts_with("HTTP/1.1 5"),
        "an HTTP/1.1 refusal or a close, not HTTP/2: {answer:?}"
    );
}

#[tokio::test]
async fn a_client_that_reads_slowly_but_steadily_keeps_its_download() {
    let app = spawn_app_with(&["--http-keep-alive-seconds", "1"]).await;
    let user = app.create_user(Role::User).await;
    let size = 4 * 1024 * 1024;
    let bytes = vec![b'k'; size];
    let file = uploaded(&app, &user, "big.bin", &bytes).await;
    let id = file["id"].as_str().unwrap().to_owned();

    // 32 KiB every 50 ms: seven seconds for the whole file, each write of
    // the server's waiting far longer than HTTP_KEEP_ALIVE_SECONDS for a
    // send buffer the kernel would otherwise let grow to megabytes.
    let address = app.address.trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&address).await.unwrap();
    let request = format!(
        "GET /api/v1/files/{id}/content HTTP/1.1\r\nHost: keel\r\nAuthorization: Bearer {}\r\n\
         Connection: close\r\n\r\n",
        user.token
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    let mut chunk = vec![0u8; 32 * 1024];
    loop {
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut chunk))
            .await
            .expect("data keeps coming")
            .expect("read");
        if n == 0 {
            break;
        }
        received.extend_from_slice(&chunk[..n]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let split = received
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head");
    let head = String::from_utf8_lossy(&received[..split]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains(&format!("content-length: {size}")), "{head}");
    let body = &received[split + 4..];
    assert_eq!(body.len(), size, "the whole file, not cut short");
    assert!(body.iter().all(|&b| b == b'k'));
}
