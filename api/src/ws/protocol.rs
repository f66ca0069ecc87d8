//! The WebSocket messages, as JSON text frames: what clients send, what the
//! server sends back, and the error codes that answer a bad message
//! without closing the socket.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Longest room name.
const MAX_ROOM_CHARS: usize = 64;

/// A client's message.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    JoinRoom {
        room: String,
    },
    LeaveRoom {
        room: String,
    },
    RoomMessage {
        room: String,
        content: String,
    },
    /// Own tasks; `all` (admins) everyone's.
    SubscribeTasks {
        #[serde(default)]
        all: bool,
    },
    UnsubscribeTasks,
    Ping,
}

/// A member of a room, as presence lists them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Member {
    pub username: String,
    pub id: Uuid,
}

/// A server message. Task updates are assembled from the published state
/// (see `hub`), so they have no variant here.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage<'a> {
    RoomMessage {
        room: &'a str,
        from: &'a str,
        content: &'a str,
        ts: DateTime<Utc>,
    },
    Presence {
        room: &'a str,
        users: &'a [Member],
    },
    Pong,
    Error {
        code: ErrorCode,
        message: &'a str,
    },
}

impl ServerMessage<'_> {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a server message serialises")
    }
}

/// Why a message was refused; the socket stays open.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, an unknown type, or a missing field.
    InvalidMessage,
    InvalidRoom,
    NotInRoom,
    TooManyRooms,
    /// Only admins may follow every user's tasks.
    Forbidden,
    RateLimited,
}

/// An error message for the client.
pub fn error(code: ErrorCode, message: &str) -> String {
    ServerMessage::Error { code, message }.to_json()
}

/// A room name: 1 to 64 of `A-Z a-z 0-9 _ . -`.
///
/// # Errors
/// The name breaks that rule; the message says how.
pub fn check_room(room: &str) -> Result<(), String> {
    let valid = !room.is_empty()
        && room.len() <= MAX_ROOM_CHARS
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "a room name is 1 to {MAX_ROOM_CHARS} of A-Z, a-z, 0-9, `_`, `.` and `-`"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_parse_and_unknown_ones_do_not() {
        assert_eq!(
            serde_json::from_str::<ClientMessage>(r#"{"type":"join_room","room":"a"}"#).unwrap(),
            ClientMessage::JoinRoom { room: "a".into() }
        );
        assert_eq!(
            serde_json::from_str::<ClientMessage>(r#"{"type":"subscribe_tasks"}"#).unwrap(),
            ClientMessage::SubscribeTasks { all: false }
        );
        for bad in [
            r#"{"type":"shout"}"#,
            r#"{"type":"room_message","room":"a"}"#,
            "not json",
        ] {
            assert!(serde_json::from_str::<ClientMessage>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn room_names() {
        assert!(check_room("lobby-1.a_b").is_ok());
        for bad in ["", "a b", "ü", &"x".repeat(65)] {
            assert!(check_room(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn server_messages_have_the_documented_shape() {
        assert_eq!(ServerMessage::Pong.to_json(), r#"{"type":"pong"}"#);
        assert_eq!(
            error(ErrorCode::NotInRoom, "join first"),
            r#"{"type":"error","code":"not_in_room","message":"join first"}"#
        );
    }
}
