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
};
use serde::Deserialize;
use tokio::time::Instant;
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};

use self::{
    protocol::Member,
    socket::{POLICY, Session, Socket, SocketCredential},
};
use crate::{
    auth::{
        principal::{AuthMethod, Credential, authenticate, credential},
        tokens::hash_secret,
    },
    problems::problem_response,
    state::AppState,
};

/// Read and write buffers per socket: tungstenite's defaults (128 KiB each)
/// would cost more memory than everything else a socket holds; chat and
/// task updates are small, and a larger message just takes more reads.
const BUFFER_BYTES: usize = 8 * 1024;
/// The transport refuses messages and frames past this multiple of
/// `WS_MAX_MESSAGE_BYTES` outright; between the two the socket closes with
/// 1009 itself. Small, as a socket holds a message (or a frame) that has
/// not all come yet: a thousand sockets each holding 2 × 64 KiB is 128 MiB.
const HARD_LIMIT_FACTOR: usize = 2;

#[allow(deprecated)] // the alias is deprecated for clients, not for us
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(connect))
        .routes(routes!(connect_with_id))
        .routes(routes!(connect_to_room))
}

/// The message protocol, in each WebSocket operation's description.
const PROTOCOL: &str = "\
Upgrades to a WebSocket. Browsers cannot set headers on one, so the access token \
goes in `?token=`; an `Authorization: Bearer` or `X-API-Key` header works too. A \
missing or bad credential is answered after the upgrade, with close code 1008 and \
the reason, which a browser's script can see (an HTTP 401 it could not).

Every message is a JSON text frame with a `type`.

**Client → server**

| message | what |
| --- | --- |
| `{\"type\":\"join_room\",\"room\":\"lobby\"}` | join a room; its members get a `presence` |
| `{\"type\":\"leave_room\",\"room\":\"lobby\"}` | leave it |
| `{\"type\":\"room_message\",\"room\":\"lobby\",\"content\":\"hi\"}` | chat to a room you are in |
| `{\"type\":\"subscribe_tasks\"}` | live updates of your tasks, starting with the unfinished ones; `\"all\":true` (admins) for everyone's |
| `{\"type\":\"unsubscribe_tasks\"}` | stop them |
| `{\"type\":\"ping\"}` | answered with `pong` |

**Server → client**

| message | when |
| --- | --- |
| `{\"type\":\"room_message\",\"room\",\"from\",\"content\",\"ts\"}` | someone chatted in a room you are in (`from` is a username, `ts` RFC 3339) |
| `{\"type\":\"presence\",\"room\",\"users\":[{\"id\",\"username\"}]}` | a room's members changed |
| `{\"type\":\"task_update\",\"task\":{\"id\",\"status\",\"progress\",\"attempts\",\"updated_at\"}}` | a followed task changed (`TaskState`) |
| `{\"type\":\"pong\"}` | the answer to `ping` |
| `{\"type\":\"error\",\"code\",\"message\"}` | a message was refused; the socket stays open. `code`: `invalid_message`, `invalid_room`, `not_in_room`, `too_many_rooms`, `forbidden`, `rate_limited` |

Room names are 1 to 64 of `A-Z a-z 0-9 _ . -`. Messages reach the room's members \
on every API replica.

**Limits and closes.** The server pings every `WS_PING_SECONDS` (30) and drops a \
socket that misses two pongs. Close codes: 1000 idle for `WS_IDLE_SECONDS` (300); \
1001 the server is restarting; 1008 a bad credential, an expired token, a session \
ended (signed out, deactivated), more than `WS_MAX_SOCKETS_PER_USER` (10) sockets, \
more than twice `WS_MESSAGES_PER_SECOND` (20) messages in a second (past it once, a \
message is refused with `rate_limited`), or a client too slow to read; 1009 a message \
over `WS_MAX_MESSAGE_BYTES` (64 KiB). A socket may be in `WS_MAX_ROOMS` (20) rooms.";

problem_response!(
    /// 400: not a WebSocket upgrade (a header is missing or wrong).
    pub NotAnUpgrade = [BadRequest]
);

problem_response!(
    /// 403: a browser `Origin` other than the API's own or one in `ALLOWED_ORIGINS`.
    pub OriginNotAllowed = [Forbidden]
);

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct TokenQuery {
    /// An access token; or send an `Authorization: Bearer` or `X-API-Key` header.
    token: Option<String>,
}

/// Opens a WebSocket: chat, presence and live task updates.
#[utoipa::path(get, path = "/ws", tag = "websockets", operation_id = "ws_connect", description = PROTOCOL,
    security(("bearer" = []), ("api_key" = [])),
    params(TokenQuery),
    responses(
        (status = 101, description = "Switching Protocols: the WebSocket is open (then closed with 1008 if the credential is bad)"),
        (status = 400, response = inline(NotAnUpgrade)),
        (status = 403, response = inline(OriginNotAllowed)),
    ))]
async fn connect(
    State(state): State<AppState>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    accept(state, query, headers, upgrade, None).await
}

/// Alias of `/ws` from the seed API: the client id is the client's own business.
#[utoipa::path(get, path = "/ws/{client_id}", tag = "websockets", operation_id = "ws_connect_with_id", description = PROTOCOL,
    security(("bearer" = []), ("api_key" = [])),
    params(("client_id" = String, Path, description = "Any id the client likes; ignored"), TokenQuery),
    responses(
        (status = 101, description = "Switching Protocols: the WebSocket is open (then closed with 1008 if the credential is bad)"),
        (status = 400, response = inline(NotAnUpgrade)),
        (status = 403, response = inline(OriginNotAllowed)),
    ))]
#[deprecated = "use GET /ws"]
async fn connect_with_id(
    State(state): State<AppState>,
    Path(_client_id): Path<String>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    accept(state, query, headers, upgrade, None).await
}

/// Opens a WebSocket already in `room`, as if its first message were `join_room`.
#[utoipa::path(get, path = "/ws/chat/{room}", tag = "websockets", operation_id = "ws_join_room", description = PROTOCOL,
    security(("bearer" = []), ("api_key" = [])),
    params(("room" = String, Path, pattern = "^[A-Za-z0-9_.-]{1,64}$", description = "The room to join; an invalid name gets an `invalid_room` error message"), TokenQuery),
    responses(
        (status = 101, description = "Switching Protocols: the WebSocket is open, in the room (then closed with 1008 if the credential is bad)"),
        (status = 400, response = inline(NotAnUpgrade)),
        (status = 403, response = inline(OriginNotAllowed)),
    ))]
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
    let max = state.config.websocket.max_message_bytes as usize;
    let hard = max.saturating_mul(HARD_LIMIT_FACTOR);
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
            let max_sockets = state.config.websocket.max_sockets_per_user as usize;
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
    let in_headers = credential(&parts).map_err(|_| "malformed credentials")?;
    let credential = match (token, in_headers) {
        // Two credentials, one perhaps invalid: which one to believe is
        // not ours to guess (over HTTP, the header alone decides).
        (Some(_), Some(_)) => {
            return Err("send one credential: ?token= or a header, not both");
        }
        (Some(token), None) => Some(Credential::Bearer(token)),
        (None, in_headers) => in_headers,
    };
    let Some(credential) = credential else {
        return Err("sign in: pass ?token=<access token> or an X-API-Key header");
    };
    let key_hash = match &credential {
        Credential::ApiKey(key) => Some(hash_secret(key)),
        Credential::Bearer(_) => None,
    };
    let principal = authenticate(state, credential)
        .await
        .map_err(|_| "invalid or expired credentials")?;
    // A token's socket ends with the token; a key's with the key's expiry.
    let (expires_at, credential) = match principal.method {
        AuthMethod::AccessToken { session, expires } => (
            chrono::DateTime::from_timestamp(expires, 0),
            SocketCredential::Token {
                version: principal.user.token_version,
                session,
            },
        ),
        AuthMethod::ApiKey { .. } => {
            let key_hash = key_hash.ok_or("invalid or expired credentials")?;
            let key = keel_shared::db::api_keys::find_live_by_hash(&state.db, &key_hash)
                .await
                .ok()
                .flatten()
                .ok_or("invalid or expired credentials")?;
            (key.expires_at, SocketCredential::ApiKey { key_hash })
        }
    };
    let expires = expires_at.map(|at| {
        let left = (at - chrono::Utc::now()).num_seconds();
        Instant::now() + std::time::Duration::from_secs(u64::try_from(left).unwrap_or(0))
    });
    Ok(Session {
        role: principal.role(),
        credential,
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
    let origins = &state.config.http.allowed_origins;
    if origins.any || origins.list.iter().any(|o| o == origin) {
        return true;
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin.split_once("://").map(|(_, rest)| rest);
    host.is_some() && origin_host == host
}
