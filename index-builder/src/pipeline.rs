//! The nightly job's build: a streamed source in, a complete (unpublished) generation out, with
//! memory bounded by the training sample and one batch, not by the number of vectors.
//!
//! 1. train on a seeded sample ([`crate::train_on`], assignments on the device);
//! 2. one pass over the source in batches: assign (device), PQ-encode residuals (device),
//!    rerank copies and content hashes (CPU), and — for the recall gate — fold the batch into
//!    the exact ground truth of the gate queries; each vector's encoded entry is appended to a
//!    spill bucket on local disk by its list (buckets hold contiguous list ranges);
//! 3. bucket by bucket, entries are grouped by list (input order kept), assembled into the
//!    same list blobs the in-memory path writes, and streamed into shard objects;
//! 4. groups, routing, codebooks and the manifest close the generation.
//!
//! Given the same trained index, the shards are byte-identical to
//! [`crate::write_generation`]'s (a test holds it).

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clipedge_format::{generation_path, ListLocation, Manifest, RerankData, RerankKind, ShardRef};
use clipedge_linalg::rerank;
use clipedge_storage::Storage;
use rayon::prelude::*;
use serde::Serialize;

use crate::build::{
    assemble_list_blob, content_hash, finish_generation, list_blob_len, new_generation_name,
    ListColumns, LIST_ALIGN,
};
use crate::device::{Device, Metric};
use crate::source::EmbeddingSource;
use crate::{BuildConfig, BuildError, ExactTopK, Progress, TrainedIndex};

/// Spill buckets are sized to about this many bytes (one is held in memory at a time).
const BUCKET_TARGET_BYTES: u64 = 512 << 20;
const MAX_BUCKETS: u64 = 4096;

/// Seconds per stage of a streamed write.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct WriteSeconds {
    /// List assignment and PQ encoding (the device's part).
    pub assign_s: f64,
    /// Rerank copies, content hashes and spill entries (the CPU's part).
    pub encode_s: f64,
    pub read_s: f64,
    pub truth_s: f64,
    pub write_s: f64,
}

/// Where a streamed write keeps its spill files.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// Vectors per batch (device work and memory scale with it).
    pub batch_rows: usize,
    /// Directory for the spill buckets (a fresh subdirectory is made and removed).
    pub spill_dir: PathBuf,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            batch_rows: 65_536,
            spill_dir: std::env::temp_dir(),
        }
    }
}

struct EntryLayout {
    m: usize,
    rerank_bytes: usize,
}

impl EntryLayout {
    /// list u32 | row u64 | content hash u64 | codes (m bytes) | rerank copy.
    fn bytes(&self) -> usize {
        4 + 8 + 8 + self.m + self.rerank_bytes
    }
}

fn spill_error(path: &Path, source: std::io::Error) -> BuildError {
    BuildError::Spill {
        path: path.display().to_string(),
        source,
    }
}

/// A spill directory removed when dropped (also on an error or a kill's unwinding).
struct SpillDir(PathBuf);

impl Drop for SpillDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Assigns, encodes and writes a whole new generation from `source` (not yet published).
/// `truth`, when given, receives every batch (the recall gate's exact ground truth).
#[allow(clippy::too_many_arguments)]
pub async fn write_generation_streamed(
    storage: &Storage,
    source: &EmbeddingSource,
    trained: &TrainedIndex,
    config: &BuildConfig,
    device: &Device,
    options: &StreamOptions,
    mut truth: Option<&mut ExactTopK>,
    progress: &dyn Progress,
) -> Result<(Manifest, WriteSeconds), BuildError> {
    let dim = source.dim();
    let n = source.len();
    let nlist = trained.nlist();
    if trained.dim != dim {
        return Err(BuildError::Input(format!(
            "the trained index has dimension {}, the source {dim}",
            trained.dim
        )));
    }
    if options.batch_rows == 0 {
        return Err(BuildError::Config(
            "batch rows must be at least 1".to_string(),
        ));
    }
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let generation = new_generation_name(now_ms);
    let layout = EntryLayout {
        m: config.pq_m,
        rerank_bytes: config.rerank.bytes_per_vector(dim),
    };
    let entry_bytes = layout.bytes();
    let buckets = (n * entry_bytes as u64)
        .div_ceil(BUCKET_TARGET_BYTES)
        .clamp(1, MAX_BUCKETS.min(nlist as u64)) as usize;
    let lists_per_bucket = nlist.div_ceil(buckets);
    let spill = SpillDir(
        options
            .spill_dir
            .join(format!("clipedge-spill-{generation}")),
    );
    std::fs::create_dir_all(&spill.0).map_err(|error| spill_error(&spill.0, error))?;
    let bucket_paths: Vec<PathBuf> = (0..buckets)
        .map(|bucket| spill.0.join(format!("bucket-{bucket:05}.bin")))
        .collect();
    let mut writers = bucket_paths
        .iter()
        .map(|path| {
            File::create(path)
                .map(|file| BufWriter::with_capacity(1 << 20, file))
                .map_err(|error| spill_error(path, error))
        })
        .collect::<Result<Vec<_>, _>>()?;

    let mut seconds = WriteSeconds::default();
    let coarse = device.centroids(trained.fine_centroids.clone(), dim, Metric::InnerProduct)?;
    let encoder = device.encoder(&trained.pq, &coarse)?;
    progress.stage("assign and encode", n);
    let mut batch = Vec::with_capacity(options.batch_rows * dim);
    let mut start = 0u64;
    while start < n {
        let rows = (n - start).min(options.batch_rows as u64) as usize;
        batch.clear();
        let read_started = Instant::now();
        source.read_rows(start, rows, &mut batch)?;
        seconds.read_s += read_started.elapsed().as_secs_f64();

        let assign_started = Instant::now();
        let (labels, codes) = device.assign_and_encode(&encoder, &batch)?;
        seconds.assign_s += assign_started.elapsed().as_secs_f64();
        let encode_started = Instant::now();
        let entries = encode_entries(&batch, dim, start, &labels, &codes, config, &layout);
        seconds.encode_s += encode_started.elapsed().as_secs_f64();

        if let Some(truth) = truth.as_deref_mut() {
            let truth_started = Instant::now();
            truth
                .add_batch(&batch, start)
                .map_err(|error| BuildError::Input(error.to_string()))?;
            seconds.truth_s += truth_started.elapsed().as_secs_f64();
        }
        let write_started = Instant::now();
        for (entry, label) in entries.chunks_exact(entry_bytes).zip(&labels) {
            let bucket = *label as usize / lists_per_bucket;
            writers[bucket]
                .write_all(entry)
                .map_err(|error| spill_error(&bucket_paths[bucket], error))?;
        }
        seconds.write_s += write_started.elapsed().as_secs_f64();
        progress.advance(rows as u64);
        start += rows as u64;
    }
    for (writer, path) in writers.into_iter().zip(&bucket_paths) {
        writer
            .into_inner()
            .map_err(|error| spill_error(path, error.into_error()))?;
    }
    drop(encoder);
    drop(coarse);

    progress.stage("write shards", n);
    let write_started = Instant::now();
    let mut shards_writer = ShardWriter::new(storage, &generation, config.shard_target_bytes);
    let mut buffer = Vec::new();
    for (bucket, path) in bucket_paths.iter().enumerate() {
        let first_list = bucket * lists_per_bucket;
        let end_list = ((bucket + 1) * lists_per_bucket).min(nlist);
        buffer.clear();
        File::open(path)
            .and_then(|mut file| file.read_to_end(&mut buffer))
            .map_err(|error| spill_error(path, error))?;
        std::fs::remove_file(path).map_err(|error| spill_error(path, error))?;
        // Entries of each list, in input order (a stable counting sort by list).
        let mut by_list: Vec<Vec<&[u8]>> = vec![Vec::new(); end_list - first_list];
        for entry in buffer.chunks_exact(entry_bytes) {
            let list = u32::from_le_bytes(entry[..4].try_into().expect("4 bytes")) as usize;
            by_list[list - first_list].push(entry);
        }
        let blobs: Vec<Vec<u8>> = by_list
            .par_iter()
            .enumerate()
            .map(|(offset, entries)| {
                list_blob_from_entries((first_list + offset) as u32, entries, dim, config, &layout)
            })
            .collect();
        for (entries, blob) in by_list.iter().zip(blobs) {
            shards_writer.add(blob, entries.len()).await?;
            progress.advance(entries.len() as u64);
        }
    }
    let (locations, shards) = shards_writer.finish().await?;
    debug_assert_eq!(locations.len(), nlist);
    let manifest = finish_generation(
        storage,
        &generation,
        now_ms,
        trained,
        config,
        n,
        &locations,
        shards,
        None,
    )
    .await?;
    seconds.write_s += write_started.elapsed().as_secs_f64();
    Ok((manifest, seconds))
}

/// The spill entries of one batch, in row order.
fn encode_entries(
    batch: &[f32],
    dim: usize,
    first_row: u64,
    labels: &[u32],
    codes: &[u8],
    config: &BuildConfig,
    layout: &EntryLayout,
) -> Vec<u8> {
    let entry_bytes = layout.bytes();
    let m = layout.m;
    let mut entries = vec![0u8; labels.len() * entry_bytes];
    entries
        .par_chunks_mut(entry_bytes)
        .zip(batch.par_chunks(dim))
        .enumerate()
        .for_each(|(index, (entry, vector))| {
            entry[..4].copy_from_slice(&labels[index].to_le_bytes());
            entry[4..12].copy_from_slice(&(first_row + index as u64).to_le_bytes());
            entry[12..20].copy_from_slice(&content_hash(vector).to_le_bytes());
            entry[20..20 + m].copy_from_slice(&codes[index * m..(index + 1) * m]);
            let rerank_slot = &mut entry[20 + m..];
            match config.rerank {
                RerankKind::Fp16 => {
                    for (slot, half) in rerank_slot
                        .chunks_exact_mut(2)
                        .zip(rerank::encode_fp16(vector))
                    {
                        slot.copy_from_slice(&half.to_le_bytes());
                    }
                }
                RerankKind::Int8 => {
                    let (scale, values) = rerank::encode_int8(vector);
                    rerank_slot[..4].copy_from_slice(&scale.to_le_bytes());
                    for (slot, value) in rerank_slot[4..].iter_mut().zip(values) {
                        *slot = value as u8;
                    }
                }
                RerankKind::None => {}
            }
        });
    entries
}

fn list_blob_from_entries(
    list_id: u32,
    entries: &[&[u8]],
    dim: usize,
    config: &BuildConfig,
    layout: &EntryLayout,
) -> Vec<u8> {
    let m = layout.m;
    let count = entries.len();
    let mut ids = Vec::with_capacity(count);
    let mut hashes = Vec::with_capacity(count);
    let mut codes = Vec::with_capacity(count * m);
    let mut fp16 = Vec::new();
    let mut scales = Vec::new();
    let mut values = Vec::new();
    for entry in entries {
        ids.push(u64::from_le_bytes(
            entry[4..12].try_into().expect("8 bytes"),
        ));
        hashes.push(u64::from_le_bytes(
            entry[12..20].try_into().expect("8 bytes"),
        ));
        codes.extend_from_slice(&entry[20..20 + m]);
        let rerank_slot = &entry[20 + m..];
        match config.rerank {
            RerankKind::Fp16 => fp16.extend(
                rerank_slot
                    .chunks_exact(2)
                    .map(|pair| u16::from_le_bytes([pair[0], pair[1]])),
            ),
            RerankKind::Int8 => {
                scales.push(f32::from_le_bytes(
                    rerank_slot[..4].try_into().expect("4 bytes"),
                ));
                values.extend(rerank_slot[4..].iter().map(|byte| *byte as i8));
            }
            RerankKind::None => {}
        }
    }
    let rerank_data = match config.rerank {
        RerankKind::Fp16 => RerankData::Fp16(fp16),
        RerankKind::Int8 => RerankData::Int8 { scales, values },
        RerankKind::None => RerankData::None,
    };
    // Without a catalog a vector's metadata reference is its row, as in the in-memory path.
    let columns = ListColumns {
        ids: &ids,
        content_hashes: &hashes,
        metadata_refs: &ids,
        codes,
        rerank: &rerank_data,
    };
    let blob = assemble_list_blob(list_id, dim, config, columns);
    debug_assert_eq!(blob.len() as u64, list_blob_len(count, dim, config));
    blob
}

/// Appends list blobs (64-byte aligned) to shard objects, closing a shard once it reaches the
/// target size — the same rule as the in-memory path, so the same lists share a shard.
struct ShardWriter<'a> {
    storage: &'a Storage,
    generation: &'a str,
    target_bytes: u64,
    shard: Vec<u8>,
    shard_lists: u32,
    locations: Vec<ListLocation>,
    shards: Vec<ShardRef>,
}

impl<'a> ShardWriter<'a> {
    fn new(storage: &'a Storage, generation: &'a str, target_bytes: u64) -> Self {
        ShardWriter {
            storage,
            generation,
            target_bytes,
            shard: Vec::new(),
            shard_lists: 0,
            locations: Vec::new(),
            shards: Vec::new(),
        }
    }

    async fn add(&mut self, blob: Vec<u8>, count: usize) -> Result<(), BuildError> {
        self.locations.push(ListLocation {
            shard: self.shards.len() as u32,
            count: count as u32,
            offset: self.shard.len() as u64,
            length: blob.len() as u32,
            crc32: clipedge_format::checksum(&blob),
        });
        self.shard.extend_from_slice(&blob);
        self.shard.resize(
            (self.shard.len() as u64).next_multiple_of(LIST_ALIGN) as usize,
            0,
        );
        self.shard_lists += 1;
        if self.shard.len() as u64 >= self.target_bytes {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), BuildError> {
        if self.shard_lists == 0 {
            return Ok(());
        }
        let shard_path = format!("shard-{:05}.bin", self.shards.len());
        let bytes = std::mem::take(&mut self.shard);
        let shard_bytes = bytes.len() as u64;
        self.storage
            .put_new(
                &generation_path(self.generation, &shard_path),
                Bytes::from(bytes),
            )
            .await?;
        self.shards.push(ShardRef {
            path: shard_path,
            bytes: shard_bytes,
            lists: self.shard_lists,
        });
        self.shard_lists = 0;
        Ok(())
    }

    async fn finish(mut self) -> Result<(Vec<ListLocation>, Vec<ShardRef>), BuildError> {
        self.flush().await?;
        Ok((self.locations, self.shards))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{train, write_generation, NoProgress, VectorSet};

    fn clip_like(n: usize, dim: usize) -> Vec<f32> {
        clipedge_datagen::ClipLikeGenerator::new(clipedge_datagen::ClipLikeConfig::new(dim, 5))
            .base(n)
    }

    async fn shard_bytes(storage: &Storage, manifest: &Manifest) -> Vec<Bytes> {
        let mut all = Vec::new();
        for shard in &manifest.shards {
            all.push(
                storage
                    .get(&generation_path(&manifest.generation, &shard.path))
                    .await
                    .unwrap(),
            );
        }
        all
    }

    #[tokio::test]
    async fn streamed_shards_equal_the_in_memory_build() {
        let dim = 32;
        let data = clip_like(3000, dim);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("vectors.npy");
        clipedge_datagen::write_npy(&file, &data, dim).unwrap();
        let source = EmbeddingSource::open(&file).unwrap();
        for (bits, rerank) in [
            (8, RerankKind::Fp16),
            (4, RerankKind::Int8),
            (8, RerankKind::None),
        ] {
            let mut config = BuildConfig::new(16, 8, bits);
            config.rerank = rerank;
            // Small shards so several are written and their boundaries compared too.
            config.shard_target_bytes = 20_000;
            let vectors = VectorSet::new(&data, dim);
            let trained = train(&vectors, &config, &NoProgress).unwrap();
            let storage =
                Storage::open_or_create(dir.path().join("index").to_str().unwrap()).unwrap();
            let (in_memory, _, _) =
                write_generation(&storage, &vectors, &trained, &config, &NoProgress)
                    .await
                    .unwrap();
            let options = StreamOptions {
                // Batches that do not divide the rows, and several buckets' worth of lists.
                batch_rows: 777,
                spill_dir: dir.path().to_path_buf(),
            };
            let mut truth = ExactTopK::new(data[..dim * 4].to_vec(), dim, 10).unwrap();
            let (streamed, _) = write_generation_streamed(
                &storage,
                &source,
                &trained,
                &config,
                &Device::cpu(),
                &options,
                Some(&mut truth),
                &NoProgress,
            )
            .await
            .unwrap();
            assert_eq!(in_memory.shards.len(), streamed.shards.len());
            assert!(in_memory.shards.len() > 1);
            assert_eq!(
                shard_bytes(&storage, &in_memory).await,
                shard_bytes(&storage, &streamed).await,
                "bits {bits}, rerank {rerank:?}"
            );
            assert_eq!(in_memory.routing, streamed.routing);
            assert_eq!(in_memory.groups, streamed.groups);
            // Each gate query is its own best match.
            let truth = truth.finish();
            for (query, best) in truth.iter().enumerate() {
                assert_eq!(best[0], query as u64);
            }
            // The spill directory is cleaned up.
            let leftovers = std::fs::read_dir(dir.path())
                .unwrap()
                .filter(|entry| {
                    entry
                        .as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .starts_with("clipedge-spill")
                })
                .count();
            assert_eq!(leftovers, 0);
        }
    }
}
