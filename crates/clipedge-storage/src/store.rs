use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clipedge_io::{check_limit, error_chain, ObjectSource, ReadPolicy, SourceError};
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    ClientOptions, GetOptions, ObjectStore, PutMode, PutOptions, PutPayload, RetryConfig,
    UpdateVersion,
};
use tracing::{debug, warn};

use crate::{IoStats, StorageError};

/// Tuning of [`Storage`]; the defaults suit S3 (about 60 ms to first byte).
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// Attempts after the first for transient failures.
    pub retries: u32,
    /// First backoff; doubles each attempt.
    pub backoff: Duration,
    /// Two ranges of one object closer than this are fetched with one GET: a wasted
    /// gap is cheaper than a round trip.
    pub coalesce_gap_bytes: u64,
    /// A coalesced GET never grows past this.
    pub max_coalesced_bytes: u64,
    /// GETs in flight at once per call.
    pub max_concurrency: usize,
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            retries: 3,
            backoff: Duration::from_millis(50),
            coalesce_gap_bytes: 256 * 1024,
            max_coalesced_bytes: 64 * 1024 * 1024,
            max_concurrency: 16,
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// Object bytes with the version tag a conditional write must name.
#[derive(Debug, Clone)]
pub struct Versioned {
    pub bytes: Bytes,
    pub e_tag: Option<String>,
    pub version: Option<String>,
}

/// One object found by [`Storage::list_objects`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Name relative to the storage root.
    pub name: String,
    pub bytes: u64,
    /// When the object was last written, as the backend reports it.
    pub last_modified_unix_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Local,
    S3,
    Memory,
}

/// A root location (local directory, `s3://bucket/prefix`, or `memory://`) and the I/O policy around it.
#[derive(Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    root: Path,
    location: String,
    backend: Backend,
    config: StorageConfig,
    stats: Arc<IoStats>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("location", &self.location)
            .finish()
    }
}

impl Storage {
    /// Opens `location`: a plain path or `file://` URL (created if missing), `s3://bucket/prefix`
    /// (credentials, region and endpoint from the usual `AWS_*` variables; `AWS_ENDPOINT_URL` and
    /// `AWS_ALLOW_HTTP=true` for a local S3-compatible server), or `memory://` for tests.
    /// A local directory must exist: readers should not leave directories behind.
    pub fn open(location: &str) -> Result<Storage, StorageError> {
        Storage::open_with(location, StorageConfig::default())
    }

    /// Like [`Storage::open`], but creates a missing local directory (for writers).
    pub fn open_or_create(location: &str) -> Result<Storage, StorageError> {
        Storage::open_inner(location, StorageConfig::default(), true)
    }

    pub fn open_with(location: &str, config: StorageConfig) -> Result<Storage, StorageError> {
        Storage::open_inner(location, config, false)
    }

    fn open_inner(
        location: &str,
        config: StorageConfig,
        create_missing: bool,
    ) -> Result<Storage, StorageError> {
        let invalid = |reason: String| StorageError::InvalidLocation {
            location: location.to_string(),
            reason,
        };
        if location.trim().is_empty() {
            return Err(invalid("empty location".to_string()));
        }
        if location == "memory://" {
            return Ok(Storage::from_store(
                Arc::new(InMemory::new()),
                Path::default(),
                location,
                Backend::Memory,
                config,
            ));
        }
        if let Some(rest) = location.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(invalid("s3 url has no bucket".to_string()));
            }
            let allow_http = std::env::var("AWS_ALLOW_HTTP")
                .is_ok_and(|value| value.eq_ignore_ascii_case("true"));
            let client_options = ClientOptions::new()
                .with_allow_http(allow_http)
                .with_timeout(config.request_timeout)
                .with_connect_timeout(config.connect_timeout);
            // Retries are ours (counted, same policy for every backend), so the client's are off.
            let retry = RetryConfig {
                max_retries: 0,
                ..RetryConfig::default()
            };
            let mut builder = AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_client_options(client_options)
                .with_retry(retry);
            if std::env::var("AWS_REGION").is_err() && std::env::var("AWS_DEFAULT_REGION").is_err()
            {
                builder = builder.with_region("us-east-1");
            }
            let store = builder
                .build()
                .map_err(|error| invalid(error.to_string()))?;
            let root = Path::parse(prefix.trim_end_matches('/'))
                .map_err(|error| invalid(error.to_string()))?;
            return Ok(Storage::from_store(
                Arc::new(store),
                root,
                location,
                Backend::S3,
                config,
            ));
        }
        let local_path = match location.strip_prefix("file://") {
            Some(path) => path,
            None if location.contains("://") => {
                return Err(invalid(
                    "supported schemes are s3://, file:// and memory://, or a plain path"
                        .to_string(),
                ))
            }
            None => location,
        };
        if create_missing {
            std::fs::create_dir_all(local_path)
                .map_err(|error| invalid(format!("cannot create directory: {error}")))?;
        } else if !std::path::Path::new(local_path).is_dir() {
            return Err(invalid("no such directory".to_string()));
        }
        let store = LocalFileSystem::new_with_prefix(local_path)
            .map_err(|error| invalid(error.to_string()))?
            .with_automatic_cleanup(true);
        Ok(Storage::from_store(
            Arc::new(store),
            Path::default(),
            location,
            Backend::Local,
            config,
        ))
    }

    fn from_store(
        store: Arc<dyn ObjectStore>,
        root: Path,
        location: &str,
        backend: Backend,
        config: StorageConfig,
    ) -> Storage {
        Storage {
            store,
            root,
            location: location.to_string(),
            backend,
            config,
            stats: Arc::new(IoStats::default()),
        }
    }

    /// The location this storage was opened with.
    pub fn location(&self) -> &str {
        &self.location
    }

    pub fn config(&self) -> &StorageConfig {
        &self.config
    }

    pub fn stats(&self) -> &IoStats {
        &self.stats
    }

    fn path(&self, name: &str) -> Path {
        self.root.parts().chain(Path::from(name).parts()).collect()
    }

    /// Runs `attempt` until it succeeds, fails permanently, or the retries run out.
    async fn with_retries<T, F, Fut>(&self, name: &str, mut attempt: F) -> Result<T, StorageError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = object_store::Result<T>>,
    {
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            match attempt().await {
                Ok(value) => return Ok(value),
                Err(error)
                    if StorageError::is_permanent(&error) || attempts > self.config.retries =>
                {
                    return Err(StorageError::from_backend(name, attempts, error));
                }
                Err(error) => {
                    let delay = self.config.backoff * 2u32.pow(attempts - 1);
                    warn!(object = name, attempt = attempts, ?delay, %error, "retrying storage request");
                    self.stats.record_retry();
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Whole object.
    pub async fn get(&self, name: &str) -> Result<Bytes, StorageError> {
        Ok(self.get_versioned(name).await?.bytes)
    }

    /// Whole object with its version tag, for a later conditional write.
    pub async fn get_versioned(&self, name: &str) -> Result<Versioned, StorageError> {
        let path = self.path(name);
        let versioned = self
            .with_retries(name, || async {
                let result = self.store.get(&path).await?;
                let e_tag = result.meta.e_tag.clone();
                let version = result.meta.version.clone();
                let bytes = result.bytes().await?;
                Ok(Versioned {
                    bytes,
                    e_tag,
                    version,
                })
            })
            .await?;
        self.stats.record_get(versioned.bytes.len() as u64);
        Ok(versioned)
    }

    /// Whole object, or `None` if it does not exist.
    pub async fn get_if_exists(&self, name: &str) -> Result<Option<Versioned>, StorageError> {
        match self.get_versioned(name).await {
            Ok(versioned) => Ok(Some(versioned)),
            Err(StorageError::NotFound { .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// One range GET.
    pub async fn get_range(&self, name: &str, range: Range<u64>) -> Result<Bytes, StorageError> {
        let path = self.path(name);
        let (start, end) = (range.start, range.end);
        let bytes = self
            .with_retries(name, || {
                let options = GetOptions {
                    range: Some(object_store::GetRange::Bounded(start..end)),
                    ..GetOptions::default()
                };
                let path = &path;
                async move { self.store.get_opts(path, options).await?.bytes().await }
            })
            .await?;
        if bytes.len() as u64 != end - start {
            return Err(StorageError::Range {
                path: name.to_string(),
                start,
                end,
            });
        }
        self.stats.record_get(bytes.len() as u64);
        Ok(bytes)
    }

    /// Writes a new object; fails with [`StorageError::AlreadyExists`] rather than overwrite one.
    pub async fn put_new(&self, name: &str, bytes: Bytes) -> Result<(), StorageError> {
        let path = self.path(name);
        let length = bytes.len() as u64;
        let payload = PutPayload::from_bytes(bytes);
        self.with_retries(name, || {
            let options = PutOptions {
                mode: PutMode::Create,
                ..PutOptions::default()
            };
            self.store.put_opts(&path, payload.clone(), options)
        })
        .await?;
        self.stats.record_put(length);
        Ok(())
    }

    /// Writes a new object from `parts` in order; one PUT when there is a single part, else a
    /// multipart upload (S3 takes at most 5 GB in one PUT, and a catalog at a billion rows is
    /// larger). Every part but the last must be at least 5 MiB (S3's minimum). Like
    /// [`Storage::put_new`] it refuses to overwrite, checked before the upload since multipart
    /// uploads have no create-only mode (writers of one name are the one builder of a fresh
    /// generation). Returns the bytes written.
    pub async fn put_new_parts<I>(&self, name: &str, parts: I) -> Result<u64, StorageError>
    where
        I: IntoIterator<Item = std::io::Result<Bytes>>,
    {
        let read_error = |source| StorageError::Read {
            path: name.to_string(),
            source,
        };
        let mut parts = parts.into_iter();
        let first = parts.next().transpose().map_err(read_error)?;
        let Some(second) = parts.next().transpose().map_err(read_error)? else {
            let first = first.unwrap_or_default();
            let length = first.len() as u64;
            self.put_new(name, first).await?;
            return Ok(length);
        };
        let path = self.path(name);
        match self.store.head(&path).await {
            Ok(_) => {
                return Err(StorageError::AlreadyExists {
                    path: name.to_string(),
                })
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(error) => return Err(StorageError::from_backend(name, 1, error)),
        }
        let mut upload = self
            .with_retries(name, || self.store.put_multipart(&path))
            .await?;
        let mut written = 0u64;
        let chunks = first.into_iter().map(Ok).chain(std::iter::once(Ok(second)));
        for part in chunks.chain(parts) {
            let uploaded = match part {
                Ok(part) => {
                    written += part.len() as u64;
                    // object_store retries each part request itself.
                    upload
                        .put_part(PutPayload::from_bytes(part))
                        .await
                        .map_err(|error| StorageError::from_backend(name, 1, error))
                }
                Err(source) => Err(read_error(source)),
            };
            if let Err(error) = uploaded {
                let _ = upload.abort().await;
                return Err(error);
            }
        }
        if let Err(error) = upload.complete().await {
            return Err(StorageError::from_backend(name, 1, error));
        }
        self.stats.record_put(written);
        Ok(written)
    }

    /// Replaces a small pointer object only if it is still the version the caller read
    /// (`expected = None`: only if it does not exist yet).
    ///
    /// On S3 this is an atomic conditional PUT (`If-Match` / `If-None-Match`). A local
    /// directory has no conditional overwrite, so there the version is compared first and the
    /// object then replaced by an atomic rename: safe against readers, not against two
    /// concurrent writers.
    pub async fn swap_pointer(
        &self,
        name: &str,
        expected: Option<&Versioned>,
        bytes: Bytes,
    ) -> Result<(), StorageError> {
        let Some(expected) = expected else {
            return self.put_new(name, bytes).await;
        };
        let path = self.path(name);
        let length = bytes.len() as u64;
        let payload = PutPayload::from_bytes(bytes);
        let mode = match self.backend {
            Backend::S3 => PutMode::Update(UpdateVersion {
                e_tag: expected.e_tag.clone(),
                version: expected.version.clone(),
            }),
            Backend::Local | Backend::Memory => {
                let current = self.get_if_exists(name).await?;
                let unchanged = current
                    .as_ref()
                    .is_some_and(|current| current.bytes == expected.bytes);
                if !unchanged {
                    return Err(StorageError::Precondition {
                        path: name.to_string(),
                    });
                }
                PutMode::Overwrite
            }
        };
        self.with_retries(name, || {
            let options = PutOptions {
                mode: mode.clone(),
                ..PutOptions::default()
            };
            self.store.put_opts(&path, payload.clone(), options)
        })
        .await?;
        self.stats.record_put(length);
        Ok(())
    }

    /// Deletes an object. Idempotent: deleting an object that does not exist succeeds, so a
    /// cleanup that was interrupted can simply run again.
    pub async fn delete(&self, name: &str) -> Result<(), StorageError> {
        let path = self.path(name);
        let deleted = self.with_retries(name, || self.store.delete(&path)).await;
        match deleted {
            Ok(()) => {}
            // S3 answers a missing key with success; a local directory with `NotFound`.
            Err(StorageError::NotFound { .. }) => {
                debug!(object = name, "object to delete was already gone");
            }
            Err(error) => return Err(error),
        }
        self.stats.record_delete();
        Ok(())
    }

    /// Names (relative to the root) of the objects under `prefix`.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let objects = self.list_objects(prefix).await?;
        Ok(objects.into_iter().map(|object| object.name).collect())
    }

    /// The objects under `prefix` with their sizes, sorted by name (relative to the root).
    pub async fn list_objects(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        let path = self.path(prefix);
        let root_parts = self.root.parts().count();
        let listed: Vec<_> = self
            .with_retries(prefix, || {
                self.store.list(Some(&path)).try_collect::<Vec<_>>()
            })
            .await?;
        let mut objects: Vec<ObjectInfo> = listed
            .into_iter()
            .map(|meta| ObjectInfo {
                name: meta
                    .location
                    .parts()
                    .skip(root_parts)
                    .map(|part| part.as_ref().to_string())
                    .collect::<Vec<_>>()
                    .join("/"),
                bytes: meta.size,
                last_modified_unix_ms: u64::try_from(meta.last_modified.timestamp_millis()).ok(),
            })
            .collect();
        objects.sort_by(|left, right| left.name.cmp(&right.name));
        Ok(objects)
    }
}

/// The object source every reader is written against (`clipedge_io`); keys are relative to the
/// storage root, retries happen inside.
impl ObjectSource for Storage {
    async fn get(&self, key: &str, limit: Option<u64>) -> Result<Bytes, SourceError> {
        let bytes = Storage::get(self, key).await.map_err(source_error)?;
        check_limit(key, &bytes, limit)?;
        Ok(bytes)
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, SourceError> {
        if range.start >= range.end {
            return Ok(Bytes::new());
        }
        Storage::get_range(self, key, range)
            .await
            .map_err(source_error)
    }

    fn read_policy(&self) -> ReadPolicy {
        ReadPolicy {
            coalesce_gap_bytes: self.config.coalesce_gap_bytes,
            max_coalesced_bytes: self.config.max_coalesced_bytes,
            max_concurrency: self.config.max_concurrency,
        }
    }
}

/// The source-level view of a storage error: what a reader needs to tell apart.
pub fn source_error(error: StorageError) -> SourceError {
    match error {
        StorageError::NotFound { path } => SourceError::NotFound { key: path },
        StorageError::Range { path, start, end } => SourceError::Range {
            key: path,
            start,
            end,
            got: 0,
        },
        other => {
            let key = match &other {
                StorageError::InvalidLocation { location, .. } => location.clone(),
                StorageError::AlreadyExists { path }
                | StorageError::Precondition { path }
                | StorageError::Read { path, .. }
                | StorageError::Backend { path, .. } => path.clone(),
                StorageError::NotFound { .. } | StorageError::Range { .. } => unreachable!(),
            };
            SourceError::Failed {
                key,
                reason: error_chain(&other),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_directory_round_trip_with_ranges_and_conditional_writes() {
        let dir = tempfile::tempdir().unwrap();
        let config = StorageConfig {
            coalesce_gap_bytes: 100,
            ..StorageConfig::default()
        };
        let storage = Storage::open_with(dir.path().to_str().unwrap(), config).unwrap();
        let payload: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        storage
            .put_new("a/b.bin", Bytes::from(payload.clone()))
            .await
            .unwrap();
        let again = storage.put_new("a/b.bin", Bytes::from_static(b"x")).await;
        assert!(
            matches!(again, Err(StorageError::AlreadyExists { .. })),
            "{again:?}"
        );

        let read = storage
            .get_ranges("a/b.bin", &[5000..5010, 0..4, 4..8, 9..9])
            .await
            .unwrap();
        assert_eq!(
            read.requests, 2,
            "0..4 and 4..8 merge, 5000..5010 is past the gap"
        );
        assert_eq!(&read.parts[0][..], &payload[5000..5010]);
        assert_eq!(&read.parts[1][..], &payload[0..4]);
        assert_eq!(&read.parts[2][..], &payload[4..8]);
        assert!(read.parts[3].is_empty());

        let missing = storage.get("nope").await;
        assert!(
            matches!(missing, Err(StorageError::NotFound { .. })),
            "{missing:?}"
        );
        let out_of_range = storage.get_range("a/b.bin", 9_990..10_010).await;
        assert!(out_of_range.is_err());

        storage
            .swap_pointer("CURRENT", None, Bytes::from_static(b"one"))
            .await
            .unwrap();
        let first = storage.get_versioned("CURRENT").await.unwrap();
        storage
            .swap_pointer("CURRENT", Some(&first), Bytes::from_static(b"two"))
            .await
            .unwrap();
        let stale = storage
            .swap_pointer("CURRENT", Some(&first), Bytes::from_static(b"three"))
            .await;
        assert!(
            matches!(stale, Err(StorageError::Precondition { .. })),
            "{stale:?}"
        );
        assert_eq!(&storage.get("CURRENT").await.unwrap()[..], b"two");

        assert_eq!(
            storage.list("a").await.unwrap(),
            vec!["a/b.bin".to_string()]
        );
        let counters = storage.stats().snapshot();
        assert!(counters.gets >= 4 && counters.puts == 3, "{counters:?}");
    }

    async fn assert_conforms(storage: &Storage) {
        for (key, bytes) in clipedge_io::conformance::objects() {
            storage.put_new(&key, bytes).await.unwrap();
        }
        clipedge_io::conformance::check(storage).await.unwrap();
    }

    #[tokio::test]
    async fn local_directory_passes_the_object_source_suite() {
        let dir = tempfile::tempdir().unwrap();
        assert_conforms(&Storage::open(dir.path().to_str().unwrap()).unwrap()).await;
    }

    #[tokio::test]
    async fn memory_store_passes_the_object_source_suite() {
        assert_conforms(&Storage::open("memory://").unwrap()).await;
    }

    async fn assert_delete_is_idempotent(storage: &Storage) {
        storage
            .put_new(
                "generations/g1/shard-00000.bin",
                Bytes::from_static(b"12345"),
            )
            .await
            .unwrap();
        storage
            .put_new("generations/g1/manifest.json", Bytes::from_static(b"{}"))
            .await
            .unwrap();
        storage
            .put_new("generations/g10/manifest.json", Bytes::from_static(b"{}"))
            .await
            .unwrap();
        let listed = storage.list_objects("generations/g1").await.unwrap();
        let sizes: Vec<(&str, u64)> = listed
            .iter()
            .map(|object| (object.name.as_str(), object.bytes))
            .collect();
        assert_eq!(
            sizes,
            vec![
                ("generations/g1/manifest.json", 2),
                ("generations/g1/shard-00000.bin", 5),
            ],
            "a prefix matches whole path segments: g10 is not under g1"
        );
        assert!(listed
            .iter()
            .all(|object| object.last_modified_unix_ms.is_some_and(|ms| ms > 0)));

        storage
            .delete("generations/g1/manifest.json")
            .await
            .unwrap();
        storage
            .delete("generations/g1/manifest.json")
            .await
            .expect("deleting a deleted object succeeds");
        storage
            .delete("generations/never/written.bin")
            .await
            .expect("deleting a missing object succeeds");
        let missing = storage.get("generations/g1/manifest.json").await;
        assert!(
            matches!(missing, Err(StorageError::NotFound { .. })),
            "{missing:?}"
        );
        storage
            .delete("generations/g1/shard-00000.bin")
            .await
            .unwrap();
        assert!(storage.list("generations/g1").await.unwrap().is_empty());
        assert_eq!(
            storage.list("generations").await.unwrap(),
            vec!["generations/g10/manifest.json".to_string()]
        );
        assert_eq!(storage.stats().snapshot().deletes, 4);
        // A deleted name can be written again (create-only puts see it as absent).
        storage
            .put_new("generations/g1/manifest.json", Bytes::from_static(b"{}"))
            .await
            .unwrap();
    }

    /// Three parts of `part` bytes and a short tail, in order; parts of at least 5 MiB where
    /// the store is S3 (`tests/tests/storage_s3.rs` runs this on s3s-fs).
    pub(crate) async fn check_put_new_parts(storage: &Storage, part: usize) {
        let bytes: Vec<u8> = (0..3 * part + 1000)
            .map(|index| (index % 251) as u8)
            .collect();
        let parts = bytes
            .chunks(part)
            .map(|chunk| Ok(Bytes::copy_from_slice(chunk)))
            .collect::<Vec<_>>();
        let written = storage
            .put_new_parts("big/catalog.bin", parts)
            .await
            .unwrap();
        assert_eq!(written, bytes.len() as u64);
        assert_eq!(storage.get("big/catalog.bin").await.unwrap(), bytes);
        let again = storage
            .put_new_parts(
                "big/catalog.bin",
                vec![Ok(Bytes::from_static(b"a")), Ok(Bytes::from_static(b"b"))],
            )
            .await;
        assert!(
            matches!(again, Err(StorageError::AlreadyExists { .. })),
            "{again:?}"
        );
        let single = storage
            .put_new_parts("big/small.bin", vec![Ok(Bytes::from_static(b"one part"))])
            .await
            .unwrap();
        assert_eq!(single, 8);
        let failed = storage
            .put_new_parts(
                "big/failed.bin",
                vec![
                    Ok(Bytes::from(vec![1u8; part])),
                    Err(std::io::Error::other("disk went away")),
                ],
            )
            .await;
        let message = failed.unwrap_err().to_string();
        assert!(message.contains("big/failed.bin"), "{message}");
        assert!(matches!(
            storage.get("big/failed.bin").await,
            Err(StorageError::NotFound { .. })
        ));
    }

    #[tokio::test]
    async fn objects_written_in_parts_read_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        check_put_new_parts(&Storage::open(dir.path().to_str().unwrap()).unwrap(), 4096).await;
        check_put_new_parts(&Storage::open("memory://").unwrap(), 4096).await;
    }

    #[tokio::test]
    async fn local_directory_delete_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path().to_str().unwrap()).unwrap();
        assert_delete_is_idempotent(&storage).await;
        assert!(
            dir.path().join("generations/g10").is_dir(),
            "deleting objects leaves other generations alone"
        );
    }

    #[tokio::test]
    async fn memory_delete_is_idempotent() {
        let storage = Storage::open("memory://").unwrap();
        assert_delete_is_idempotent(&storage).await;
    }
}
