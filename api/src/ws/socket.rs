//! One WebSocket's life: read and answer the client's messages, forward
//! what the hub hands over, ping, and close — on a limit, when the session
//! ends, when the token expires, when idle, or when the process stops.

use std::{collections::BTreeSet, time::Duration};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use chrono::Utc;
use keel_shared::{
    db::{
        api_keys, refresh_tokens,
        tasks::{self, TaskFilter, TaskState, TaskStatus},
    },
    domain::Role,
};
use tokio::{sync::mpsc, time::Instant};
use uuid::Uuid;

use super::{
    hub::{Hub, Outbound, TaskScope},
    presence,
    protocol::{self, ClientMessage, ErrorCode, Member, ServerMessage},
};
use crate::state::AppState;

/// Close codes (RFC 6455).
pub const NORMAL: u16 = 1000;
pub const GOING_AWAY: u16 = 1001;
pub const POLICY: u16 = 1008;
pub const TOO_BIG: u16 = 1009;

/// Unfinished tasks sent as the current state after `subscribe_tasks`.
const SNAPSHOT: i64 = 100;

/// Who is on the socket.
#[derive(Debug, Clone)]
pub struct Session {
    pub member: Member,
    /// The role at sign-in: a change of it closes the socket (what it may
    /// follow was decided by it).
    pub role: Role,
    pub credential: SocketCredential,
    /// When the credential expires, if it does.
    pub expires: Option<Instant>,
}

impl Session {
    fn is_admin(&self) -> bool {
        self.role >= Role::Admin
    }
}

/// What opened the socket, rechecked whenever its user changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketCredential {
    /// An access token of `version`, from the sign-in `session` if any.
    Token { version: i32, session: Option<Uuid> },
    /// An API key, by the hash of its secret: regenerating the key ends it.
    ApiKey { key_hash: [u8; 32] },
}

/// Why the loop ended.
enum End {
    Close(u16, &'static str),
    /// The client is gone (or dead): nothing to send.
    Drop,
}

#[derive(Debug)]
pub struct Socket {
    id: Uuid,
    ws: WebSocket,
    inbox: mpsc::Receiver<Outbound>,
    state: AppState,
    hub: Hub,
    session: Session,
    rooms: BTreeSet<String>,
    /// Messages in the current one-second window.
    window: (Instant, u32),
    limited: bool,
}

impl Socket {
    pub fn new(
        id: Uuid,
        ws: WebSocket,
        inbox: mpsc::Receiver<Outbound>,
        state: AppState,
        hub: Hub,
        session: Session,
    ) -> Self {
        Self {
            id,
            ws,
            inbox,
            state,
            hub,
            session,
            rooms: BTreeSet::new(),
            window: (Instant::now(), 0),
            limited: false,
        }
    }

    /// Serves the socket until it closes; `join` is a room to join at once.
    pub async fn run(mut self, join: Option<String>) {
        if let Some(room) = join {
            self.join(&room).await;
        }
        let end = self.serve().await;
        if let End::Close(code, reason) = end {
            let _ = self
                .ws
                .send(Message::Close(Some(CloseFrame {
                    code,
                    reason: reason.into(),
                })))
                .await;
        }
        self.hub.remove(self.id);
        for room in std::mem::take(&mut self.rooms) {
            self.announce_leave(&room).await;
        }
    }

    async fn serve(&mut self) -> End {
        let config = self.state.config.clone();
        let ping_every = Duration::from_secs(config.websocket.ping_seconds);
        let idle = Duration::from_secs(config.websocket.idle_seconds);
        let max = config.websocket.max_message_bytes as usize;
        let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
        let mut unanswered = 0u32;
        let mut idle_at = Instant::now() + idle;
        let expires = self.session.expires;
        let stopping = self.hub.stopping();
        loop {
            tokio::select! {
                () = stopping.cancelled() => return End::Close(GOING_AWAY, "the server is restarting"),
                () = sleep_until(expires) => return End::Close(POLICY, "token expired"),
                () = tokio::time::sleep_until(idle_at) => return End::Close(NORMAL, "idle"),
                _ = ping.tick() => {
                    if unanswered >= 2 {
                        tracing::debug!(socket = %self.id, "no pong to two pings; dropping");
                        return End::Drop;
                    }
                    unanswered += 1;
                    if self.ws.send(Message::Ping(Default::default())).await.is_err() {
                        return End::Drop;
                    }
                    // Still here: vouch for this socket's presence.
                    if !self.rooms.is_empty() {
                        let rooms = self.rooms.iter().map(String::as_str);
                        let _ = presence::enter(&self.state.redis, rooms, &self.session.member, self.id).await;
                    }
                }
                out = self.inbox.recv() => match out {
                    Some(Outbound::Text(text)) => {
                        if self.ws.send(Message::Text(text.as_ref().into())).await.is_err() {
                            return End::Drop;
                        }
                    }
                    Some(Outbound::Recheck) => {
                        if !self.session_valid().await {
                            return End::Close(POLICY, "the session ended");
                        }
                    }
                    // Unregistered by the hub: this client could not keep up.
                    None => return End::Close(POLICY, "too slow to read its messages"),
                },
                message = self.ws.recv() => match message {
                    None => return End::Drop,
                    Some(Err(e)) => {
                        // Past even the transport's hard limit (tungstenite's
                        // "Space limit exceeded"): say so if we still can.
                        if e.to_string().contains("limit exceeded") {
                            return End::Close(TOO_BIG, "message too big");
                        }
                        return End::Drop;
                    }
                    Some(Ok(Message::Pong(_))) => unanswered = 0,
                    Some(Ok(Message::Ping(_))) => {}
                    Some(Ok(Message::Close(_))) => return End::Drop,
                    Some(Ok(Message::Binary(bytes))) => {
                        if bytes.len() > max {
                            return End::Close(TOO_BIG, "message too big");
                        }
                        idle_at = Instant::now() + idle;
                        if let Some(end) = self.admit() {
                            return end;
                        }
                        self.send(protocol::error(ErrorCode::InvalidMessage, "send JSON text frames")).await;
                    }
                    Some(Ok(Message::Text(text))) => {
                        if text.len() > max {
                            return End::Close(TOO_BIG, "message too big");
                        }
                        idle_at = Instant::now() + idle;
                        if let Some(end) = self.admit() {
                            return end;
                        }
                        self.handle(text.as_str()).await;
                    }
                },
            }
        }
    }

    /// Counts a message against the rate limit: `Some` closes the socket
    /// (twice the budget in one second); a refused message gets an error.
    fn admit(&mut self) -> Option<End> {
        let budget = self.state.config.websocket.messages_per_second;
        let now = Instant::now();
        if now.duration_since(self.window.0) >= Duration::from_secs(1) {
            self.window = (now, 0);
            self.limited = false;
        }
        self.window.1 += 1;
        if self.window.1 > budget * 2 {
            return Some(End::Close(POLICY, "too many messages"));
        }
        if self.window.1 > budget {
            self.limited = true;
        }
        None
    }

    async fn send(&mut self, json: String) {
        let _ = self.ws.send(Message::Text(json.into())).await;
    }

    async fn handle(&mut self, text: &str) {
        if self.limited {
            let message = format!(
                "at most {} messages a second; this one was dropped",
                self.state.config.websocket.messages_per_second
            );
            self.send(protocol::error(ErrorCode::RateLimited, &message))
                .await;
            return;
        }
        // Objects only: serde would also read `["ping"]` as a tagged message.
        let parsed = match serde_json::from_str::<serde_json::Value>(text) {
            Err(_) => Err("not JSON; send a JSON object such as {\"type\":\"ping\"}".to_owned()),
            Ok(v) if !v.is_object() => Err(
                "send a JSON object with a `type` field, such as {\"type\":\"ping\"}".to_owned(),
            ),
            Ok(v) => serde_json::from_value::<ClientMessage>(v)
                .map_err(|e| crate::extract::client_terms(&e.to_string(), "")),
        };
        let message = match parsed {
            Ok(m) => m,
            Err(message) => {
                self.send(protocol::error(ErrorCode::InvalidMessage, &message))
                    .await;
                return;
            }
        };
        match message {
            ClientMessage::Ping => self.send(ServerMessage::Pong.to_json()).await,
            ClientMessage::JoinRoom { room } => self.join(&room).await,
            ClientMessage::LeaveRoom { room } => {
                if self.rooms.remove(&room) {
                    self.hub.leave(self.id, &room);
                    self.announce_leave(&room).await;
                } else {
                    self.send(protocol::error(
                        ErrorCode::NotInRoom,
                        "you are not in that room",
                    ))
                    .await;
                }
            }
            ClientMessage::RoomMessage { room, content } => {
                if !self.rooms.contains(&room) {
                    self.send(protocol::error(ErrorCode::NotInRoom, "join the room first"))
                        .await;
                    return;
                }
                let json = ServerMessage::RoomMessage {
                    room: &room,
                    from: &self.session.member.username,
                    content: &content,
                    ts: Utc::now(),
                }
                .to_json();
                if let Err(e) = self.hub.publish_to_room(&room, &json).await {
                    tracing::warn!(error = %e, "room message not published");
                }
            }
            ClientMessage::SubscribeTasks { all } => {
                if all && !self.session.is_admin() {
                    self.send(protocol::error(
                        ErrorCode::Forbidden,
                        "only admins may follow every user's tasks",
                    ))
                    .await;
                    return;
                }
                let scope = if all { TaskScope::All } else { TaskScope::Own };
                // Subscribed first, then the current state: no change falls between.
                self.hub.follow_tasks(self.id, Some(scope));
                self.send_task_snapshot(scope).await;
            }
            ClientMessage::UnsubscribeTasks => self.hub.follow_tasks(self.id, None),
        }
    }

    async fn join(&mut self, room: &str) {
        if let Err(message) = protocol::check_room(room) {
            self.send(protocol::error(ErrorCode::InvalidRoom, &message))
                .await;
            return;
        }
        if !self.rooms.contains(room) {
            if self.rooms.len() >= self.state.config.websocket.max_rooms as usize {
                let message = format!(
                    "a socket may be in at most {} rooms",
                    self.state.config.websocket.max_rooms
                );
                self.send(protocol::error(ErrorCode::TooManyRooms, &message))
                    .await;
                return;
            }
            self.rooms.insert(room.to_owned());
            self.hub.join(self.id, room);
        }
        let member = &self.session.member;
        if let Err(e) = presence::enter(&self.state.redis, [room], member, self.id).await {
            tracing::warn!(error = %e, "presence not recorded");
        }
        self.announce(room).await;
    }

    async fn announce_leave(&mut self, room: &str) {
        let member = &self.session.member;
        if let Err(e) = presence::leave(&self.state.redis, room, member, self.id).await {
            tracing::warn!(error = %e, "presence not removed");
        }
        self.announce(room).await;
    }

    /// Has `room`'s members sent to everyone in it, on every replica.
    async fn announce(&mut self, room: &str) {
        if let Err(e) = self.hub.presence_changed(room).await {
            tracing::warn!(error = %e, "presence change not published");
        }
    }

    async fn send_task_snapshot(&mut self, scope: TaskScope) {
        let mut states = Vec::new();
        for status in [
            TaskStatus::Pending,
            TaskStatus::Running,
            TaskStatus::Retrying,
        ] {
            let filter = TaskFilter {
                owner: (scope == TaskScope::Own).then_some(self.session.member.id),
                status: Some(status),
                ..TaskFilter::default()
            };
            match tasks::list(&self.state.db, &filter, SNAPSHOT, 0).await {
                Ok((page, _)) => states.extend(page.iter().map(TaskState::from)),
                Err(e) => tracing::warn!(error = %e, "task snapshot not read"),
            }
        }
        for state in states {
            let json = serde_json::json!({"type": "task_update", "task": state}).to_string();
            self.send(json).await;
        }
    }

    /// Whether the user may still hold this socket: active, in the role it
    /// opened with, and its credential still good — a token's version and
    /// sign-in, a key not deleted, regenerated or expired. Read from
    /// Postgres, not the user cache: this runs because the user changed,
    /// and this process's cached copy may not have heard yet (rechecks are rare).
    async fn session_valid(&mut self) -> bool {
        let db = &self.state.db;
        let user = match keel_shared::db::users::find_by_id(db, self.session.member.id).await {
            Ok(Some(user)) => user,
            Ok(None) => return false,
            // Postgres is down: keep the socket; the next change rechecks.
            Err(_) => return true,
        };
        if !user.is_active || user.role != self.session.role {
            return false;
        }
        let credential = match self.session.credential {
            SocketCredential::Token { version, session } => {
                if version != user.token_version {
                    return false;
                }
                match session {
                    Some(session) => refresh_tokens::session_ended(db, session)
                        .await
                        .map(|ended| !ended),
                    None => Ok(true),
                }
            }
            SocketCredential::ApiKey { key_hash } => api_keys::find_live_by_hash(db, &key_hash)
                .await
                .map(|key| key.is_some()),
        };
        credential.unwrap_or(true)
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
