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
use clipedge_format::{
    append_catalog_record, catalog_head, catalog_records_offset, generation_path, CatalogRef,
    ListLocation, Manifest, RerankKind, ShardRef, CATALOG_BLOCK_ITEMS,
};
use clipedge_linalg::rerank;
use clipedge_storage::Storage;
use rayon::prelude::*;
use serde::Serialize;

use crate::build::{
    assemble_list_blob, content_hash, finish_generation, list_blob_len, new_generation_name,
    rerank_data, stored_record_len, ListColumns, LIST_ALIGN,
};
use crate::device::{Device, Metric};
use crate::metadata::MetadataReader;
use crate::source::EmbeddingSource;
use crate::{BuildConfig, BuildError, ExactTopK, Progress, TrainedIndex};

/// Spill buckets are sized to about this many bytes (one is held in memory at a time).
const BUCKET_TARGET_BYTES: u64 = 512 << 20;
const MAX_BUCKETS: u64 = 4096;
/// Bytes of a spill entry before its codes.
const ENTRY_HEAD: usize = 28;

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
    /// Leave `manifest.json` unwritten: the caller measures the generation first (the recall
    /// gate, through [`clipedge_index::OpenOptions::manifest`]) and finishes it with
    /// [`crate::write_manifest`] and the measured search defaults.
    pub defer_manifest: bool,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            batch_rows: 65_536,
            spill_dir: std::env::temp_dir(),
            defer_manifest: false,
        }
    }
}

struct EntryLayout {
    m: usize,
    rerank_bytes: usize,
}

impl EntryLayout {
    /// list u32 | row u64 | content hash u64 | metadata ref u64 | codes (m bytes) | rerank copy.
    fn bytes(&self) -> usize {
        ENTRY_HEAD + self.m + self.rerank_bytes
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
    mut truth: Option<&mut ExactTopK<'_>>,
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
    // Records are laid out as the vectors stream past: each row's metadata reference goes into
    // its list entry, like the in-memory path's catalog.
    let mut catalog = match source.metadata_reader() {
        Some(reader) => Some(CatalogSpill::new(reader, n, &spill.0)?),
        None => None,
    };
    let coarse = device.centroids(trained.fine_centroids.clone(), dim, Metric::InnerProduct)?;
    let encoder = device.encoder(&trained.pq, &coarse)?;
    progress.stage("assign and encode", n);
    // A reader thread decodes the next batch while this one is on the device and being
    // encoded: reading 10M float16 rows took 19 s of a 178 s run when it was in line.
    let batch_rows = options.batch_rows as u64;
    std::thread::scope(|scope| -> Result<(), BuildError> {
        let (sender, receiver) = std::sync::mpsc::sync_channel(1);
        scope.spawn(move || {
            let mut start = 0u64;
            while start < n {
                let rows = (n - start).min(batch_rows) as usize;
                let mut batch = Vec::with_capacity(rows * dim);
                let read_started = Instant::now();
                let read = source
                    .read_rows(start, rows, &mut batch)
                    .map(|()| (start, batch, read_started.elapsed().as_secs_f64()));
                let failed = read.is_err();
                // A closed channel means the consumer stopped on an error of its own.
                if sender.send(read).is_err() || failed {
                    return;
                }
                start += rows as u64;
            }
        });
        for read in receiver {
            let (start, batch, read_s) = read?;
            let rows = batch.len() / dim;
            seconds.read_s += read_s;

            let assign_started = Instant::now();
            // A GPU truth is fed by the assignment's own pass (the batch crosses the bus once).
            let device_truth = match truth.as_deref_mut() {
                Some(truth) => truth
                    .device_feed(&batch, start)
                    .map_err(|error| BuildError::Input(error.to_string()))?,
                None => None,
            };
            let truth_fused = device_truth.is_some();
            let (labels, codes) = match device_truth {
                Some(top) => device.assign_encode_and_truth(&encoder, &batch, top, start)?,
                None => device.assign_and_encode(&encoder, &batch)?,
            };
            seconds.assign_s += assign_started.elapsed().as_secs_f64();
            let encode_started = Instant::now();
            let batch_refs = match catalog.as_mut() {
                Some(catalog) => Some(catalog.add_batch(rows, &labels)?),
                None => None,
            };
            let entries = encode_entries(
                &batch,
                dim,
                start,
                &labels,
                &codes,
                batch_refs.as_deref(),
                config,
                &layout,
            );
            seconds.encode_s += encode_started.elapsed().as_secs_f64();

            if let Some(truth) = truth.as_deref_mut().filter(|_| !truth_fused) {
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
        }
        Ok(())
    })?;
    for (writer, path) in writers.into_iter().zip(&bucket_paths) {
        writer
            .into_inner()
            .map_err(|error| spill_error(path, error.into_error()))?;
    }
    // Frees the device's copies before the shards are written (nothing to free on a cpu-only
    // build, where clippy sees plain data).
    #[allow(clippy::drop_non_drop)]
    {
        drop(encoder);
        drop(coarse);
    }

    // Lists carry their vectors' records, read back from the catalog's spill file.
    let records_file = match catalog.as_mut() {
        Some(catalog) => Some(catalog.records_for_lists()?),
        None => None,
    };
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
                list_blob_from_entries(
                    (first_list + offset) as u32,
                    entries,
                    records_file.as_ref(),
                    dim,
                    config,
                    &layout,
                )
            })
            .collect::<Result<_, _>>()?;
        for (entries, blob) in by_list.iter().zip(blobs) {
            shards_writer.add(blob, entries.len()).await?;
            progress.advance(entries.len() as u64);
        }
    }
    let (locations, shards) = shards_writer.finish().await?;
    debug_assert_eq!(locations.len(), nlist);
    let catalog_ref = match catalog {
        Some(catalog) => Some(catalog.finish(storage, &generation).await?),
        None => None,
    };
    let manifest = finish_generation(
        storage,
        &generation,
        now_ms,
        trained,
        config,
        n,
        &locations,
        shards,
        catalog_ref,
    )
    .await?;
    if !options.defer_manifest {
        crate::build::write_manifest(storage, &manifest).await?;
    }
    seconds.write_s += write_started.elapsed().as_secs_f64();
    Ok((manifest, seconds))
}

/// The spill entries of one batch, in row order.
#[allow(clippy::too_many_arguments)]
fn encode_entries(
    batch: &[f32],
    dim: usize,
    first_row: u64,
    labels: &[u32],
    codes: &[u8],
    metadata_refs: Option<&[u64]>,
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
            let metadata_ref = metadata_refs.map_or(first_row + index as u64, |refs| refs[index]);
            entry[20..28].copy_from_slice(&metadata_ref.to_le_bytes());
            entry[ENTRY_HEAD..ENTRY_HEAD + m].copy_from_slice(&codes[index * m..(index + 1) * m]);
            let rerank_slot = &mut entry[ENTRY_HEAD + m..];
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
    records_file: Option<&RecordsFile>,
    dim: usize,
    config: &BuildConfig,
    layout: &EntryLayout,
) -> Result<Vec<u8>, BuildError> {
    let m = layout.m;
    let count = entries.len();
    let mut ids = Vec::with_capacity(count);
    let mut hashes = Vec::with_capacity(count);
    let mut metas = Vec::with_capacity(count);
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
        metas.push(u64::from_le_bytes(
            entry[20..28].try_into().expect("8 bytes"),
        ));
        codes.extend_from_slice(&entry[ENTRY_HEAD..ENTRY_HEAD + m]);
        let rerank_slot = &entry[ENTRY_HEAD + m..];
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
    let rerank_data = rerank_data(config.rerank, fp16, scales, values);
    let record_bytes = match records_file {
        Some(file) => Some(file.read_records(&metas)?),
        None => None,
    };
    let records: Option<Vec<&[u8]>> = record_bytes.as_ref().map(|(bytes, ends)| {
        let mut start = 0;
        ends.iter()
            .map(|end| {
                let record = &bytes[start..*end];
                start = *end;
                record
            })
            .collect()
    });
    let columns = ListColumns {
        ids: &ids,
        content_hashes: &hashes,
        metadata_refs: &metas,
        codes,
        rerank: &rerank_data,
        records: records.as_deref(),
    };
    let blob = assemble_list_blob(list_id, dim, config, columns);
    debug_assert_eq!(
        blob.len() as u64,
        list_blob_len(
            count,
            dim,
            config,
            record_bytes.as_ref().map(|(bytes, _)| bytes.len() as u64)
        )
    );
    Ok(blob)
}

/// The spilled catalog records, read back by metadata reference (positioned reads: the lists
/// are assembled in parallel). Their bytes are in the page cache while a build of ~10M rows
/// runs; at a billion rows the reads are random over the whole file.
struct RecordsFile {
    file: File,
    path: PathBuf,
    records_offset: u64,
}

impl RecordsFile {
    /// The stored records behind `metadata_refs`, back to back, with each one's end offset.
    fn read_records(&self, metadata_refs: &[u64]) -> Result<(Vec<u8>, Vec<usize>), BuildError> {
        use std::os::unix::fs::FileExt;
        let total: u64 = metadata_refs.iter().map(|r| stored_record_len(*r)).sum();
        let mut bytes = vec![0u8; total as usize];
        let mut ends = Vec::with_capacity(metadata_refs.len());
        let mut start = 0usize;
        for metadata_ref in metadata_refs {
            let range = clipedge_format::record_range(*metadata_ref);
            let end = start + (range.end - range.start) as usize;
            self.file
                .read_exact_at(&mut bytes[start..end], range.start - self.records_offset)
                .map_err(|error| spill_error(&self.path, error))?;
            ends.push(end);
            start = end;
        }
        Ok((bytes, ends))
    }
}

/// The catalog of a streamed build: records appended to a local file as rows stream past, each
/// row's list and metadata reference kept for the id table (12 bytes a row in memory), then
/// uploaded in [`CATALOG_PART_BYTES`] parts (a multipart upload past one part).
/// Part size of the catalog's upload: S3 wants ≥ 5 MiB parts and at most 10,000 of them, so
/// this reaches 640 GB.
const CATALOG_PART_BYTES: usize = 64 << 20;

struct CatalogSpill {
    reader: MetadataReader,
    records_offset: u64,
    records_path: PathBuf,
    records: BufWriter<File>,
    records_written: u64,
    lists: Vec<u32>,
    refs: Vec<u64>,
    json: Vec<Vec<u8>>,
    stored: Vec<u8>,
}

impl CatalogSpill {
    fn new(reader: MetadataReader, items: u64, spill_dir: &Path) -> Result<Self, BuildError> {
        let records_path = spill_dir.join("catalog-records.bin");
        let file =
            File::create(&records_path).map_err(|error| spill_error(&records_path, error))?;
        Ok(CatalogSpill {
            reader,
            records_offset: catalog_records_offset(items),
            records_path,
            records: BufWriter::with_capacity(1 << 20, file),
            records_written: 0,
            lists: Vec::with_capacity(items as usize),
            refs: Vec::with_capacity(items as usize),
            json: Vec::new(),
            stored: Vec::new(),
        })
    }

    /// Reads and stores the next `rows` records; returns their metadata references.
    fn add_batch(&mut self, rows: usize, labels: &[u32]) -> Result<Vec<u64>, BuildError> {
        self.json.clear();
        self.reader.next_records(rows, &mut self.json)?;
        self.stored.clear();
        let mut refs = Vec::with_capacity(rows);
        for json in &self.json {
            let written = self.records_written + self.stored.len() as u64;
            let metadata_ref =
                append_catalog_record(json, self.records_offset, &mut self.stored, written)
                    .map_err(|error| BuildError::Input(error.to_string()))?;
            refs.push(metadata_ref);
        }
        self.records
            .write_all(&self.stored)
            .map_err(|error| spill_error(&self.records_path, error))?;
        self.records_written += self.stored.len() as u64;
        self.lists.extend_from_slice(labels);
        self.refs.extend_from_slice(&refs);
        Ok(refs)
    }

    /// Flushes the records written so far and opens them for the lists' records columns.
    fn records_for_lists(&mut self) -> Result<RecordsFile, BuildError> {
        self.records
            .flush()
            .map_err(|error| spill_error(&self.records_path, error))?;
        let file = File::open(&self.records_path)
            .map_err(|error| spill_error(&self.records_path, error))?;
        Ok(RecordsFile {
            file,
            path: self.records_path.clone(),
            records_offset: self.records_offset,
        })
    }

    /// Writes `catalog.bin` (header, id table, then the spilled records) into the generation.
    async fn finish(self, storage: &Storage, generation: &str) -> Result<CatalogRef, BuildError> {
        let CatalogSpill {
            records_offset,
            records_path,
            records,
            lists,
            refs,
            ..
        } = self;
        records
            .into_inner()
            .map_err(|error| spill_error(&records_path, error.into_error()))?;
        let items = refs.len() as u64;
        let head =
            catalog_head(&lists, &refs).map_err(|error| BuildError::Input(error.to_string()))?;
        drop((lists, refs));
        let records_file =
            File::open(&records_path).map_err(|error| spill_error(&records_path, error))?;
        // Streamed in parts, never whole in memory: at a billion rows the records alone are
        // hundreds of GB, and one S3 PUT stops at 5 GB.
        let mut reader = std::io::Cursor::new(head)
            .chain(std::io::BufReader::with_capacity(1 << 20, records_file));
        let mut checksum = clipedge_format::Checksum::default();
        let parts = std::iter::from_fn(|| {
            let mut part = Vec::with_capacity(CATALOG_PART_BYTES);
            match (&mut reader)
                .take(CATALOG_PART_BYTES as u64)
                .read_to_end(&mut part)
            {
                Ok(0) => None,
                Ok(_) => {
                    checksum.update(&part);
                    Some(Ok(Bytes::from(part)))
                }
                Err(error) => Some(Err(error)),
            }
        });
        let path = "catalog.bin";
        let bytes = storage
            .put_new_parts(&generation_path(generation, path), parts)
            .await?;
        Ok(CatalogRef {
            path: path.to_string(),
            bytes,
            crc32: checksum.finish(),
            items,
            block_items: CATALOG_BLOCK_ITEMS,
            records_offset,
        })
    }
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
                defer_manifest: false,
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
            let truth = truth.finish().unwrap();
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
