//! The `ws` workload: WebSockets held open and a room broadcast, against a
//! running API.
//!
//! 1. Held: `--connections` sockets opened and kept (each read, so pings
//!    are answered); the API's resident memory before and after gives the
//!    memory per connection (`--api-pid`).
//! 2. Broadcast: `--room-size` of them join one room; one member sends
//!    `--messages` messages, each carrying its send time; every member
//!    records send → receive. Latency is over every delivery.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::fleet::rss_kib;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The API's base URL (run it with `WS_MAX_SOCKETS_PER_USER` at least `--connections`
    /// and `RATE_LIMIT_ENABLED=false`).
    #[arg(long, default_value = "http://127.0.0.1:18080")]
    url: String,
    /// Sockets held open.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Members of the broadcast room (the first sockets).
    #[arg(long, default_value_t = 1000)]
    room_size: usize,
    /// Messages sent to the room, 20 a second.
    #[arg(long, default_value_t = 100)]
    messages: usize,
    /// The API's process id, for its resident memory.
    #[arg(long)]
    api_pid: Option<u32>,
    /// Print one JSON object as the last line too.
    #[arg(long)]
    json: bool,
}

type Latencies = Arc<Mutex<Histogram<u64>>>;

pub async fn run(args: Args) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let (_, _, token) = crate::auth::sign_up(&client, &args.url).await?;
    let ws_url = format!(
        "{}/ws?token={token}",
        args.url.replacen("http", "ws", 1).trim_end_matches('/')
    );
    let rss_before = args.api_pid.map(rss_kib).transpose()?;

    // Held: connect in waves, then read each socket in its own task.
    let started = Instant::now();
    let latencies: Latencies = Arc::new(Mutex::new(Histogram::new(3)?));
    let mut senders = Vec::with_capacity(args.connections);
    let mut next = 0;
    while next < args.connections {
        let wave = (args.connections - next).min(200);
        let connects = (0..wave).map(|_| tokio_tungstenite::connect_async(ws_url.clone()));
        for result in futures_util::future::join_all(connects).await {
            let (socket, _) = result.context("a WebSocket connect failed")?;
            let (sink, mut stream) = socket.split();
            let latencies = latencies.clone();
            tokio::spawn(async move {
                while let Some(Ok(message)) = stream.next().await {
                    if let Message::Text(text) = message {
                        record(&latencies, &text);
                    }
                }
            });
            senders.push(sink);
        }
        next += wave;
    }
    let connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = args.api_pid.map(rss_kib).transpose()?;
    let per_connection_kib = match (rss_before, rss_after) {
        (Some(before), Some(after)) => {
            Some(after.saturating_sub(before) as f64 / args.connections as f64)
        }
        _ => None,
    };

    // Broadcast.
    let members = args.room_size.min(senders.len());
    for sink in senders.iter_mut().take(members) {
        sink.send(Message::text(
            json!({"type": "join_room", "room": "bench"}).to_string(),
        ))
        .await?;
    }
    // Presence settles (lists are coalesced), then the measured messages.
    tokio::time::sleep(Duration::from_secs(3)).await;
    latencies.lock().expect("histogram").reset();
    let Some(sender) = senders.first_mut() else {
        bail!("no sockets");
    };
    for _ in 0..args.messages {
        let sent = chrono::Utc::now().timestamp_micros();
        sender
            .send(Message::text(
                json!({"type": "room_message", "room": "bench", "content": sent.to_string()})
                    .to_string(),
            ))
            .await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let latency = latencies.lock().expect("histogram").clone();
    let expected = (members * args.messages) as u64;

    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "ws: {} sockets held, a room of {members}, {} messages\n",
        args.connections, args.messages
    );
    println!("| measure | value |");
    println!("| --- | ---: |");
    println!(
        "| sockets opened | {} in {connect_secs:.1} s |",
        senders.len()
    );
    match per_connection_kib {
        Some(kib) => println!("| API memory per socket (RSS) | {kib:.1} KiB |"),
        None => println!("| API memory per socket (RSS) | pass --api-pid |"),
    }
    println!(
        "| room broadcast, send → receive | p50 {:.2} ms · p99 {:.2} ms · max {:.2} ms ({} of {expected} delivered) |",
        ms(0.5),
        ms(0.99),
        latency.max() as f64 / 1000.0,
        latency.len()
    );
    if args.json {
        println!(
            "{}",
            json!({
                "connections": senders.len(), "connect_secs": connect_secs,
                "kib_per_socket": per_connection_kib, "room": members, "messages": args.messages,
                "delivered": latency.len(), "expected": expected,
                "p50_ms": ms(0.5), "p99_ms": ms(0.99), "max_ms": latency.max() as f64 / 1000.0,
            })
        );
    }
    Ok(())
}

/// Records a room message's send → receive time (its content is the send time in µs).
fn record(latencies: &Latencies, text: &str) {
    let Ok(message) = serde_json::from_str::<Value>(text) else {
        return;
    };
    if message["type"] != "room_message" {
        return;
    }
    let Some(sent) = message["content"]
        .as_str()
        .and_then(|c| c.parse::<i64>().ok())
    else {
        return;
    };
    let micros = chrono::Utc::now().timestamp_micros() - sent;
    if let Ok(micros) = u64::try_from(micros) {
        let _ = latencies.lock().expect("histogram").record(micros.max(1));
    }
}
