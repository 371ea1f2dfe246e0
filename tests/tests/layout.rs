//! What the builder writes matches `docs/format.md` byte for byte: list placement in shards,
//! file references in the manifest, the code layouts the scan kernels (and the edge Worker)
//! read, and the rerank copies.

use clipedge_format::{checksum, generation_path, ListExpectation, ListView, Manifest, RerankKind};
use clipedge_index_builder::{train, write_generation, NoProgress, TrainedIndex};
use clipedge_storage::Storage;
use clipedge_tests::{quick_config, Dataset};

const N: usize = 3_000;
const DIM: usize = 32;
const NLIST: usize = 16;
const PQ_M: usize = 8;
/// List blobs start at multiples of this inside a shard.
const LIST_ALIGN: u64 = 64;

/// A generation written to memory, with the trained model it was written from.
struct Written {
    storage: Storage,
    manifest: Manifest,
    trained: TrainedIndex,
}

async fn write(data: &Dataset, bits: u8, rerank: RerankKind) -> Written {
    let config = clipedge_index_builder::BuildConfig {
        // Small shards: several lists per shard and several shards.
        shard_target_bytes: 40 << 10,
        ..quick_config(NLIST, PQ_M, bits, rerank)
    };
    let trained = train(&data.vectors(), &config, &NoProgress).unwrap();
    let storage = Storage::open("memory://").unwrap();
    let (manifest, _, _) =
        write_generation(&storage, &data.vectors(), &trained, &config, &NoProgress)
            .await
            .unwrap();
    Written {
        storage,
        manifest,
        trained,
    }
}

async fn object(written: &Written, name: &str) -> Vec<u8> {
    written
        .storage
        .get(&generation_path(&written.manifest.generation, name))
        .await
        .unwrap()
        .to_vec()
}

/// IEEE binary16 to f32, written out so the check does not share code with the writer.
fn half_to_f32(bits: u16) -> f32 {
    let sign = if bits & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exponent = i32::from((bits >> 10) & 0x1f);
    let fraction = f32::from(bits & 0x3ff);
    match exponent {
        0 => sign * fraction * 2f32.powi(-24),
        31 => panic!("a unit vector has no infinities or NaNs"),
        _ => sign * (1.0 + fraction / 1024.0) * 2f32.powi(exponent - 15),
    }
}

/// Code of `row`, sub-quantizer `sub`, read from stored codes as the format specifies.
fn stored_code(codes: &[u8], bits: u8, row: usize, sub: usize) -> u8 {
    if bits == 8 {
        return codes[row * PQ_M + sub];
    }
    let block = row / 32;
    let slot = row % 32;
    let byte = codes[block * 16 * PQ_M + 16 * sub + slot % 16];
    if slot < 16 {
        byte & 0x0f
    } else {
        byte >> 4
    }
}

async fn check_generation(data: &Dataset, bits: u8, rerank: RerankKind) {
    let written = write(data, bits, rerank).await;
    let manifest = &written.manifest;
    let what = format!("bits {bits} {rerank:?}");

    // The manifest's file references describe the objects written.
    for file in [&manifest.routing, &manifest.groups, &manifest.codebooks] {
        let bytes = object(&written, &file.path).await;
        assert_eq!(bytes.len() as u64, file.bytes, "{what}: {}", file.path);
        assert_eq!(checksum(&bytes), file.crc32, "{what}: {}", file.path);
    }
    assert!(manifest.shards.len() > 1, "{what}: wants several shards");
    assert_eq!(
        manifest.shards.iter().map(|shard| shard.lists).sum::<u32>() as usize,
        NLIST
    );

    let reader = clipedge_index::IndexReader::open(
        written.storage.clone(),
        clipedge_index::OpenOptions {
            generation: Some(manifest.generation.clone()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let locations = clipedge_tests::list_locations(&reader).await;
    let mut rows_seen = vec![false; N];
    let mut next_shard_list = 0usize;
    for (shard_index, shard) in manifest.shards.iter().enumerate() {
        let bytes = object(&written, &shard.path).await;
        assert_eq!(bytes.len() as u64, shard.bytes, "{what}: {}", shard.path);
        let mut covered_to = 0u64;
        // Lists are numbered in shard order; a list never spans shards.
        let shard_lists = next_shard_list..next_shard_list + shard.lists as usize;
        for (list_id, location) in shard_lists.clone().zip(&locations[shard_lists]) {
            assert_eq!(
                location.shard as usize, shard_index,
                "{what}: list {list_id}"
            );
            assert_eq!(location.offset % LIST_ALIGN, 0, "{what}: list {list_id}");
            assert!(location.offset >= covered_to, "{what}: lists overlap");
            // The gap before a list is zero padding.
            assert!(bytes[covered_to as usize..location.offset as usize]
                .iter()
                .all(|byte| *byte == 0));
            let end = location.offset + u64::from(location.length);
            assert!(
                end <= shard.bytes,
                "{what}: list {list_id} runs past its shard"
            );
            covered_to = end;

            let blob = &bytes[location.offset as usize..end as usize];
            let view = ListView::parse(
                blob,
                &ListExpectation {
                    list_id: list_id as u32,
                    count: location.count,
                    crc32: location.crc32,
                    dim: DIM,
                    m: PQ_M,
                    bits,
                    rerank,
                },
            )
            .unwrap();
            check_list(
                data,
                &written.trained,
                &view,
                list_id,
                &mut rows_seen,
                &what,
            );
        }
        assert!(bytes[covered_to as usize..].iter().all(|byte| *byte == 0));
        next_shard_list += shard.lists as usize;
    }
    assert!(
        rows_seen.iter().all(|seen| *seen),
        "{what}: every row is stored"
    );
}

fn check_list(
    data: &Dataset,
    trained: &TrainedIndex,
    view: &ListView<'_>,
    list_id: usize,
    rows_seen: &mut [bool],
    what: &str,
) {
    let centroid = &trained.fine_centroids[list_id * DIM..(list_id + 1) * DIM];
    let mut expected_code = vec![0u8; PQ_M];
    for row_in_list in 0..view.count {
        // Default ids and metadata refs are input rows.
        let row = view.id(row_in_list) as usize;
        assert!(!rows_seen[row], "{what}: row {row} stored twice");
        rows_seen[row] = true;
        assert_eq!(view.metadata_ref(row_in_list), row as u64);
        let vector = data.row(row);
        assert_eq!(
            view.content_hash(row_in_list),
            clipedge_index_builder::content_hash(vector)
        );

        // Codes encode the residual from the list's centroid, in the specified layout.
        let residual: Vec<f32> = vector.iter().zip(centroid).map(|(x, c)| x - c).collect();
        trained.pq.encode_one(&residual, &mut expected_code);
        for (sub, code) in expected_code.iter().enumerate() {
            assert_eq!(
                stored_code(view.codes(), view.bits, row_in_list, sub),
                *code,
                "{what}: list {list_id} row {row_in_list} sub-quantizer {sub}"
            );
        }

        match view.rerank {
            RerankKind::Fp16 => {
                for (pair, x) in view.rerank_fp16(row_in_list).chunks_exact(2).zip(vector) {
                    let stored = half_to_f32(u16::from_le_bytes([pair[0], pair[1]]));
                    assert!(
                        (stored - x).abs() <= x.abs() / 1024.0 + 1e-7,
                        "{what}: {stored} vs {x}"
                    );
                }
            }
            RerankKind::Int8 => {
                let (scale, values) = view.rerank_int8(row_in_list);
                let max_abs = vector.iter().fold(0f32, |acc, x| acc.max(x.abs()));
                assert!(
                    (scale - max_abs / 127.0).abs() <= 1e-6,
                    "{what}: scale {scale}"
                );
                assert!(values
                    .iter()
                    .any(|value| (*value as i8).unsigned_abs() == 127));
                for (value, x) in values.iter().zip(vector) {
                    let stored = scale * f32::from(*value as i8);
                    assert!(
                        (stored - x).abs() <= scale * 0.5001,
                        "{what}: {stored} vs {x}"
                    );
                }
            }
            RerankKind::None => {}
        }
    }
    if view.bits == 4 {
        // Slots past the last vector of the last block hold code 0.
        for slot in view.count..view.count.div_ceil(32) * 32 {
            for sub in 0..PQ_M {
                assert_eq!(
                    stored_code(view.codes(), 4, slot, sub),
                    0,
                    "{what}: padding slot {slot}"
                );
            }
        }
    }
}

#[tokio::test]
async fn written_generations_follow_the_format_spec() {
    let data = Dataset::new(N, DIM, 1, 41);
    check_generation(&data, 8, RerankKind::Int8).await;
    check_generation(&data, 4, RerankKind::Fp16).await;
    check_generation(&data, 8, RerankKind::None).await;
}

#[tokio::test]
async fn generation_names_sort_by_creation_time() {
    let data = Dataset::new(600, DIM, 1, 42);
    let first = write(&data, 4, RerankKind::None).await.manifest;
    std::thread::sleep(std::time::Duration::from_millis(2));
    let second = write(&data, 4, RerankKind::None).await.manifest;
    for manifest in [&first, &second] {
        let name = &manifest.generation;
        let (millis, nonce) = name.split_once('-').expect("<unix-ms>-<nonce>");
        assert_eq!(millis.len(), 13, "{name}");
        assert_eq!(millis.parse::<u64>().unwrap(), manifest.created_unix_ms);
        assert!(
            nonce.len() == 8 && nonce.bytes().all(|b| b.is_ascii_hexdigit()),
            "{name}"
        );
    }
    assert!(second.generation > first.generation);
}
