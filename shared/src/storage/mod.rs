//! File storage behind one interface: a local directory (the default) or
//! any S3-compatible object store, through the `object_store` crate. The
//! API streams uploads into it, the worker writes task outputs, and the
//! scheduler's maintenance sweeps objects no file row points at.

mod s3_http;

use std::{ops::Range, sync::Arc, time::Duration};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::{StreamExt as _, TryStreamExt as _, stream::BoxStream};
use object_store::{
    BackoffConfig, GetOptions, GetRange, GetResult, GetResultPayload, ObjectStore,
    ObjectStoreExt as _, RetryConfig, aws::AmazonS3Builder, buffered::BufWriter,
    local::LocalFileSystem, path::Path,
};
use secrecy::ExposeSecret as _;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt as _;

use crate::Config;

/// Where a file's bytes are, in a store shared by every process of a deployment.
#[derive(Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    location: String,
    /// Bytes an upload buffers before it writes a part.
    part_bytes: usize,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

/// The first bytes of an object, kept while it streams past, for telling
/// its type from its content.
pub const SNIFF_BYTES: usize = 8192;

/// Bytes buffered before a part goes to S3 (its smallest part is 5 MiB).
const S3_PART_BYTES: usize = 8 * 1024 * 1024;
/// Bytes buffered before a part goes to a local file: a disk takes small
/// writes as well as large ones, and each upload's buffer is memory a slow
/// client holds.
const LOCAL_PART_BYTES: usize = 256 * 1024;
/// Parts in flight at once: with the one filling, at most 3 parts of an
/// upload are in memory, whatever its size.
const PARTS_IN_FLIGHT: usize = 2;
/// A failed S3 request is tried again this often, within this long, then
/// the caller gets a 503. object_store's defaults (10 times within 3
/// minutes) would hold an upload that long when the store is down.
const S3_RETRIES: usize = 3;
const S3_RETRY_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes read per blocking call when a local file streams out.
/// object_store's own stream reads 8 KiB a call, which held a 100 MB
/// download to a seventh of what the disk gives (`keel-bench files`).
const LOCAL_READ_CHUNK: u64 = 256 * 1024;

impl Storage {
    /// The store `config` names: `S3_BUCKET` if set, otherwise `FILES_DIR`
    /// (created if missing).
    ///
    /// # Errors
    /// The directory cannot be created, or the S3 settings are unusable.
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let Some(bucket) = &config.storage.s3_bucket else {
            return Self::local(&config.storage.files_dir);
        };
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(&config.storage.s3_region)
            .with_http_connector(s3_http::Connector::new())
            .with_retry(RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: S3_RETRIES,
                retry_timeout: S3_RETRY_TIMEOUT,
            });
        if let Some(endpoint) = &config.storage.s3_endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"))
                .with_virtual_hosted_style_request(false);
        }
        match (
            &config.storage.s3_access_key_id,
            &config.storage.s3_secret_access_key,
        ) {
            (Some(id), Some(secret)) => {
                builder = builder
                    .with_access_key_id(id.expose_secret())
                    .with_secret_access_key(secret.expose_secret());
            }
            (None, None) => {}
            _ => anyhow::bail!("S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY must be set together"),
        }
        let location = match &config.storage.s3_endpoint {
            Some(endpoint) => format!("s3://{bucket} at {endpoint}"),
            None => format!("s3://{bucket}"),
        };
        Ok(Self {
            store: Arc::new(builder.build()?),
            location,
            part_bytes: S3_PART_BYTES,
        })
    }

    /// A store in the local directory `dir`.
    ///
    /// # Errors
    /// The directory cannot be created.
    pub fn local(dir: &std::path::Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("FILES_DIR {}: {e}", dir.display()))?;
        let store = LocalFileSystem::new_with_prefix(dir)?.with_automatic_cleanup(true);
        Ok(Self {
            store: Arc::new(store),
            location: dir.display().to_string(),
            part_bytes: LOCAL_PART_BYTES,
        })
    }

    /// Where the files are, for logs (no credentials).
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The most of one upload in memory at once: the part filling and
    /// those in flight.
    pub fn bytes_held_per_upload(config: &Config) -> usize {
        let part_bytes = if config.storage.s3_bucket.is_some() {
            S3_PART_BYTES
        } else {
            LOCAL_PART_BYTES
        };
        part_bytes * (PARTS_IN_FLIGHT + 1)
    }

    /// Starts writing the object `key`, refusing more than `limit` bytes.
    pub fn writer(&self, key: &str, limit: u64) -> Upload {
        Upload {
            writer: Some(
                BufWriter::with_capacity(Arc::clone(&self.store), Path::from(key), self.part_bytes)
                    .with_max_concurrency(PARTS_IN_FLIGHT),
            ),
            sha256: Sha256::new(),
            size: 0,
            limit,
            head: Vec::new(),
        }
    }

    /// Writes all of `bytes` as the object `key`.
    ///
    /// # Errors
    /// The store fails.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<Written, object_store::Error> {
        let mut upload = self.writer(key, u64::MAX);
        match upload.write(bytes).await {
            Ok(()) => upload.finish().await,
            Err(WriteError::Store(e)) => Err(e),
            Err(WriteError::TooLarge) => unreachable!("no limit was set"),
        }
    }

    /// The bytes of `key` (of `range` of it, if given) as a stream.
    ///
    /// # Errors
    /// The object is missing (`NotFound`) or the store fails.
    pub async fn get(
        &self,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<BoxStream<'static, Result<Bytes, object_store::Error>>, object_store::Error> {
        let options = GetOptions {
            range: range.map(GetRange::Bounded),
            ..GetOptions::default()
        };
        let GetResult { payload, range, .. } =
            self.store.get_opts(&Path::from(key), options).await?;
        Ok(match payload {
            GetResultPayload::File(file, _) => local_stream(file, range),
            GetResultPayload::Stream(stream) => stream,
        })
    }

    /// Deletes `key`; an object already gone is no error.
    ///
    /// # Errors
    /// The store fails.
    pub async fn delete(&self, key: &str) -> Result<(), object_store::Error> {
        match self.store.delete(&Path::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The keys under `prefix` last written before `before`, as the store
    /// lists them (a page at a time), so a caller can take them in batches
    /// however many there are; an item is an error when the store fails.
    pub fn keys_older_than(
        &self,
        prefix: &str,
        before: DateTime<Utc>,
    ) -> BoxStream<'static, Result<String, object_store::Error>> {
        self.store
            .list(Some(&Path::from(prefix)))
            .try_filter(move |meta| std::future::ready(meta.last_modified < before))
            .map_ok(|meta| meta.location.to_string())
            .boxed()
    }

    /// Whether the store answers, within `timeout`.
    pub async fn reachable(&self, timeout: Duration) -> bool {
        let listing = async { self.store.list(None).next().await.is_none_or(|r| r.is_ok()) };
        tokio::time::timeout(timeout, listing)
            .await
            .unwrap_or(false)
    }
}

/// `range` of a local `file`, read [`LOCAL_READ_CHUNK`] bytes at a time on
/// the blocking pool.
fn local_stream(
    file: std::fs::File,
    range: Range<u64>,
) -> BoxStream<'static, Result<Bytes, object_store::Error>> {
    futures_util::stream::try_unfold((file, range), |(mut file, range)| async move {
        if range.is_empty() {
            return Ok(None);
        }
        let len = (range.end - range.start).min(LOCAL_READ_CHUNK);
        let start = range.start;
        let (file, chunk) = tokio::task::spawn_blocking(move || {
            use std::io::{Read as _, Seek as _, SeekFrom};
            let mut chunk = vec![0; usize::try_from(len).unwrap_or(usize::MAX)];
            file.seek(SeekFrom::Start(start))?;
            file.read_exact(&mut chunk)?;
            Ok::<_, std::io::Error>((file, chunk))
        })
        .await
        .map_err(|e| local_error(e.into()))?
        .map_err(|e| local_error(e.into()))?;
        Ok(Some((Bytes::from(chunk), (file, start + len..range.end))))
    })
    .boxed()
}

fn local_error(source: Box<dyn std::error::Error + Send + Sync>) -> object_store::Error {
    object_store::Error::Generic {
        store: "LocalFileSystem",
        source,
    }
}

/// An object being written: bytes are hashed, counted and checked against
/// the limit as they pass, so the whole never sits in memory.
pub struct Upload {
    writer: Option<BufWriter>,
    sha256: Sha256,
    size: u64,
    limit: u64,
    head: Vec<u8>,
}

impl std::fmt::Debug for Upload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upload")
            .field("size", &self.size)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

/// Why a write stopped.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("the file is larger than the limit")]
    TooLarge,
    #[error(transparent)]
    Store(#[from] object_store::Error),
}

/// What was written.
#[derive(Debug, Clone)]
pub struct Written {
    pub size: u64,
    pub sha256: [u8; 32],
    /// The first [`SNIFF_BYTES`] bytes.
    pub head: Vec<u8>,
}

impl Upload {
    /// Bytes so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends `chunk`. Past the limit the object is abandoned (call
    /// [`Upload::abort`]) and [`WriteError::TooLarge`] returned.
    ///
    /// # Errors
    /// Past the limit, or the store fails.
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), WriteError> {
        self.size += chunk.len() as u64;
        if self.size > self.limit {
            return Err(WriteError::TooLarge);
        }
        if self.head.len() < SNIFF_BYTES {
            let take = (SNIFF_BYTES - self.head.len()).min(chunk.len());
            self.head.extend_from_slice(&chunk[..take]);
        }
        self.sha256.update(&chunk);
        let writer = self.writer.as_mut().expect("written after finish");
        writer.put(chunk).await?;
        Ok(())
    }

    /// Completes the object.
    ///
    /// # Errors
    /// The store fails.
    pub async fn finish(mut self) -> Result<Written, object_store::Error> {
        let mut writer = self.writer.take().expect("finished once");
        writer
            .shutdown()
            .await
            .map_err(|e| object_store::Error::Generic {
                store: "storage",
                source: Box::new(e),
            })?;
        Ok(Written {
            size: self.size,
            sha256: self.sha256.clone().finalize().into(),
            head: std::mem::take(&mut self.head),
        })
    }

    /// Abandons the object: nothing of it stays in the store (a multipart
    /// upload is aborted, a local temporary file removed).
    pub async fn abort(mut self) {
        if let Some(mut writer) = self.writer.take()
            && let Err(e) = writer.abort().await
        {
            tracing::warn!(error = %e, "could not abort an unfinished upload");
        }
    }
}

impl Drop for Upload {
    /// An upload dropped unfinished (its request timed out, or its handler
    /// panicked) is aborted in the background: an S3 multipart upload left
    /// open keeps its parts, which no listing shows and so no orphan sweep
    /// removes.
    fn drop(&mut self) {
        if let Some(mut writer) = self.writer.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                if let Err(e) = writer.abort().await {
                    tracing::warn!(error = %e, "could not abort a dropped upload");
                }
            });
        }
    }
}
