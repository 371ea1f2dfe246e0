//! Build determinism, generation publishing, and storage backends.

use bytes::Bytes;
use clipedge_format::{generation_path, CurrentPointer, Manifest, RerankKind, CURRENT_OBJECT};
use clipedge_index::{IndexReader, OpenOptions, SearchParams};
use clipedge_index_builder::{build_index, BuildConfig, BuildError, NoProgress, VectorSet};
use clipedge_storage::{Storage, StorageError};
use clipedge_tests::{build, generation_objects, open, quick_config, temp_storage, Dataset};

const DIM: usize = 32;
const NLIST: usize = 16;

/// Small shards, so a build writes several and determinism covers the shard split too.
fn config(pq_bits: u8, rerank: RerankKind, seed: u64) -> BuildConfig {
    BuildConfig {
        seed,
        shard_target_bytes: 64 << 10,
        ..quick_config(NLIST, 8, pq_bits, rerank)
    }
}

/// A manifest with the fields that legitimately differ between two builds blanked.
fn comparable(manifest: &Manifest) -> Manifest {
    Manifest {
        generation: String::new(),
        created_unix_ms: 0,
        ..manifest.clone()
    }
}

async fn current_generation(storage: &Storage) -> String {
    let bytes = storage.get(CURRENT_OBJECT).await.expect("read CURRENT");
    CurrentPointer::from_json(&bytes).unwrap().generation
}

#[tokio::test]
async fn builds_with_the_same_seed_are_byte_identical() {
    let data = Dataset::new(4_000, DIM, 1, 5);
    for (bits, rerank) in [(8, RerankKind::Int8), (4, RerankKind::Fp16)] {
        let (_first_dir, first) = temp_storage();
        let (_second_dir, second) = temp_storage();
        let first_report = build(&first, &data.vectors(), &config(bits, rerank, 99)).await;
        let second_report = build(&second, &data.vectors(), &config(bits, rerank, 99)).await;
        assert_ne!(first_report.generation, second_report.generation);
        let mut first_objects = generation_objects(&first, &first_report.generation).await;
        let mut second_objects = generation_objects(&second, &second_report.generation).await;
        let first_manifest =
            Manifest::from_json(&first_objects.remove("manifest.json").unwrap()).unwrap();
        let second_manifest =
            Manifest::from_json(&second_objects.remove("manifest.json").unwrap()).unwrap();
        assert!(
            first_manifest.shards.len() > 1,
            "the test wants several shards"
        );
        assert_eq!(comparable(&first_manifest), comparable(&second_manifest));
        let names: Vec<&String> = first_objects.keys().collect();
        assert_eq!(names, second_objects.keys().collect::<Vec<_>>());
        for required in [
            "routing.bin",
            "groups.bin",
            "codebooks.bin",
            "shard-00000.bin",
            "shard-00001.bin",
        ] {
            assert!(
                first_objects.contains_key(required),
                "{required} missing: {names:?}"
            );
        }
        for (name, bytes) in &first_objects {
            assert!(
                bytes == &second_objects[name],
                "bits {bits}: {name} differs between builds"
            );
        }
    }
}

#[tokio::test]
async fn a_different_seed_gives_different_bytes() {
    let data = Dataset::new(4_000, DIM, 1, 5);
    let (_first_dir, first) = temp_storage();
    let (_second_dir, second) = temp_storage();
    let first_report = build(&first, &data.vectors(), &config(4, RerankKind::Fp16, 1)).await;
    let second_report = build(&second, &data.vectors(), &config(4, RerankKind::Fp16, 2)).await;
    let first_objects = generation_objects(&first, &first_report.generation).await;
    let second_objects = generation_objects(&second, &second_report.generation).await;
    for name in ["routing.bin", "codebooks.bin", "shard-00000.bin"] {
        assert_ne!(
            first_objects[name], second_objects[name],
            "{name} did not change with the seed"
        );
    }
}

/// Ids of the 5 best hits for `query`, probing every list.
async fn nearest_ids(reader: &IndexReader, query: &[f32]) -> Vec<u64> {
    let result = reader
        .search(query, &SearchParams::new(5, NLIST, 10))
        .await
        .expect("search");
    result.hits.iter().map(|hit| hit.id).collect()
}

#[tokio::test]
async fn a_second_build_moves_current_and_keeps_the_first_generation_searchable() {
    let data = Dataset::new(3_000, DIM, 1, 6);
    let (_dir, storage) = temp_storage();
    // Two generations that answer differently: the second stores ids offset by a million.
    let first_report = build(&storage, &data.vectors(), &config(4, RerankKind::Fp16, 1)).await;
    let first_pointer = storage.get_versioned(CURRENT_OBJECT).await.unwrap();
    assert_eq!(current_generation(&storage).await, first_report.generation);
    let first_objects = generation_objects(&storage, &first_report.generation).await;

    let offset_ids: Vec<u64> = (0..data.len() as u64).map(|row| 1_000_000 + row).collect();
    let second_vectors = VectorSet {
        ids: Some(&offset_ids),
        ..data.vectors()
    };
    let second_report = build(&storage, &second_vectors, &config(4, RerankKind::Fp16, 1)).await;
    assert_ne!(second_report.generation, first_report.generation);
    assert_eq!(current_generation(&storage).await, second_report.generation);

    // Nothing of the first generation was touched.
    assert_eq!(
        generation_objects(&storage, &first_report.generation).await,
        first_objects
    );

    let query = data.row(0);
    let current = open(&storage).await;
    assert_eq!(current.manifest().generation, second_report.generation);
    let current_ids = nearest_ids(&current, query).await;
    assert_eq!(current_ids[0], 1_000_000);
    assert!(current_ids.iter().all(|id| *id >= 1_000_000));

    let pinned_options = OpenOptions {
        generation: Some(first_report.generation.clone()),
        ..OpenOptions::default()
    };
    let pinned = IndexReader::open(storage.clone(), pinned_options)
        .await
        .unwrap();
    assert_eq!(pinned.manifest().generation, first_report.generation);
    let pinned_ids = nearest_ids(&pinned, query).await;
    assert_eq!(
        pinned_ids,
        current_ids
            .iter()
            .map(|id| id - 1_000_000)
            .collect::<Vec<_>>()
    );

    // A writer still holding the first pointer must not clobber the second publish.
    let stale = storage
        .swap_pointer(
            CURRENT_OBJECT,
            Some(&first_pointer),
            Bytes::from(CurrentPointer::new(&first_report.generation).to_json()),
        )
        .await;
    assert!(
        matches!(stale, Err(StorageError::Precondition { .. })),
        "{stale:?}"
    );
    assert_eq!(current_generation(&storage).await, second_report.generation);
    // Nor may a writer that believes there is no CURRENT yet.
    let blind = storage
        .swap_pointer(
            CURRENT_OBJECT,
            None,
            Bytes::from(CurrentPointer::new("x").to_json()),
        )
        .await;
    assert!(
        matches!(blind, Err(StorageError::AlreadyExists { .. })),
        "{blind:?}"
    );
    // The current version is accepted: this is how a rollback publishes.
    let latest = storage.get_versioned(CURRENT_OBJECT).await.unwrap();
    storage
        .swap_pointer(
            CURRENT_OBJECT,
            Some(&latest),
            Bytes::from(CurrentPointer::new(&first_report.generation).to_json()),
        )
        .await
        .unwrap();
    assert_eq!(
        open(&storage).await.manifest().generation,
        first_report.generation
    );
}

#[tokio::test]
async fn a_build_refuses_to_replace_an_unreadable_current_pointer() {
    let data = Dataset::new(2_000, DIM, 1, 7);
    let (_dir, storage) = temp_storage();
    storage
        .put_new(CURRENT_OBJECT, Bytes::from_static(b"not a pointer"))
        .await
        .unwrap();
    let outcome = build_index(
        &storage,
        &data.vectors(),
        &config(4, RerankKind::None, 1),
        &NoProgress,
    )
    .await;
    assert!(
        matches!(outcome, Err(BuildError::Pointer(_))),
        "{outcome:?}"
    );
    assert_eq!(
        &storage.get(CURRENT_OBJECT).await.unwrap()[..],
        b"not a pointer"
    );
}

#[tokio::test]
async fn memory_and_directory_storage_give_identical_results() {
    let data = Dataset::new(3_000, DIM, 20, 8);
    let (dir, on_disk) = temp_storage();
    let in_memory = Storage::open("memory://").unwrap();
    let disk_report = build(&on_disk, &data.vectors(), &config(8, RerankKind::Fp16, 3)).await;
    let memory_report = build(&in_memory, &data.vectors(), &config(8, RerankKind::Fp16, 3)).await;
    let disk_objects = generation_objects(&on_disk, &disk_report.generation).await;
    let memory_objects = generation_objects(&in_memory, &memory_report.generation).await;
    assert_eq!(
        disk_objects.keys().collect::<Vec<_>>(),
        memory_objects.keys().collect::<Vec<_>>()
    );
    assert_eq!(
        disk_objects["shard-00000.bin"],
        memory_objects["shard-00000.bin"]
    );

    // The same directory through a file:// URL is the same index.
    let url = format!("file://{}", dir.path().display());
    let readers = [
        open(&on_disk).await,
        open(&in_memory).await,
        open(&Storage::open(&url).unwrap()).await,
    ];
    let params = SearchParams::new(10, 4, 10);
    for query in data.out_of_distribution.chunks_exact(DIM) {
        let mut answers = Vec::new();
        for reader in &readers {
            answers.push(reader.search(query, &params).await.unwrap().hits);
        }
        assert_eq!(answers[0].len(), 10);
        assert_eq!(answers[0], answers[1], "directory vs memory");
        assert_eq!(answers[0], answers[2], "directory vs file:// URL");
    }
    assert_eq!(
        comparable(readers[0].manifest()),
        comparable(readers[1].manifest())
    );
    // Both are laid out under the same object names.
    assert!(in_memory
        .get(&generation_path(&memory_report.generation, "manifest.json"))
        .await
        .is_ok());
}
