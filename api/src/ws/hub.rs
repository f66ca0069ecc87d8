//! The hub: this API process's WebSockets, the rooms they are in and the
//! task updates they follow, fed by one Redis pub/sub connection — so what
//! any replica publishes (a room message, a presence change, a task
//! update, a user's session ending) reaches the sockets on all of them.
//! The subscription is kept with backoff; while it is down, sockets stay
//! open and simply hear nothing from other replicas.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use futures_util::StreamExt as _;
use keel_shared::RedisClient;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A room's presence changes within this window reach its members as one
/// list: a thousand members joining at once would otherwise send each of
/// them a thousand lists.
const PRESENCE_COALESCE: Duration = Duration::from_millis(50);

/// Messages a socket may have waiting; a client that reads slower than
/// this is dropped rather than buffered without bound.
pub const OUTBOX: usize = 256;

/// What the hub hands a socket's task (cheap to clone: text is shared).
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A JSON text frame to send.
    Text(Arc<str>),
    /// The user changed (deactivated, signed out everywhere): check the session.
    Recheck,
}

/// Whose task updates a socket follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskScope {
    Own,
    All,
}

#[derive(Debug)]
struct Socket {
    user: Uuid,
    outbox: mpsc::Sender<Outbound>,
    tasks: Option<TaskScope>,
}

#[derive(Debug, Default)]
struct Registry {
    sockets: HashMap<Uuid, Socket>,
    rooms: HashMap<String, HashSet<Uuid>>,
    users: HashMap<Uuid, HashSet<Uuid>>,
}

/// This process's sockets; cheap to clone.
#[derive(Debug, Clone)]
pub struct Hub {
    redis: RedisClient,
    registry: Arc<Mutex<Registry>>,
    /// Cancelled when the process stops: every socket closes with 1001.
    stopping: CancellationToken,
    /// Rooms whose presence list is about to be sent.
    presence_due: Arc<Mutex<HashSet<String>>>,
}

impl Hub {
    pub fn new(redis: RedisClient) -> Self {
        // Shown as 0 until the first socket, rather than missing.
        metrics::gauge!("keel_ws_connections").set(0.0);
        Self {
            redis,
            registry: Arc::default(),
            stopping: CancellationToken::new(),
            presence_due: Arc::default(),
        }
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn stopping(&self) -> CancellationToken {
        self.stopping.clone()
    }

    /// Sockets open in this process.
    pub fn len(&self) -> usize {
        self.registry().sockets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Registers a socket of `user`, unless the user already has `max` here.
    pub fn add(&self, user: Uuid, max: usize) -> Option<(Uuid, mpsc::Receiver<Outbound>)> {
        let mut registry = self.registry();
        let mine = registry.users.entry(user).or_default();
        if mine.len() >= max {
            return None;
        }
        let id = Uuid::new_v4();
        mine.insert(id);
        let (outbox, inbox) = mpsc::channel(OUTBOX);
        registry.sockets.insert(
            id,
            Socket {
                user,
                outbox,
                tasks: None,
            },
        );
        metrics::gauge!("keel_ws_connections").set(registry.sockets.len() as f64);
        Some((id, inbox))
    }

    /// Forgets a socket (and its rooms: the caller updates presence).
    pub fn remove(&self, id: Uuid) {
        let mut registry = self.registry();
        if let Some(socket) = registry.sockets.remove(&id)
            && let Some(mine) = registry.users.get_mut(&socket.user)
        {
            mine.remove(&id);
            if mine.is_empty() {
                registry.users.remove(&socket.user);
            }
        }
        registry.rooms.retain(|_, members| {
            members.remove(&id);
            !members.is_empty()
        });
        metrics::gauge!("keel_ws_connections").set(registry.sockets.len() as f64);
    }

    pub fn join(&self, id: Uuid, room: &str) {
        self.registry()
            .rooms
            .entry(room.to_owned())
            .or_default()
            .insert(id);
    }

    pub fn leave(&self, id: Uuid, room: &str) {
        let mut registry = self.registry();
        if let Some(members) = registry.rooms.get_mut(room) {
            members.remove(&id);
            if members.is_empty() {
                registry.rooms.remove(room);
            }
        }
    }

    pub fn follow_tasks(&self, id: Uuid, scope: Option<TaskScope>) {
        if let Some(socket) = self.registry().sockets.get_mut(&id) {
            socket.tasks = scope;
        }
    }

    /// Publishes `json` to the members of `room` on every replica.
    ///
    /// # Errors
    /// Redis is unreachable.
    pub async fn publish_to_room(&self, room: &str, json: &str) -> redis::RedisResult<()> {
        redis::cmd("PUBLISH")
            .arg(room_channel(&self.redis, room))
            .arg(json)
            .exec_async(&mut self.redis.conn())
            .await
    }

    /// Tells every replica that `room`'s members changed; each sends its
    /// own members the list, once per [`PRESENCE_COALESCE`].
    ///
    /// # Errors
    /// Redis is unreachable.
    pub async fn presence_changed(&self, room: &str) -> redis::RedisResult<()> {
        redis::cmd("PUBLISH")
            .arg(self.redis.key(&format!("ws:presence-changed:{room}")))
            .arg("")
            .exec_async(&mut self.redis.conn())
            .await
    }

    fn send_presence_soon(&self, room: &str) {
        if !self
            .presence_due
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(room.to_owned())
        {
            return;
        }
        let (hub, room) = (self.clone(), room.to_owned());
        tokio::spawn(async move {
            tokio::time::sleep(PRESENCE_COALESCE).await;
            hub.presence_due
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&room);
            let users = match super::presence::list(&hub.redis, &room).await {
                Ok(users) => users,
                Err(e) => {
                    tracing::warn!(error = %e, "presence not read");
                    return;
                }
            };
            let json = super::protocol::ServerMessage::Presence {
                room: &room,
                users: &users,
            }
            .to_json();
            hub.deliver(Outbound::Text(json.into()), |r| {
                r.rooms
                    .get(&room)
                    .map(|m| m.iter().copied().collect())
                    .unwrap_or_default()
            });
        });
    }

    /// Hands `message` to every local socket `to` picks. A socket whose
    /// outbox is full reads slower than messages come: it is unregistered,
    /// which closes its outbox, and its task closes it.
    fn deliver(&self, message: Outbound, to: impl Fn(&Registry) -> Vec<Uuid>) {
        let mut slow = Vec::new();
        let registry = self.registry();
        for id in to(&registry) {
            let Some(socket) = registry.sockets.get(&id) else {
                continue;
            };
            if let Err(mpsc::error::TrySendError::Full(_)) = socket.outbox.try_send(message.clone())
            {
                slow.push(id);
            }
        }
        drop(registry);
        for id in slow {
            tracing::info!(socket = %id, "dropping a WebSocket that falls behind");
            self.remove(id);
        }
    }

    fn on_message(&self, channel: &str, payload: String) {
        let prefix = self.redis.key("");
        let Some(name) = channel.strip_prefix(&prefix) else {
            return;
        };
        if let Some(room) = name.strip_prefix("ws:presence-changed:") {
            self.send_presence_soon(room);
        } else if let Some(room) = name.strip_prefix("ws:room:") {
            self.deliver(Outbound::Text(payload.into()), |r| {
                r.rooms
                    .get(room)
                    .map(|m| m.iter().copied().collect())
                    .unwrap_or_default()
            });
        } else if let Some(owner) = name.strip_prefix("task-events:") {
            let Ok(owner) = owner.parse::<Uuid>() else {
                return;
            };
            // The payload is the task's state as JSON: wrap it, don't re-parse it.
            let text: Arc<str> = format!(r#"{{"type":"task_update","task":{payload}}}"#).into();
            self.deliver(Outbound::Text(text), |r| {
                r.sockets
                    .iter()
                    .filter(|(_, s)| match s.tasks {
                        Some(TaskScope::All) => true,
                        Some(TaskScope::Own) => s.user == owner,
                        None => false,
                    })
                    .map(|(id, _)| *id)
                    .collect()
            });
        } else if name == "user-invalidations" {
            let Ok(user) = payload.parse::<Uuid>() else {
                return;
            };
            self.deliver(Outbound::Recheck, |r| {
                r.users
                    .get(&user)
                    .map(|m| m.iter().copied().collect())
                    .unwrap_or_default()
            });
        }
    }

    /// Keeps the subscription until `shutdown`, reconnecting with backoff;
    /// then tells every socket to close.
    pub fn listen(&self, shutdown: CancellationToken) {
        let hub = self.clone();
        tokio::spawn(async move {
            let patterns = [
                hub.redis.key("ws:room:*"),
                hub.redis.key("ws:presence-changed:*"),
                hub.redis.key("task-events:*"),
                hub.redis.key("user-invalidations"),
            ];
            let mut backoff = Duration::from_millis(100);
            loop {
                let subscribed = async {
                    let mut pubsub = hub.redis.pubsub().await?;
                    for pattern in &patterns {
                        pubsub.psubscribe(pattern).await?;
                    }
                    Ok::<_, redis::RedisError>(pubsub)
                };
                let pubsub = tokio::select! {
                    () = shutdown.cancelled() => break,
                    r = subscribed => r,
                };
                match pubsub {
                    Ok(pubsub) => {
                        backoff = Duration::from_millis(100);
                        let mut messages = pubsub.into_on_message();
                        loop {
                            let message = tokio::select! {
                                () = shutdown.cancelled() => break,
                                m = messages.next() => m,
                            };
                            let Some(message) = message else { break };
                            if let Ok(payload) = message.get_payload::<String>() {
                                hub.on_message(message.get_channel_name(), payload);
                            }
                        }
                        if shutdown.is_cancelled() {
                            break;
                        }
                        tracing::warn!("WebSocket hub lost Redis pub/sub; resubscribing");
                    }
                    Err(e) => tracing::debug!(error = %e, "WebSocket hub cannot subscribe yet"),
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            hub.stopping.cancel();
        });
    }
}

fn room_channel(redis: &RedisClient, room: &str) -> String {
    redis.key(&format!("ws:room:{room}"))
}
