//! The `files` workload: one large file (100 MB by default) uploaded to a
//! running keel-api and downloaded again, streamed from and compared
//! against memory on this side, with the API's resident memory sampled
//! throughout. Next to it, what this machine does with the same bytes
//! without HTTP: written to a file in the API's `FILES_DIR` and read back.
//!
//! The target needs `MAX_UPLOAD_BYTES` and `USER_STORAGE_QUOTA_BYTES` of at
//! least the file (the defaults take 100 MB); the file is deleted after.

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use futures_util::{StreamExt as _, stream};
use reqwest::{
    Body,
    multipart::{Form, Part},
};
use serde_json::{Value, json};

use crate::{auth::sign_up, fleet::rss_kib};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Base URL of a running keel-api (release build, rate limits off).
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    url: String,
    /// Size of the file, in MB (10^6 bytes).
    #[arg(long, default_value_t = 100)]
    megabytes: usize,
    /// The keel-api process, to sample its resident memory.
    #[arg(long)]
    api_pid: Option<u32>,
    /// The API's `FILES_DIR`, where the ceiling's plain file is written.
    #[arg(long, default_value = ".data/files")]
    files_dir: PathBuf,
    /// Print one JSON line at the end.
    #[arg(long)]
    json: bool,
}

/// Bytes per chunk the file is sent in, as a client streaming from disk would.
const CHUNK: usize = 1024 * 1024;

pub async fn run(args: Args) -> anyhow::Result<()> {
    let size = args.megabytes * 1_000_000;
    let chunks = noise(size);
    let client = reqwest::Client::new();
    let (_, _, token) = sign_up(&client, &args.url).await?;
    let memory = args.api_pid.map(Sampler::start);
    let idle = memory.as_ref().map(Sampler::now);

    // Upload: the chunks streamed as one multipart file part.
    let body = Body::wrap_stream(stream::iter(
        chunks.clone().into_iter().map(Ok::<_, std::io::Error>),
    ));
    let form = Form::new().part(
        "file",
        Part::stream_with_length(body, size as u64).file_name("bench.bin"),
    );
    let started = Instant::now();
    let response = client
        .post(format!("{}/api/v1/files", args.url))
        .bearer_auth(&token)
        .multipart(form)
        .send()
        .await
        .context("uploading")?;
    let upload = started.elapsed();
    if !response.status().is_success() {
        bail!(
            "the upload answered {}: {}",
            response.status(),
            response.text().await.unwrap_or_default()
        );
    }
    let stored: Value = response.json().await?;
    let id = stored["items"][0]["id"]
        .as_str()
        .context("the upload's answer names no file")?
        .to_owned();
    let upload_peak = memory.as_ref().map(Sampler::take_peak);

    // Download: streamed, each byte compared with what was sent.
    let started = Instant::now();
    let response = client
        .get(format!("{}/api/v1/files/{id}/content", args.url))
        .bearer_auth(&token)
        .send()
        .await
        .context("downloading")?;
    ensure!(
        response.status().is_success(),
        "the download answered {}",
        response.status()
    );
    let expected: Vec<u8> = chunks.concat();
    let mut received = 0;
    let mut body = response.bytes_stream();
    while let Some(piece) = body.next().await {
        let piece = piece?;
        ensure!(
            expected.get(received..received + piece.len()) == Some(&piece[..]),
            "the download differs from the upload at byte {received}"
        );
        received += piece.len();
    }
    let download = started.elapsed();
    ensure!(
        received == size,
        "the download has {received} bytes of {size}"
    );
    let download_peak = memory.as_ref().map(Sampler::take_peak);
    client
        .delete(format!("{}/api/v1/files/{id}", args.url))
        .bearer_auth(&token)
        .send()
        .await?;

    let (write, read) = plain_file(&args.files_dir, &expected).await?;
    let mb_per_s = |time: Duration| size as f64 / 1e6 / time.as_secs_f64();
    println!(
        "files: one {} MB file through {} (ceiling: the same bytes as a plain file in {})",
        args.megabytes,
        args.url,
        args.files_dir.display()
    );
    println!(
        "  upload   {:>7.0} MB/s  {:>6.2} s   ceiling: write {:>7.0} MB/s",
        mb_per_s(upload),
        upload.as_secs_f64(),
        mb_per_s(write)
    );
    println!(
        "  download {:>7.0} MB/s  {:>6.2} s   ceiling: read  {:>7.0} MB/s",
        mb_per_s(download),
        download.as_secs_f64(),
        mb_per_s(read)
    );
    let mib = |kib: Option<u64>| kib.map(|k| k as f64 / 1024.0);
    if let (Some(idle), Some(up), Some(down)) = (mib(idle), mib(upload_peak), mib(download_peak)) {
        println!(
            "  keel-api RSS: {idle:.1} MiB before, peak {up:.1} MiB uploading, {down:.1} MiB downloading"
        );
    }
    if args.json {
        println!(
            "{}",
            json!({
                "megabytes": args.megabytes,
                "upload_mb_s": mb_per_s(upload),
                "download_mb_s": mb_per_s(download),
                "write_ceiling_mb_s": mb_per_s(write),
                "read_ceiling_mb_s": mb_per_s(read),
                "rss_idle_mib": mib(idle),
                "rss_upload_peak_mib": mib(upload_peak),
                "rss_download_peak_mib": mib(download_peak),
            })
        );
    }
    Ok(())
}

/// `size` bytes in [`CHUNK`]s, from xorshift64: nothing on the way can
/// compress them, and making them costs next to nothing.
fn noise(size: usize) -> Vec<bytes::Bytes> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut chunks = Vec::with_capacity(size.div_ceil(CHUNK));
    let mut left = size;
    while left > 0 {
        let len = left.min(CHUNK);
        let mut chunk = Vec::with_capacity(len + 8);
        while chunk.len() < len {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.extend_from_slice(&state.to_le_bytes());
        }
        chunk.truncate(len);
        chunks.push(bytes::Bytes::from(chunk));
        left -= len;
    }
    chunks
}

/// How long this machine takes to write `bytes` as a plain file in `dir`
/// (as the local store does: no fsync) and to read it back.
async fn plain_file(dir: &std::path::Path, bytes: &[u8]) -> anyhow::Result<(Duration, Duration)> {
    tokio::fs::create_dir_all(dir).await?;
    let path = dir.join(format!("keel-bench-{}", uuid::Uuid::new_v4()));
    let started = Instant::now();
    tokio::fs::write(&path, bytes)
        .await
        .with_context(|| format!("writing {}", path.display()))?;
    let write = started.elapsed();
    let started = Instant::now();
    let read_back = tokio::fs::read(&path).await?;
    let read = started.elapsed();
    tokio::fs::remove_file(&path).await?;
    ensure!(
        read_back.len() == bytes.len(),
        "the plain file came back short"
    );
    Ok((write, read))
}

/// Samples a process's resident memory every 10 ms, keeping the peak since
/// it was last taken.
struct Sampler {
    pid: u32,
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Sampler {
    fn start(pid: u32) -> Self {
        let (peak, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (peak_w, stop_r) = (peak.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop_r.load(Ordering::Relaxed) {
                if let Ok(kib) = rss_kib(pid) {
                    peak_w.fetch_max(kib, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        Self { pid, peak, stop }
    }

    fn now(&self) -> u64 {
        rss_kib(self.pid).unwrap_or(0)
    }

    /// The peak since the last call, and a fresh start from now.
    fn take_peak(&self) -> u64 {
        self.peak.swap(self.now(), Ordering::Relaxed)
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
