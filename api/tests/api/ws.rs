//! WebSockets with real clients: rooms, presence and task updates across two
//! `keel-api` processes on one database and Redis prefix, and the closes the
//! contract promises (bad credentials, size, flood, dead peers, deactivation,
//! shutdown).

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use keel_shared::domain::Role;
use keel_testing::{self as testing, ChildGuard};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::{net::TcpStream, time::Instant};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{
        Message,
        protocol::{CloseFrame, frame::coding::CloseCode},
    },
};

use crate::{
    helpers::{API_BIN, TEST_SECRET, TestApp, TestUser, spawn_app, spawn_app_with},
    pipeline::stack_with,
};

pub(crate) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The longest any one step of a test may take.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// A `keel-api` process on `app`'s database and Redis prefix, signing with
/// the test key (so `app`'s tokens are good on it): a replica beside `app`.
pub(crate) struct ApiProcess {
    pub(crate) base: String,
    pub(crate) process: ChildGuard,
}

impl ApiProcess {
    /// Starts the process with `env` on top and waits until it is ready.
    pub(crate) async fn spawn(app: &TestApp, env: &[(&str, &str)]) -> Self {
        let port = testing::free_port().to_string();
        let mut command = testing::command(API_BIN);
        command.envs([
            ("DATABASE_URL", app.db.as_ref().unwrap().url.as_str()),
            ("REDIS_URL", &testing::redis_url()),
            ("REDIS_PREFIX", &app.config.redis.prefix),
            ("SECRET_KEY", TEST_SECRET),
            ("HOST", "127.0.0.1"),
            ("PORT", &port),
        ]);
        command.envs(env.iter().copied());
        let process = ChildGuard::spawn(command);
        let base = format!("http://127.0.0.1:{port}");
        testing::wait_for_status(&format!("{base}/ready"), 200, Duration::from_secs(30)).await;
        Self { base, process }
    }

    pub(crate) fn ws(&self, path: &str, token: &str) -> String {
        ws_url(&self.base, path, token)
    }
}

/// `path?token=` on the server at `http_base`, as a `ws://` URL.
fn ws_url(http_base: &str, path: &str, token: &str) -> String {
    let base = http_base.replacen("http://", "ws://", 1);
    format!("{base}{path}?token={token}")
}

/// Opens a socket; the upgrade itself must succeed (101).
pub(crate) async fn connect(url: &str) -> Socket {
    let (socket, response) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .unwrap_or_else(|_| panic!("no upgrade of {url} within {WAIT:?}"))
        .unwrap_or_else(|e| panic!("upgrade of {url}: {e}"));
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    socket
}

pub(crate) async fn send(socket: &mut Socket, message: &Value) {
    send_text(socket, message.to_string()).await;
}

pub(crate) async fn send_text(socket: &mut Socket, text: String) {
    tokio::time::timeout(WAIT, socket.send(Message::text(text)))
        .await
        .expect("sent in time")
        .expect("the socket takes the message");
}

/// The next text or close message before `deadline`, or `None` when none
/// came. Pings and pongs are skipped (tungstenite answers pings while the
/// stream is read).
async fn next_message(socket: &mut Socket, deadline: Instant) -> Option<Message> {
    loop {
        match tokio::time::timeout_at(deadline, socket.next())
            .await
            .ok()?
        {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(message)) => return Some(message),
            Some(Err(e)) => panic!("the socket failed: {e}"),
            None => panic!("the socket ended without a close frame"),
        }
    }
}

/// Reads until a JSON message for which `wanted` holds and returns it;
/// panics (listing what came instead) on a close or after `within`.
async fn wait_for_within(
    socket: &mut Socket,
    what: &str,
    within: Duration,
    wanted: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        match next_message(socket, deadline).await {
            Some(Message::Text(text)) => {
                let message: Value = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("the server sent JSON, not {text:?}: {e}"));
                if wanted(&message) {
                    return message;
                }
                seen.push(message);
            }
            Some(Message::Close(frame)) => {
                panic!("closed ({frame:?}) while waiting for {what}; before it: {seen:?}")
            }
            Some(other) => panic!("a {other:?} while waiting for {what}"),
            None => panic!("no {what} within {within:?}; came instead: {seen:?}"),
        }
    }
}

async fn wait_for(socket: &mut Socket, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
    wait_for_within(socket, what, WAIT, wanted).await
}

/// The next message of `kind` (`"pong"`, `"error"`, …).
pub(crate) async fn wait_for_type(socket: &mut Socket, kind: &str) -> Value {
    wait_for(socket, &format!("a {kind}"), |m| m["type"] == kind).await
}

/// The users of a presence message as the contract lists them: by
/// username, each once.
fn presence_of(users: &[&TestUser]) -> Value {
    let mut users: Vec<_> = users.iter().map(|u| &u.user).collect();
    users.sort_by(|a, b| a.username.cmp(&b.username));
    users.dedup_by_key(|u| u.id);
    users
        .iter()
        .map(|u| json!({"id": u.id, "username": u.username}))
        .collect()
}

/// Reads until `room`'s presence is exactly `users`.
async fn wait_for_presence(socket: &mut Socket, room: &str, users: &[&TestUser]) -> Value {
    wait_for_presence_within(socket, room, users, WAIT).await
}

async fn wait_for_presence_within(
    socket: &mut Socket,
    room: &str,
    users: &[&TestUser],
    within: Duration,
) -> Value {
    let expected = presence_of(users);
    wait_for_within(
        socket,
        &format!("presence {expected} in {room}"),
        within,
        |m| m["type"] == "presence" && m["room"] == room && m["users"] == expected,
    )
    .await
}

/// The close frame the server sends within `within`, skipping any messages
/// before it.
async fn close_within(socket: &mut Socket, what: &str, within: Duration) -> CloseFrame {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        match next_message(socket, deadline).await {
            Some(Message::Close(Some(frame))) => return frame,
            Some(Message::Close(None)) => panic!("{what}: a close frame without a code"),
            Some(other) => seen.push(other),
            None => panic!("{what}: no close frame within {within:?}; came instead: {seen:?}"),
        }
    }
}

pub(crate) async fn close_of(socket: &mut Socket, what: &str) -> CloseFrame {
    close_within(socket, what, WAIT).await
}

/// Sends a ping and waits for its pong: everything sent before it has
/// been handled.
pub(crate) async fn round_trip(socket: &mut Socket) {
    send(socket, &json!({"type": "ping"})).await;
    wait_for_type(socket, "pong").await;
}

#[tokio::test]
async fn a_room_message_sent_on_one_replica_reaches_members_on_another_and_the_sender() {
    let app = spawn_app().await;
    let (a, b) = tokio::join!(ApiProcess::spawn(&app, &[]), ApiProcess::spawn(&app, &[]));
    let alice = app.create_user(Role::User).await;
    let bob = app.create_user(Role::User).await;

    let mut on_a = connect(&a.ws("/ws/chat/lobby", &alice.token)).await;
    let mut on_b = connect(&b.ws("/ws/chat/lobby", &bob.token)).await;
    // Both see both joined: each replica knows of the other's member.
    wait_for_presence(&mut on_a, "lobby", &[&alice, &bob]).await;
    wait_for_presence(&mut on_b, "lobby", &[&alice, &bob]).await;

    send(
        &mut on_a,
        &json!({"type": "room_message", "room": "lobby", "content": "hello from A"}),
    )
    .await;
    for socket in [&mut on_b, &mut on_a] {
        let message = wait_for_type(socket, "room_message").await;
        assert_eq!(message["room"], "lobby");
        assert_eq!(message["from"], alice.user.username.as_str());
        assert_eq!(message["content"], "hello from A");
        let ts = message["ts"].as_str().expect("a ts");
        assert!(
            chrono::DateTime::parse_from_rfc3339(ts).is_ok(),
            "ts is RFC 3339: {ts}"
        );
    }

    send(
        &mut on_b,
        &json!({"type": "room_message", "room": "lobby", "content": "and back from B"}),
    )
    .await;
    let reply = wait_for_type(&mut on_a, "room_message").await;
    assert_eq!(
        (reply["from"].as_str(), reply["content"].as_str()),
        (Some(bob.user.username.as_str()), Some("and back from B"))
    );
}

#[tokio::test]
async fn presence_spans_replicas_and_drops_members_who_leave_or_disconnect() {
    let app = spawn_app().await;
    let (a, b) = tokio::join!(ApiProcess::spawn(&app, &[]), ApiProcess::spawn(&app, &[]));
    let alice = app.create_user(Role::User).await;
    let bob = app.create_user(Role::User).await;
    let carol = app.create_user(Role::User).await;

    let mut alice_ws = connect(&a.ws("/ws/chat/den", &alice.token)).await;
    let mut bob_ws = connect(&b.ws("/ws/chat/den", &bob.token)).await;
    let mut carol_ws = connect(&b.ws("/ws/chat/den", &carol.token)).await;
    for socket in [&mut alice_ws, &mut bob_ws, &mut carol_ws] {
        wait_for_presence(socket, "den", &[&alice, &bob, &carol]).await;
    }

    send(&mut bob_ws, &json!({"type": "leave_room", "room": "den"})).await;
    wait_for_presence(&mut alice_ws, "den", &[&alice, &carol]).await;
    wait_for_presence(&mut carol_ws, "den", &[&alice, &carol]).await;

    tokio::time::timeout(WAIT, carol_ws.close(None))
        .await
        .expect("closed in time")
        .expect("a clean close");
    wait_for_presence(&mut alice_ws, "den", &[&alice]).await;
}

#[tokio::test]
async fn task_updates_stream_to_the_owners_subscribed_socket_and_no_one_elses() {
    let stack = stack_with(&["--rate-limit-enabled", "false"]).await;
    let app = &stack.app;
    let owner = app.create_user(Role::User).await;
    let stranger = app.create_user(Role::User).await;

    let mut owner_ws = connect(&ws_url(&app.address, "/ws", &owner.token)).await;
    let mut stranger_ws = connect(&ws_url(&app.address, "/ws", &stranger.token)).await;
    for socket in [&mut owner_ws, &mut stranger_ws] {
        send(socket, &json!({"type": "subscribe_tasks"})).await;
        // There is no acknowledgement of a subscription; a pong after it
        // says the server has handled it.
        round_trip(socket).await;
    }

    let task = app
        .created_task(
            &owner.token,
            &json!({"name": "nap", "kind": "sleep", "payload": {"ms": 300}}),
        )
        .await;
    let id = task["id"].as_str().unwrap().to_owned();

    let mut statuses = Vec::new();
    loop {
        let update = wait_for(&mut owner_ws, "a task_update", |m| {
            m["type"] == "task_update"
        })
        .await;
        let state = &update["task"];
        assert_eq!(
            state["id"],
            id.as_str(),
            "only the owner's one task: {update}"
        );
        for field in ["status", "progress", "attempts", "updated_at"] {
            assert!(!state[field].is_null(), "{field} in {update}");
        }
        let status = state["status"].as_str().unwrap().to_owned();
        if status == "completed" {
            assert_eq!(state["progress"], 100, "{update}");
            assert_eq!(state["attempts"], 1, "{update}");
            statuses.push(status);
            break;
        }
        statuses.push(status);
    }
    let running = statuses.iter().position(|s| s == "running");
    assert!(
        running.is_some_and(|r| r < statuses.len() - 1),
        "running, then completed: {statuses:?}"
    );

    // Give a stray update time to arrive; none may.
    let deadline = Instant::now() + Duration::from_secs(1);
    while let Some(message) = next_message(&mut stranger_ws, deadline).await {
        let text = message.to_text().unwrap_or_default().to_owned();
        assert!(
            !text.contains(&id),
            "another user sees nothing of the task: {text}"
        );
    }
}

#[tokio::test]
async fn a_socket_without_a_good_credential_is_closed_with_1008() {
    let app = spawn_app().await;
    let no_token = app.address.replacen("http://", "ws://", 1) + "/ws";
    for (url, why) in [
        (no_token, "no token"),
        (ws_url(&app.address, "/ws", "garbage"), "a garbage token"),
        (
            ws_url(&app.address, "/ws/chat/lobby", "not.a.jwt"),
            "a garbage token on a room",
        ),
    ] {
        let mut socket = connect(&url).await;
        let frame = close_of(&mut socket, why).await;
        assert_eq!(frame.code, CloseCode::Policy, "{why}: {frame:?}");
        assert!(!frame.reason.is_empty(), "{why}: the reason says why");
    }
}

#[tokio::test]
async fn a_message_over_64_kib_closes_the_socket_with_1009() {
    let app = spawn_app().await;
    let user = app.create_user(Role::User).await;
    let mut socket = connect(&ws_url(&app.address, "/ws/chat/big", &user.token)).await;
    round_trip(&mut socket).await;

    let content = "x".repeat(64 * 1024);
    send(
        &mut socket,
        &json!({"type": "room_message", "room": "big", "content": content}),
    )
    .await;
    let frame = close_of(&mut socket, "a message too large").await;
    assert_eq!(frame.code, CloseCode::Size, "{frame:?}");
}

#[tokio::test]
async fn a_flood_is_refused_then_closed_with_1008() {
    let app = spawn_app().await;
    let user = app.create_user(Role::User).await;
    let socket = connect(&ws_url(&app.address, "/ws", &user.token)).await;
    let (mut write, mut read) = socket.split();

    // Five times the default budget of 20 a second, as fast as they go;
    // read at the same time so the close is seen before any reset.
    let flood = tokio::spawn(async move {
        for _ in 0..100 {
            if write
                .feed(Message::text(json!({"type": "ping"}).to_string()))
                .await
                .is_err()
            {
                break;
            }
        }
        let _ = write.flush().await;
        write
    });

    let deadline = Instant::now() + WAIT;
    let (mut pongs, mut refusals, mut close) = (0, 0, None);
    while close.is_none() {
        let next = tokio::time::timeout_at(deadline, read.next())
            .await
            .unwrap_or_else(|_| {
                panic!("no close within {WAIT:?}: {pongs} pongs, {refusals} refusals")
            });
        match next {
            Some(Ok(Message::Text(text))) => {
                let message: Value = serde_json::from_str(&text).unwrap();
                match message["type"].as_str() {
                    Some("pong") => pongs += 1,
                    Some("error") => {
                        assert_eq!(message["code"], "rate_limited", "{message}");
                        refusals += 1;
                    }
                    _ => panic!("unexpected {message}"),
                }
            }
            Some(Ok(Message::Close(frame))) => close = Some(frame),
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                panic!(
                    "the socket failed before a close frame: {e} ({pongs} pongs, {refusals} refusals)"
                )
            }
            None => panic!("the socket ended without a close frame"),
        }
    }
    let _write = flood.await.unwrap();
    assert!(pongs > 0, "the budget is answered");
    assert!(
        refusals >= 1,
        "beyond the budget: rate_limited ({pongs} pongs)"
    );
    let frame = close.unwrap().expect("a close code");
    assert_eq!(frame.code, CloseCode::Policy, "{frame:?}");
}

#[tokio::test]
async fn a_client_that_stops_answering_pings_is_dropped_from_presence() {
    let app = spawn_app_with(&["--ws-ping-seconds", "1"]).await;
    let live = app.create_user(Role::User).await;
    let dead = app.create_user(Role::User).await;

    let mut live_ws = connect(&ws_url(&app.address, "/ws/chat/wake", &live.token)).await;
    let mut dead_ws = connect(&ws_url(&app.address, "/ws/chat/wake", &dead.token)).await;
    wait_for_presence(&mut live_ws, "wake", &[&live, &dead]).await;
    wait_for_presence(&mut dead_ws, "wake", &[&live, &dead]).await;

    // From here `dead_ws` is never polled: its pings go unanswered, while
    // its TCP connection stays open.
    wait_for_presence_within(&mut live_ws, "wake", &[&live], Duration::from_secs(6)).await;

    // The server really let go of it: reading now finds its end.
    let deadline = Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, dead_ws.next())
            .await
            .expect("the dropped socket ends")
        {
            Some(Ok(Message::Close(_)) | Err(_)) | None => break,
            Some(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn deactivating_a_user_closes_their_sockets_on_every_replica_with_1008() {
    let app = spawn_app().await;
    let (a, b) = tokio::join!(ApiProcess::spawn(&app, &[]), ApiProcess::spawn(&app, &[]));
    let admin = app.create_user(Role::Admin).await;
    let user = app.create_user(Role::User).await;

    let mut on_a = connect(&a.ws("/ws/chat/lobby", &user.token)).await;
    let mut on_b = connect(&b.ws("/ws", &user.token)).await;
    round_trip(&mut on_a).await;
    round_trip(&mut on_b).await;

    let response = app
        .client
        .patch(format!("{}/api/v1/users/{}", a.base, user.user.id))
        .bearer_auth(&admin.token)
        .json(&json!({"is_active": false}))
        .send()
        .await
        .expect("request sent");
    assert_eq!(response.status(), StatusCode::OK);

    for (socket, replica) in [
        (&mut on_a, "the socket on A"),
        (&mut on_b, "the socket on B"),
    ] {
        let frame = close_within(socket, replica, Duration::from_secs(5)).await;
        assert_eq!(frame.code, CloseCode::Policy, "on {replica}: {frame:?}");
    }
    let mut again = connect(&b.ws("/ws", &user.token)).await;
    let frame = close_of(&mut again, "a new socket of the deactivated user").await;
    assert_eq!(frame.code, CloseCode::Policy, "{frame:?}");
}

#[tokio::test]
async fn invalid_messages_are_answered_with_an_error_and_the_socket_stays_open() {
    let app = spawn_app().await;
    let user = app.create_user(Role::User).await;
    let mut socket = connect(&ws_url(&app.address, "/ws", &user.token)).await;

    // Each message says what was wrong in the client's terms: no Rust type
    // names, no positions in the text.
    for (text, why, says) in [
        ("{not json".to_owned(), "not JSON", "not JSON"),
        (
            json!({"type": "dance"}).to_string(),
            "an unknown type",
            "unknown variant `dance`",
        ),
        (
            json!({"type": "join_room"}).to_string(),
            "a missing field",
            "missing field `room`",
        ),
        (
            json!(["ping"]).to_string(),
            "not an object",
            "a JSON object with a `type` field",
        ),
        (
            json!([1, 2]).to_string(),
            "an array",
            "a JSON object with a `type` field",
        ),
        (
            "null".to_owned(),
            "null",
            "a JSON object with a `type` field",
        ),
    ] {
        send_text(&mut socket, text).await;
        let error = wait_for_type(&mut socket, "error").await;
        assert_eq!(error["code"], "invalid_message", "{why}: {error}");
        let message = error["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{why}: {error}");
        for internal in ["ClientMessage", "enum", "line 1", "column"] {
            assert!(!message.contains(internal), "{why}: {internal} in {error}");
        }
    }
    round_trip(&mut socket).await;
}

#[tokio::test]
async fn sigterm_closes_every_socket_with_1001() {
    let app = spawn_app().await;
    let mut api = ApiProcess::spawn(&app, &[("SHUTDOWN_GRACE_SECONDS", "10")]).await;
    let user = app.create_user(Role::User).await;
    let mut plain = connect(&api.ws("/ws", &user.token)).await;
    let mut in_room = connect(&api.ws("/ws/chat/lobby", &user.token)).await;
    round_trip(&mut plain).await;
    round_trip(&mut in_room).await;

    api.process.signal("TERM");
    for (socket, which) in [(&mut plain, "/ws"), (&mut in_room, "/ws/chat/lobby")] {
        let frame = close_of(socket, which).await;
        assert_eq!(frame.code, CloseCode::Away, "{frame:?}");
    }
    let status = api.process.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "keel-api exits cleanly with sockets open: {}",
        api.process.stderr()
    );
}
