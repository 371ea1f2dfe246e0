//! Helpers shared by the unit tests: small real generations and copies of them aged at will.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clipedge_datagen::{ClipLikeConfig, ClipLikeGenerator, QueryKind};
use clipedge_format::{generation_path, Manifest, RerankKind};
use clipedge_storage::Storage;
use tempfile::TempDir;

use crate::{build_index, BuildConfig, NoProgress, VectorSet};

pub const DIM: usize = 32;
pub const NLIST: usize = 16;

pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// A storage root in a fresh temporary directory.
pub fn temp_storage() -> (TempDir, Storage) {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let storage = Storage::open(dir.path().to_str().expect("utf-8 path")).expect("open");
    (dir, storage)
}

/// Seeded CLIP-like base vectors and in-distribution queries.
pub fn dataset(n: usize, queries: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let generator = ClipLikeGenerator::new(ClipLikeConfig::new(DIM, seed));
    (
        generator.base(n),
        generator.queries(queries, QueryKind::InDistribution),
    )
}

pub fn quick_config() -> BuildConfig {
    BuildConfig {
        rerank: RerankKind::Fp16,
        kmeans_iterations: 8,
        pq_iterations: 6,
        seed: 7,
        ..BuildConfig::new(NLIST, 8, 8)
    }
}

/// Builds and publishes a generation of `base`; returns its name.
pub async fn build_generation(storage: &Storage, base: &[f32]) -> String {
    build_index(
        storage,
        &VectorSet::new(base, DIM),
        &quick_config(),
        &NoProgress,
    )
    .await
    .expect("build the index")
    .generation
}

/// A builder-style name for a generation created at `created_unix_ms`.
pub fn generation_name(created_unix_ms: u64, nonce: u32) -> String {
    format!("{created_unix_ms:013}-{nonce:08x}")
}

/// Sets the modification time of every file of a generation in a local root.
pub fn age_files(root: &Path, generation: &str, unix_ms: u64) {
    let directory = root.join("generations").join(generation);
    let time = UNIX_EPOCH + Duration::from_millis(unix_ms);
    for entry in std::fs::read_dir(&directory).expect("read the generation directory") {
        let path = entry.expect("directory entry").path();
        let file = std::fs::File::options()
            .write(true)
            .open(&path)
            .expect("open a generation file");
        file.set_modified(time).expect("set the modification time");
    }
}

/// Copies generation `source` as `name`, created (and last written) at `created_unix_ms`;
/// `edit` may change the copied manifest's JSON.
pub async fn copy_generation(
    storage: &Storage,
    root: &Path,
    source: &str,
    name: &str,
    created_unix_ms: u64,
    edit: impl Fn(&mut serde_json::Value),
) {
    let manifest_name = generation_path(source, "manifest.json");
    for object in storage
        .list(&format!("generations/{source}"))
        .await
        .expect("list")
    {
        let file = object.rsplit('/').next().expect("file name");
        let mut bytes = storage.get(&object).await.expect("read an object");
        if object == manifest_name {
            let mut manifest = Manifest::from_json(&bytes).expect("manifest");
            manifest.generation = name.to_string();
            manifest.created_unix_ms = created_unix_ms;
            let mut json: serde_json::Value =
                serde_json::from_slice(&manifest.to_json()).expect("manifest json");
            edit(&mut json);
            bytes = Bytes::from(serde_json::to_vec_pretty(&json).expect("serialize"));
        }
        storage
            .put_new(&generation_path(name, file), bytes)
            .await
            .expect("write a copied object");
    }
    age_files(root, name, created_unix_ms);
}

/// An unfinished generation (a shard, no manifest) written at `created_unix_ms`.
pub async fn unfinished_generation(
    storage: &Storage,
    root: &Path,
    name: &str,
    created_unix_ms: u64,
) {
    storage
        .put_new(
            &generation_path(name, "shard-00000.bin"),
            Bytes::from_static(b"partial shard"),
        )
        .await
        .expect("write a shard");
    age_files(root, name, created_unix_ms);
}
