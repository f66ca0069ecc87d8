//! WebSockets: `GET /ws`, `/ws/{client_id}` and `/ws/chat/{room}` — rooms
//! with presence, chat, and live task updates, across every API replica
//! through Redis pub/sub (see [`hub`]).
//!
//! - [`protocol`]: the JSON messages both ways and the error codes.
//! - [`hub`]: this process's sockets, fed by one pub/sub subscription.
//! - [`presence`]: who is in a room, kept in Redis for every replica.
//! - [`socket`]: one socket's loop and its limits.

pub mod hub;
pub mod presence;
pub mod protocol;
pub mod socket;

use axum::{
    extract::{Path, Query, State, WebSocketUpgrade, ws::Message},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Deserialize;
use tokio::time::Instant;
use utoipa_axum::router::OpenApiRouter;

use self::{
    protocol::Member,
    socket::{POLICY, Session, Socket},
};
use crate::{
    auth::principal::{AuthMethod, Credential, authenticate, credential},
    state::AppState,
};

/// Read and write buffers per socket: tungstenite's defaults (128 KiB each)
/// would cost more memory than everything else a socket holds; chat and
/// task updates are small, and a larger message just takes more reads.
const BUFFER_BYTES: usize = 8 * 1024;
/// The transport refuses messages past this multiple of `WS_MAX_MESSAGE_BYTES`
/// outright; between the two the socket closes with 1009 itself.
const HARD_LIMIT_FACTOR: usize = 4;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .route("/ws", get(connect))
        .route("/ws/{client_id}", get(connect_with_id))
        .route("/ws/chat/{room}", get(connect_to_room))
}

#[derive(Debug, Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

async fn connect(
    State(state): State<AppState>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    accept(state, query, headers, upgrade, None).await
}

/// The seed's path: the client id is the client's own business.
async fn connect_with_id(
    State(state): State<AppState>,
    Path(_client_id): Path<String>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    accept(state, query, headers, upgrade, None).await
}

async fn connect_to_room(
    State(state): State<AppState>,
    Path(room): Path<String>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    accept(state, query, headers, upgrade, Some(room)).await
}

/// Checks the origin, then upgrades; a missing or bad credential is
/// answered after the upgrade with close 1008, which browsers can see (an
/// HTTP 401 before it reaches a browser's script only as a failed connect).
async fn accept(
    state: AppState,
    query: TokenQuery,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
    join: Option<String>,
) -> Response {
    if !origin_allowed(&state, &headers) {
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    let session = open_session(&state, query.token.as_deref(), headers).await;
    let max = state.config.ws_max_message_bytes as usize;
    let hard = (max * HARD_LIMIT_FACTOR).max(1 << 20);
    upgrade
        .read_buffer_size(BUFFER_BYTES)
        .write_buffer_size(BUFFER_BYTES)
        .max_message_size(hard)
        .max_frame_size(hard)
        .on_upgrade(move |mut ws| async move {
            let session = match session {
                Ok(session) => session,
                Err(reason) => {
                    let _ = ws.send(close(POLICY, reason)).await;
                    return;
                }
            };
            let hub = state.hub.clone();
            let max_sockets = state.config.ws_max_sockets_per_user as usize;
            let Some((id, inbox)) = hub.add(session.member.id, max_sockets) else {
                let _ = ws.send(close(POLICY, "too many open sockets")).await;
                return;
            };
            Socket::new(id, ws, inbox, state, hub, session)
                .run(join)
                .await;
        })
}

fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(axum::extract::ws::CloseFrame {
        code,
        reason: reason.into(),
    }))
}

/// The `?token=` access token, or the request's `Authorization` or
/// `X-API-Key` header; `Err` is the close reason.
async fn open_session(
    state: &AppState,
    token: Option<&str>,
    headers: HeaderMap,
) -> Result<Session, &'static str> {
    let (mut parts, ()) = axum::http::Request::new(()).into_parts();
    parts.headers = headers;
    let credential = match token {
        Some(token) => Some(Credential::Bearer(token)),
        None => credential(&parts).map_err(|_| "malformed credentials")?,
    };
    let Some(credential) = credential else {
        return Err("sign in: pass ?token=<access token> or an X-API-Key header");
    };
    let bearer = match &credential {
        Credential::Bearer(token) => state.tokens.verify_access(token).ok(),
        Credential::ApiKey(_) => None,
    };
    let principal = authenticate(state, credential)
        .await
        .map_err(|_| "invalid or expired credentials")?;
    let expires = bearer.as_ref().map(|claims| {
        let left = claims.exp - chrono::Utc::now().timestamp();
        Instant::now() + std::time::Duration::from_secs(u64::try_from(left).unwrap_or(0))
    });
    Ok(Session {
        is_admin: principal.is_admin(),
        token_version: match principal.method {
            AuthMethod::AccessToken => bearer.map(|c| c.ver),
            AuthMethod::ApiKey { .. } => None,
        },
        expires,
        member: Member {
            id: principal.user.id,
            username: principal.user.username.clone(),
        },
    })
}

/// No `Origin` (not a browser), the API's own origin, or one in `ALLOWED_ORIGINS`.
fn origin_allowed(state: &AppState, headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
        return true;
    };
    let origins = &state.config.allowed_origins;
    if origins.any || origins.list.iter().any(|o| o == origin) {
        return true;
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin.split_once("://").map(|(_, rest)| rest);
    host.is_some() && origin_host == host
}
