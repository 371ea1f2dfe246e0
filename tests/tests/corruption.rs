//! Damaged or missing objects must surface as errors, never as wrong results.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use clipedge_format::{generation_path, FormatError, RerankKind, CURRENT_OBJECT};
use clipedge_index::{IndexError, IndexReader, OpenOptions, SearchParams};
use clipedge_storage::{SourceError, Storage, StorageError};
use clipedge_tests::{
    build, group_blobs, list_locations, open, probed_lists, quick_config, temp_storage, Dataset,
};
use tempfile::TempDir;

const DIM: usize = 32;
const NLIST: usize = 16;
const NPROBE: usize = 4;

struct Fixture {
    dir: TempDir,
    storage: Storage,
    data: Dataset,
    generation: String,
}

impl Fixture {
    async fn new() -> Fixture {
        let data = Dataset::new(3_000, DIM, 60, 21);
        let (dir, storage) = temp_storage();
        let report = build(
            &storage,
            &data.vectors(),
            &quick_config(NLIST, 8, 4, RerankKind::Fp16),
        )
        .await;
        Fixture {
            dir,
            storage,
            data,
            generation: report.generation,
        }
    }

    /// Path on disk of an object of the generation.
    fn file(&self, name: &str) -> PathBuf {
        self.dir
            .path()
            .join(generation_path(&self.generation, name))
    }

    /// A reader with empty caches, opened after the damage was done.
    async fn reopen(&self) -> Result<IndexReader, IndexError> {
        IndexReader::open(self.storage.clone(), OpenOptions::default()).await
    }
}

fn flip_byte(path: &Path, position: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[position] ^= 0x10;
    std::fs::write(path, bytes).unwrap();
}

fn is_checksum_error(error: &IndexError) -> bool {
    matches!(error, IndexError::Format(FormatError::Checksum { .. }))
}

#[tokio::test]
async fn a_flipped_byte_in_a_list_fails_exactly_the_searches_that_probe_it() {
    let fixture = Fixture::new().await;
    let reader = open(&fixture.storage).await;
    let blobs = group_blobs(&reader).await;
    let locations = list_locations(&reader).await;
    // The victim: the list the first query scans first.
    let queries = &fixture.data.out_of_distribution;
    let victim = probed_lists(&reader, &blobs, &queries[..DIM], NPROBE)[0];
    let params = SearchParams::new(10, NPROBE, 10);
    let mut undamaged = Vec::new();
    for query in queries.chunks_exact(DIM) {
        undamaged.push(reader.search(query, &params).await.unwrap().hits);
    }
    let location = locations[victim as usize];
    let shard = &reader.manifest().shards[location.shard as usize].path;
    // Somewhere in the middle of the list: past the header, inside the columns or codes.
    flip_byte(
        &fixture.file(shard),
        (location.offset + u64::from(location.length) / 2) as usize,
    );

    let damaged = fixture.reopen().await.expect("open does not read lists");
    let (mut failed, mut answered) = (0, 0);
    for (query, undamaged) in queries.chunks_exact(DIM).zip(&undamaged) {
        let probes_victim = probed_lists(&damaged, &blobs, query, NPROBE).contains(&victim);
        match damaged.search(query, &params).await {
            Err(error) => {
                assert!(
                    probes_victim,
                    "a search not touching list {victim} failed: {error}"
                );
                assert!(is_checksum_error(&error), "{error:?}");
                assert!(
                    error.to_string().contains(&format!("list {victim}")),
                    "{error}"
                );
                failed += 1;
            }
            Ok(result) => {
                assert!(
                    !probes_victim,
                    "a search probing corrupt list {victim} succeeded"
                );
                assert_eq!(&result.hits, undamaged);
                answered += 1;
            }
        }
    }
    assert!(
        failed > 0 && answered > 0,
        "failed {failed}, answered {answered}"
    );
    // A failed list is not cached: asking again fails again.
    let again = damaged.search(&queries[..DIM], &params).await;
    assert!(
        matches!(&again, Err(error) if is_checksum_error(error)),
        "{again:?}"
    );
}

#[tokio::test]
async fn a_missing_shard_is_an_error() {
    let fixture = Fixture::new().await;
    let reader = open(&fixture.storage).await;
    std::fs::remove_file(fixture.file(&reader.manifest().shards[0].path)).unwrap();
    let damaged = fixture.reopen().await.expect("open does not read shards");
    let outcome = damaged
        .search(fixture.data.row(0), &SearchParams::new(10, NLIST, 10))
        .await;
    assert!(
        matches!(
            outcome,
            Err(IndexError::Source(SourceError::NotFound { .. }))
        ),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn a_root_without_current_has_no_index() {
    let (_dir, empty) = temp_storage();
    let outcome = IndexReader::open(empty, OpenOptions::default()).await;
    assert!(
        matches!(&outcome, Err(IndexError::NoIndex { object, .. }) if object == CURRENT_OBJECT),
        "{:?}",
        outcome.err()
    );

    let fixture = Fixture::new().await;
    std::fs::remove_file(fixture.dir.path().join(CURRENT_OBJECT)).unwrap();
    let outcome = fixture.reopen().await;
    assert!(
        matches!(outcome, Err(IndexError::NoIndex { .. })),
        "{:?}",
        outcome.err()
    );
    // The generation itself is still there for whoever names it.
    let pinned = OpenOptions {
        generation: Some(fixture.generation.clone()),
        ..OpenOptions::default()
    };
    IndexReader::open(fixture.storage.clone(), pinned)
        .await
        .unwrap();
    let unknown = OpenOptions {
        generation: Some("no-such-generation".to_string()),
        ..OpenOptions::default()
    };
    let outcome = IndexReader::open(fixture.storage.clone(), unknown).await;
    assert!(
        matches!(&outcome, Err(IndexError::NoIndex { object, .. }) if object.ends_with("manifest.json")),
        "{:?}",
        outcome.err()
    );
}

#[tokio::test]
async fn a_damaged_current_pointer_is_an_error() {
    let fixture = Fixture::new().await;
    let current = fixture.dir.path().join(CURRENT_OBJECT);
    for (content, expected) in [
        (
            &b"{\"format_version\":1,\"generation\":\"../etc\"}"[..],
            "Invalid",
        ),
        (&b"{garbage"[..], "Json"),
    ] {
        std::fs::write(&current, content).unwrap();
        let outcome = fixture.reopen().await;
        let matched = match &outcome {
            Err(IndexError::Format(FormatError::Invalid { .. })) => "Invalid",
            Err(IndexError::Format(FormatError::Json { .. })) => "Json",
            _ => "other",
        };
        assert_eq!(matched, expected, "{:?}", outcome.err());
    }
}

#[tokio::test]
async fn damaged_routing_codebooks_or_manifest_fail_at_open() {
    let fixture = Fixture::new().await;
    for name in ["routing.bin", "codebooks.bin", "groups.bin"] {
        let path = fixture.file(name);
        let pristine = std::fs::read(&path).unwrap();
        for position in [0, pristine.len() / 2, pristine.len() - 1] {
            flip_byte(&path, position);
            let outcome = fixture.reopen().await;
            assert!(
                matches!(&outcome, Err(error) if is_checksum_error(error)),
                "{name} byte {position}: {:?}",
                outcome.err()
            );
            std::fs::write(&path, &pristine).unwrap();
        }
    }
    let manifest = fixture.file("manifest.json");
    let pristine = std::fs::read(&manifest).unwrap();
    std::fs::write(&manifest, &pristine[..pristine.len() / 2]).unwrap();
    let outcome = fixture.reopen().await;
    assert!(
        matches!(outcome, Err(IndexError::Format(FormatError::Json { .. }))),
        "{:?}",
        outcome.err()
    );
    std::fs::write(&manifest, &pristine).unwrap();
    fixture.reopen().await.expect("restored");
}

#[tokio::test]
async fn a_damaged_group_blob_read_on_demand_fails_the_search() {
    let fixture = Fixture::new().await;
    let on_demand = OpenOptions {
        preload_groups_max_bytes: 0,
        ..OpenOptions::default()
    };
    let reader = IndexReader::open(fixture.storage.clone(), on_demand.clone())
        .await
        .unwrap();
    let params = SearchParams::new(10, NLIST, 10);
    let query = &fixture.data.in_distribution[..DIM];
    let expected = reader.search(query, &params).await.unwrap();
    assert!(expected.stats.gets > 0);

    let entry = reader.routing().groups[0];
    flip_byte(
        &fixture.file("groups.bin"),
        (entry.offset + u64::from(entry.length) / 2) as usize,
    );
    // Groups are not read at open in this mode, so only the search can notice.
    let damaged = IndexReader::open(fixture.storage.clone(), on_demand)
        .await
        .unwrap();
    let outcome = damaged.search(query, &params).await;
    assert!(
        matches!(&outcome, Err(error) if is_checksum_error(error)),
        "{outcome:?}"
    );
    // The reader opened before the damage cached its verified groups and lists.
    let cached = reader.search(query, &params).await.unwrap();
    assert_eq!(cached.hits, expected.hits);
    assert_eq!(cached.stats.gets, 0);
    assert_eq!(cached.stats.list_cache_hits, NLIST);
}

#[tokio::test]
async fn an_object_written_over_a_generation_is_refused() {
    // Published generations are immutable: every object is written create-only.
    let fixture = Fixture::new().await;
    let name = generation_path(&fixture.generation, "routing.bin");
    let outcome = fixture
        .storage
        .put_new(&name, Bytes::from_static(b"overwrite"))
        .await;
    assert!(
        matches!(outcome, Err(StorageError::AlreadyExists { .. })),
        "{outcome:?}"
    );
    fixture.reopen().await.expect("still intact");
}

#[tokio::test]
async fn a_pinned_generation_cannot_escape_the_root() {
    // Another root next to an index: a generation name with `..` must not reach the index.
    let fixture = Fixture::new().await;
    let neighbour = fixture.dir.path().join("neighbour");
    let storage = Storage::open_or_create(neighbour.to_str().unwrap()).unwrap();
    let root_name = fixture.dir.path().file_name().unwrap().to_str().unwrap();
    for generation in [
        format!("../../generations/{}", fixture.generation),
        format!("../../../{root_name}/generations/{}", fixture.generation),
    ] {
        let options = OpenOptions {
            generation: Some(generation.clone()),
            ..OpenOptions::default()
        };
        let outcome = IndexReader::open(storage.clone(), options).await;
        assert!(
            outcome.is_err(),
            "{generation} opened an index outside the root"
        );
    }
}
