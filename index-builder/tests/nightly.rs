//! The nightly job end to end, as its binary: a clip-retrieval folder in, a published and
//! gated generation out; a failed gate, bad input and a killed run leave CURRENT serving.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use clipedge_datagen::{ClipLikeConfig, ClipLikeGenerator, QueryKind};
use serde_json::Value;

const DIM: usize = 32;

fn builder() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_clipedge-index-builder"));
    command.env("CLIPEDGE_LOG", "warn");
    command
}

fn write_f16_npy(path: &Path, data: &[f32], dim: usize) {
    clipedge_datagen::write_npy_f16(path, data, dim).unwrap();
}

/// A clip-retrieval output folder: image embeddings in `files` shards, text embeddings beside.
fn clip_retrieval_folder(root: &Path, n: usize, files: usize) {
    let generator = ClipLikeGenerator::new(ClipLikeConfig::new(DIM, 11));
    let data = generator.base(n);
    let image_folder = root.join("embeddings").join("img_emb");
    let text_folder = root.join("embeddings").join("text_emb");
    std::fs::create_dir_all(&image_folder).unwrap();
    std::fs::create_dir_all(&text_folder).unwrap();
    let per_file = n.div_ceil(files);
    for (index, chunk) in data.chunks(per_file * DIM).enumerate() {
        write_f16_npy(
            &image_folder.join(format!("img_emb_{index}.npy")),
            chunk,
            DIM,
        );
    }
    let texts = generator.queries(50, QueryKind::OutOfDistribution);
    write_f16_npy(&text_folder.join("text_emb_0.npy"), &texts, DIM);
}

fn last_json(stdout: &[u8]) -> Value {
    let text = String::from_utf8_lossy(stdout);
    let line = text.lines().last().expect("a last stdout line");
    serde_json::from_str(line).unwrap_or_else(|error| panic!("{error}: {line}"))
}

fn current(index: &Path) -> Option<String> {
    let bytes = std::fs::read(index.join("CURRENT")).ok()?;
    let pointer: Value = serde_json::from_slice(&bytes).unwrap();
    Some(pointer["generation"].as_str().unwrap().to_string())
}

/// Runs the builder with `args`, asserts it succeeded and returns its report (last stdout line).
fn run_ok(args: &[String]) -> Value {
    let output = builder().args(args).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    last_json(&output.stdout)
}

/// The index's live generation, opened as a front would, with the runtime it needs.
fn open_reader(index: &Path) -> (tokio::runtime::Runtime, clipedge_index::IndexReader) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let storage = clipedge_storage::Storage::open(index.to_str().unwrap()).unwrap();
    let reader = runtime
        .block_on(clipedge_index::IndexReader::open(
            storage,
            clipedge_index::OpenOptions::default(),
        ))
        .unwrap();
    (runtime, reader)
}

fn run_args(source: &Path, index: &Path) -> Vec<String> {
    run_args_with(source, index, "32")
}

fn run_args_with(source: &Path, index: &Path, gate_nprobe: &str) -> Vec<String> {
    [
        "run",
        "--device",
        "cpu",
        "--nlist",
        "32",
        "--pq-m",
        "8",
        "--pq-bits",
        "8",
        "--rerank-vectors",
        "fp16",
        "--gate-sample",
        "100",
        "--gate-nprobe",
        gate_nprobe,
        "--grace",
        "0",
        "--keep",
        "2",
        "--batch-rows",
        "1000",
    ]
    .iter()
    .map(|arg| arg.to_string())
    .chain([
        "--source".to_string(),
        source.display().to_string(),
        "--out".to_string(),
        index.display().to_string(),
    ])
    .collect()
}

#[test]
fn the_nightly_job_publishes_gates_collects_and_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("laion-part");
    clip_retrieval_folder(&source, 6000, 3);
    let index = dir.path().join("index");

    // First run: published, with a recall record and the gate's queries (image + text).
    let report = run_ok(&run_args(&source, &index));
    assert_eq!(report["published"], true);
    assert_eq!(report["n"], 6000);
    assert_eq!(report["gate_queries"], 150);
    assert!(report["recall_at_10"].as_f64().unwrap() >= 0.95, "{report}");
    assert!(report["previous_recall_at_10"].is_null());
    assert!(report["device"].as_str().unwrap().starts_with("cpu"));
    let first_generation = report["generation"].as_str().unwrap().to_string();
    assert_eq!(current(&index).as_deref(), Some(first_generation.as_str()));
    assert!(index
        .join("generations")
        .join(&first_generation)
        .join("gate.json")
        .exists());

    // A second run that cannot reach the bar: refused with exit 3, CURRENT untouched.
    let mut strict = run_args_with(&source, &index, "1");
    strict.extend(["--min-recall", "1.0"].map(String::from));
    let refused = builder().args(&strict).output().unwrap();
    assert_eq!(
        refused.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let report = last_json(&refused.stdout);
    assert_eq!(report["published"], false);
    assert!(report["previous_recall_at_10"].as_f64().is_some());
    assert_eq!(current(&index).as_deref(), Some(first_generation.as_str()));

    // A third, passing run publishes; the GC keeps two complete generations. Its gate
    // calibrates the default nprobe from 1 up: judged at the first nprobe that meets the
    // target, which the manifest then carries.
    let mut calibrating = run_args_with(&source, &index, "1");
    calibrating.extend(["--gate-max-nprobe", "32"].map(String::from));
    let report = run_ok(&calibrating);
    let third_generation = report["generation"].as_str().unwrap().to_string();
    assert_eq!(current(&index).as_deref(), Some(third_generation.as_str()));
    let default_nprobe = report["default_nprobe"].as_u64().unwrap();
    let tried = report["recall_by_nprobe"].as_array().unwrap();
    let (last, before) = tried.split_last().unwrap();
    assert_eq!(last["nprobe"].as_u64(), Some(default_nprobe), "{report}");
    assert_eq!(last["recall_at_10"], report["recall_at_10"]);
    let target = report["previous_recall_at_10"].as_f64().unwrap() - 0.01;
    assert!(last["recall_at_10"].as_f64().unwrap() >= target.max(0.95));
    assert!(
        before
            .iter()
            .all(|rung| rung["recall_at_10"].as_f64().unwrap() < target.max(0.95)),
        "stops at the first nprobe that meets the target: {report}"
    );
    let (_runtime, reader) = open_reader(&index);
    assert_eq!(
        reader.manifest().default_nprobe(),
        Some(default_nprobe as usize)
    );
    drop(reader);

    // Rollback goes to the newest older generation that passed its gate: the first.
    let rollback = builder()
        .args(["rollback", "--index", index.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        rollback.status.success(),
        "{}",
        String::from_utf8_lossy(&rollback.stderr)
    );
    assert_eq!(current(&index).as_deref(), Some(first_generation.as_str()));

    // gc --keep 1 keeps CURRENT (the first) and the newest complete one only.
    let gc = builder()
        .args([
            "gc",
            "--index",
            index.to_str().unwrap(),
            "--keep",
            "1",
            "--grace",
            "0",
        ])
        .output()
        .unwrap();
    assert!(
        gc.status.success(),
        "{}",
        String::from_utf8_lossy(&gc.stderr)
    );
    let remaining: Vec<String> = std::fs::read_dir(index.join("generations"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(remaining.contains(&first_generation), "{remaining:?}");
    assert!(remaining.contains(&third_generation), "{remaining:?}");
    assert_eq!(remaining.len(), 2, "{remaining:?}");
}

#[test]
fn bad_input_stops_the_run_naming_the_file_and_publishes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("laion-part");
    clip_retrieval_folder(&source, 2000, 2);
    // A truncated shard (a copy that stopped early).
    let shard = source
        .join("embeddings")
        .join("img_emb")
        .join("img_emb_1.npy");
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() - 10]).unwrap();
    let index = dir.path().join("index");
    let output = builder().args(run_args(&source, &index)).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("img_emb_1.npy"), "{stderr}");
    assert!(current(&index).is_none());
}

/// Kills the job with SIGKILL once stderr shows `stage`, then checks CURRENT still names a
/// servable generation and the next run succeeds.
fn killed_during(stage: &str) {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("laion-part");
    clip_retrieval_folder(&source, 20_000, 4);
    let index = dir.path().join("index");
    run_ok(&run_args(&source, &index));
    let live = current(&index).unwrap();

    let mut child = builder()
        .args(run_args(&source, &index))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = false;
    for line in stderr.lines() {
        if line.unwrap().contains(stage) {
            seen = true;
            child.kill().unwrap();
            break;
        }
    }
    let _ = child.wait();
    assert!(seen, "the run never reached {stage:?}");
    assert_eq!(current(&index).as_deref(), Some(live.as_str()));

    let (_runtime, reader) = open_reader(&index);
    assert_eq!(reader.manifest().generation, live);

    run_ok(&run_args(&source, &index));
    assert_ne!(current(&index).unwrap(), live);
}

#[test]
fn a_run_killed_during_encode_leaves_current_serving() {
    killed_during("progress: assign and encode: 2");
}

#[test]
fn a_run_killed_while_writing_shards_leaves_current_serving() {
    killed_during("progress: write shards: started");
}

/// clip-retrieval's `metadata/metadata_N.parquet`: url, caption (null every 7th row), width.
fn write_metadata_parquet(path: &Path, first_row: usize, rows: usize) {
    use parquet::basic::Compression;
    use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;
    use std::sync::Arc;

    let schema = Arc::new(
        parse_message_type(
            "message schema { REQUIRED BYTE_ARRAY url (UTF8); OPTIONAL BYTE_ARRAY caption (UTF8); REQUIRED INT64 width; }",
        )
        .unwrap(),
    );
    let properties = Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build(),
    );
    let file = std::fs::File::create(path).unwrap();
    let mut writer = SerializedFileWriter::new(file, schema, properties).unwrap();
    let mut group = writer.next_row_group().unwrap();
    let ids: Vec<usize> = (first_row..first_row + rows).collect();
    let urls: Vec<ByteArray> = ids
        .iter()
        .map(|id| ByteArray::from(format!("https://img.example/{id}.jpg").as_str()))
        .collect();
    let mut column = group.next_column().unwrap().unwrap();
    column
        .typed::<ByteArrayType>()
        .write_batch(&urls, None, None)
        .unwrap();
    column.close().unwrap();
    let levels: Vec<i16> = ids.iter().map(|id| i16::from(id % 7 != 0)).collect();
    let captions: Vec<ByteArray> = ids
        .iter()
        .filter(|id| *id % 7 != 0)
        .map(|id| ByteArray::from(format!("caption of image {id}").as_str()))
        .collect();
    let mut column = group.next_column().unwrap().unwrap();
    column
        .typed::<ByteArrayType>()
        .write_batch(&captions, Some(&levels), None)
        .unwrap();
    column.close().unwrap();
    let widths: Vec<i64> = ids.iter().map(|id| *id as i64).collect();
    let mut column = group.next_column().unwrap().unwrap();
    column
        .typed::<Int64Type>()
        .write_batch(&widths, None, None)
        .unwrap();
    column.close().unwrap();
    group.close().unwrap();
    writer.close().unwrap();
}

/// The record of `id` in a generation's `catalog.bin`, through its id table.
fn catalog_record(catalog: &[u8], id: usize) -> Value {
    let block = id / 256;
    let entry = 32 + block * (256 * 16 + 4) + (id % 256) * 16;
    let metadata_ref = u64::from_le_bytes(catalog[entry + 8..entry + 16].try_into().unwrap());
    let range = clipedge_format::record_range(metadata_ref);
    let stored = &catalog[range.start as usize..range.end as usize];
    serde_json::from_slice(&stored[..stored.len() - 4]).unwrap()
}

#[test]
fn metadata_parquet_files_become_the_catalog_and_search_results_carry_them() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("laion-part");
    clip_retrieval_folder(&source, 3000, 2);
    let metadata = source.join("metadata");
    std::fs::create_dir_all(&metadata).unwrap();
    write_metadata_parquet(&metadata.join("metadata_0.parquet"), 0, 1500);
    write_metadata_parquet(&metadata.join("metadata_1.parquet"), 1500, 1500);
    let index = dir.path().join("index");
    let generation = run_ok(&run_args(&source, &index))["generation"]
        .as_str()
        .unwrap()
        .to_string();
    let catalog = std::fs::read(
        index
            .join("generations")
            .join(&generation)
            .join("catalog.bin"),
    )
    .unwrap();
    for id in [0usize, 1, 255, 256, 1499, 1500, 2999] {
        let record = catalog_record(&catalog, id);
        assert_eq!(record["url"], format!("https://img.example/{id}.jpg"));
        let caption = if id % 7 == 0 {
            String::new()
        } else {
            format!("caption of image {id}")
        };
        assert_eq!(record["caption"], caption);
        assert_eq!(record["width"], id as u64);
    }

    // A search for a stored vector finds it, and its hit points at its own record.
    let data = ClipLikeGenerator::new(ClipLikeConfig::new(DIM, 11)).base(3000);
    let (runtime, reader) = open_reader(&index);
    for id in [7usize, 1234, 2500] {
        let query = &data[id * DIM..(id + 1) * DIM];
        let result = runtime
            .block_on(reader.search(query, &clipedge_index::SearchParams::new(1, 32, 10)))
            .unwrap();
        let hit = &result.hits[0];
        assert_eq!(hit.id, id as u64);
        let range = clipedge_format::record_range(hit.metadata_ref);
        let record =
            clipedge_format::decode_record(&catalog[range.start as usize..range.end as usize])
                .unwrap();
        assert_eq!(record.url, format!("https://img.example/{id}.jpg"));
        // The other columns reach the fronts as the record's extra fields.
        assert_eq!(record.extra["width"], id as u64);
        // The hit's list carries the same record: the scanner returns it with the hit, so a
        // front shows the result without reading the catalog.
        let from_list: Value = serde_json::from_str(&result.records[0]).unwrap();
        assert_eq!(from_list, catalog_record(&catalog, id));
    }

    // Metadata that does not match its embeddings stops the run, naming the file.
    write_metadata_parquet(&metadata.join("metadata_1.parquet"), 1500, 1499);
    let output = builder()
        .args(run_args(&source, &dir.path().join("index2")))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("metadata_1.parquet") && stderr.contains("1499"),
        "{stderr}"
    );
}
