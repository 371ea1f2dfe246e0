//! `run`: the nightly job. Ingest → train → assign/encode → write → recall gate → publish → GC.
//!
//! Exit codes: 0 published (or nothing to do), 3 the gate refused the new generation (CURRENT
//! untouched, the generation kept for inspection), 2 any error (nothing published).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Args;
use clipedge_format::{Manifest, ModelInfo, RerankKind};
use clipedge_index_builder::device::{Device, DeviceChoice};
use clipedge_index_builder::{
    gate_generation, gc, publish, train_on, write_generation_streamed, write_manifest, BuildConfig,
    Candidate, EmbeddingSource, ExactTopK, GateConfig, GcOptions, ProbeRecall, StreamOptions,
    VectorSet, GATE_DEFAULT_MAX_NPROBE, GATE_DEFAULT_NPROBE,
};
use clipedge_storage::Storage;
use serde::{Deserialize, Serialize};

use crate::progress::StderrProgress;

#[derive(Args)]
pub struct RunArgs {
    /// Embeddings: a clip-retrieval output folder (embeddings/img_emb/img_emb_N.npy, float16
    /// or float32) or one .npy/.fvecs file; or such a folder on object storage
    /// (s3://bucket/prefix), mirrored under the spill directory first.
    #[arg(long)]
    source: String,
    /// Index root: a directory, file:// URL or s3://bucket/prefix.
    #[arg(long)]
    out: String,
    /// auto (CUDA when its libraries load, else the CPU), cpu or cuda.
    #[arg(long, default_value = "auto")]
    device: String,
    /// A TOML file with any of the settings below (snake_case keys); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: Settings,
}

/// The tunable settings, from flags or the --config file.
#[derive(Args, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Fine inverted lists.
    #[arg(long)]
    nlist: Option<usize>,
    /// Routing groups (two-level IVF); default: flat up to 4096 lists, else ~64 lists a group.
    #[arg(long)]
    groups: Option<usize>,
    /// Largest routing group in percent of the mean (default 150: even scanner shares);
    /// 0: plain k-means.
    #[arg(long)]
    group_cap_percent: Option<usize>,
    /// PQ sub-quantizers (must divide the dimension); default dim / 8.
    #[arg(long)]
    pq_m: Option<usize>,
    /// 8, or 4 for fast-scan (default 4).
    #[arg(long)]
    pq_bits: Option<u8>,
    /// fp16, int8 or none (default int8).
    #[arg(long)]
    rerank_vectors: Option<String>,
    /// Vectors sampled for coarse k-means; default min(n, max(100000, 64 * nlist)).
    #[arg(long)]
    train_size: Option<usize>,
    #[arg(long)]
    seed: Option<u64>,
    /// k-means iterations (default 20).
    #[arg(long)]
    iterations: Option<u32>,
    /// From this many lists on, hierarchical balanced k-means trains the lists (default 65536).
    #[arg(long)]
    balanced_from: Option<usize>,
    /// Target shard object size in MiB (default 256).
    #[arg(long)]
    shard_mb: Option<u64>,
    /// Vectors per streamed batch (default 65536).
    #[arg(long)]
    batch_rows: Option<usize>,
    /// Local directory for spill files (default the system temp dir; needs about the index's size).
    #[arg(long)]
    spill_dir: Option<PathBuf>,
    /// Publish only at or above this recall@10 (default 0.95).
    #[arg(long)]
    min_recall: Option<f64>,
    /// ... and not below the live generation's recorded recall by more than this (default 0.01).
    #[arg(long)]
    max_regression: Option<f64>,
    /// Gate queries sampled from the source's image vectors (default 500).
    #[arg(long)]
    gate_sample: Option<usize>,
    /// Extra gate queries (text embeddings, say): a .npy or .fvecs file.
    #[arg(long)]
    gate_queries: Option<PathBuf>,
    /// The gate judges the generation at the smallest nprobe from this one (default 16, the
    /// API's) up to --gate-max-nprobe that meets the recall target, and the manifest records it
    /// as the generation's default nprobe. Given alone: judged and served at exactly this one.
    #[arg(long)]
    gate_nprobe: Option<usize>,
    /// The most lists the gate may calibrate the default nprobe to (default 512).
    #[arg(long)]
    gate_max_nprobe: Option<usize>,
    /// The rerank factor the gate searches with (default: the API's for the index's size).
    #[arg(long)]
    gate_rerank: Option<usize>,
    /// Complete generations kept by the GC after a publish (default 3).
    #[arg(long)]
    keep: Option<usize>,
    /// Never delete a generation written to more recently than this (default 1h).
    #[arg(long)]
    grace: Option<String>,
    /// Embedding model id and fingerprint recorded in the manifest.
    #[arg(long)]
    model_id: Option<String>,
    #[arg(long)]
    model_fingerprint: Option<String>,
}

impl Settings {
    /// `self` where set, else `file`.
    fn over(self, file: Settings) -> Settings {
        Settings {
            nlist: self.nlist.or(file.nlist),
            groups: self.groups.or(file.groups),
            group_cap_percent: self.group_cap_percent.or(file.group_cap_percent),
            pq_m: self.pq_m.or(file.pq_m),
            pq_bits: self.pq_bits.or(file.pq_bits),
            rerank_vectors: self.rerank_vectors.or(file.rerank_vectors),
            train_size: self.train_size.or(file.train_size),
            seed: self.seed.or(file.seed),
            iterations: self.iterations.or(file.iterations),
            balanced_from: self.balanced_from.or(file.balanced_from),
            shard_mb: self.shard_mb.or(file.shard_mb),
            batch_rows: self.batch_rows.or(file.batch_rows),
            spill_dir: self.spill_dir.or(file.spill_dir),
            min_recall: self.min_recall.or(file.min_recall),
            max_regression: self.max_regression.or(file.max_regression),
            gate_sample: self.gate_sample.or(file.gate_sample),
            gate_queries: self.gate_queries.or(file.gate_queries),
            gate_nprobe: self.gate_nprobe.or(file.gate_nprobe),
            gate_max_nprobe: self.gate_max_nprobe.or(file.gate_max_nprobe),
            gate_rerank: self.gate_rerank.or(file.gate_rerank),
            keep: self.keep.or(file.keep),
            grace: self.grace.or(file.grace),
            model_id: self.model_id.or(file.model_id),
            model_fingerprint: self.model_fingerprint.or(file.model_fingerprint),
        }
    }
}

/// `90s`, `30m`, `1h`, `2d`, or plain seconds.
pub fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(split) => text.split_at(split),
        None => (text, "s"),
    };
    let value: u64 = number
        .parse()
        .with_context(|| format!("duration {text:?} must start with a whole number"))?;
    let seconds = match unit {
        "s" => value,
        "m" => value * 60,
        "h" => value * 3600,
        "d" => value * 86_400,
        other => bail!("duration {text:?} has unit {other:?}; use s, m, h or d"),
    };
    Ok(Duration::from_secs(seconds))
}

#[derive(Serialize)]
struct Stages {
    /// Mirroring an object-storage source to local disk (0 for a local source).
    fetch_s: f64,
    ingest_s: f64,
    train_s: f64,
    assign_s: f64,
    encode_s: f64,
    read_s: f64,
    truth_s: f64,
    write_s: f64,
    gate_s: f64,
    publish_s: f64,
    gc_s: f64,
}

#[derive(Serialize)]
struct RunReport {
    generation: String,
    published: bool,
    recall_at_10: f64,
    previous_recall_at_10: Option<f64>,
    gate: String,
    gate_queries: usize,
    gc_deleted: Vec<String>,
    n: u64,
    d: usize,
    nlist: u32,
    ngroups: u32,
    pq_m: u32,
    pq_bits: u8,
    rerank: String,
    train_size: usize,
    device: String,
    /// Where the gate's exact ground truth was computed: `gpu` or `cpu`.
    truth_device: &'static str,
    /// The nprobe the gate judged at, the generation's default (manifest `search_defaults`).
    default_nprobe: u32,
    /// Recall@10 at each nprobe the gate tried (empty for a fixed --gate-nprobe).
    recall_by_nprobe: Vec<ProbeRecall>,
    seconds: Stages,
    total_s: f64,
    vectors_per_s: f64,
    index_bytes: u64,
    peak_rss_mib: Option<f64>,
}

/// Peak resident memory of this process (Linux `VmHWM`).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

/// Text embeddings next to the image ones (clip-retrieval's `text_emb/`), if any holds a
/// `.npy` (clip-retrieval leaves the folder empty when it computed none).
fn text_embeddings(source: &Path) -> Option<PathBuf> {
    let holds_npy = |folder: &Path| {
        std::fs::read_dir(folder).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|entry| entry.path().extension().and_then(|ext| ext.to_str()) == Some("npy"))
        })
    };
    [
        source.join("embeddings").join("text_emb"),
        source.join("text_emb"),
    ]
    .into_iter()
    .find(|folder| folder.is_dir() && holds_npy(folder))
}

/// Returns the exit code.
pub fn run(args: RunArgs) -> anyhow::Result<u8> {
    let file_settings = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading config {}", path.display()))?;
            toml::from_str(&text).with_context(|| format!("parsing config {}", path.display()))?
        }
        None => Settings::default(),
    };
    let settings = args.settings.over(file_settings);
    let Some(choice) = DeviceChoice::parse(&args.device) else {
        bail!("--device must be auto, cpu or cuda, got {:?}", args.device);
    };
    let rerank_name = settings.rerank_vectors.as_deref().unwrap_or("int8");
    let Some(rerank) = RerankKind::parse(rerank_name) else {
        bail!("rerank_vectors must be fp16, int8 or none, got {rerank_name:?}");
    };
    let pq_bits = settings.pq_bits.unwrap_or(4);
    if pq_bits != 4 && pq_bits != 8 {
        bail!("pq_bits must be 4 or 8, got {pq_bits}");
    }
    let grace = parse_duration(settings.grace.as_deref().unwrap_or("1h"))?;
    let min_recall = settings.min_recall.unwrap_or(0.95);
    let max_regression = settings.max_regression.unwrap_or(0.01);
    if !(0.0..=1.0).contains(&min_recall) || !(0.0..=1.0).contains(&max_regression) {
        bail!("min_recall and max_regression must be between 0 and 1");
    }
    let started = Instant::now();

    let spill_dir = settings
        .spill_dir
        .clone()
        .unwrap_or_else(std::env::temp_dir);
    // One runtime for the job's storage I/O: the source mirror, the write, the gate, GC.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let fetch_started = Instant::now();
    let source_path = if clipedge_index_builder::remote::is_remote(&args.source) {
        // One folder per source URL, so the next run finds its mirror and fetches only what
        // changed.
        let folder = format!(
            "clipedge-source-{:016x}",
            xxhash_rust::xxh3::xxh3_64(args.source.as_bytes())
        );
        let (root, report) = runtime
            .block_on(clipedge_index_builder::remote::mirror_source(
                &args.source,
                &spill_dir.join(folder),
            ))
            .with_context(|| format!("mirroring source {}", args.source))?;
        eprintln!(
            "run: mirrored {} file(s), {} bytes ({} fetched) from {} to {}",
            report.files,
            report.bytes,
            report.fetched_bytes,
            args.source,
            root.display()
        );
        root
    } else {
        PathBuf::from(args.source.strip_prefix("file://").unwrap_or(&args.source))
    };
    let fetch_s = fetch_started.elapsed().as_secs_f64();
    let ingest_started = Instant::now();
    let source = EmbeddingSource::open(&source_path)
        .with_context(|| format!("opening source {}", source_path.display()))?;
    let dim = source.dim();
    let n = source.len();
    let nlist = match settings.nlist {
        Some(nlist) => nlist,
        // About 4·√n lists, a power of two: ~1,000 vectors a list at 1M, ~4,000 at 1B.
        None => ((4.0 * (n as f64).sqrt()) as usize)
            .next_power_of_two()
            .clamp(1, n as usize),
    };
    let pq_m = settings.pq_m.unwrap_or((dim / 8).max(1));
    let config = BuildConfig {
        ngroups: settings.groups,
        group_cap_percent: settings
            .group_cap_percent
            .unwrap_or(clipedge_index_builder::GROUP_CAPACITY_PERCENT),
        rerank,
        train_size: None,
        seed: settings.seed.unwrap_or(1234),
        kmeans_iterations: settings.iterations.unwrap_or(20),
        balanced_kmeans_from: settings
            .balanced_from
            .unwrap_or(clipedge_index_builder::BALANCED_KMEANS_FROM),
        shard_target_bytes: settings.shard_mb.unwrap_or(256) << 20,
        model: ModelInfo {
            id: settings
                .model_id
                .clone()
                .unwrap_or_else(|| "external".to_string()),
            fingerprint: settings
                .model_fingerprint
                .clone()
                .unwrap_or_else(|| "unspecified".to_string()),
        },
        ..BuildConfig::new(nlist, pq_m, pq_bits)
    };
    let train_size = settings
        .train_size
        .unwrap_or((64 * nlist).max(100_000))
        .min(n as usize);
    let sample = source
        .sample(train_size, config.seed)
        .context("reading the training sample")?;
    let mut queries = source
        .sample(settings.gate_sample.unwrap_or(500), config.seed ^ 0x6a7e)
        .context("reading the gate queries")?;
    if let Some(text_folder) = text_embeddings(&source_path) {
        let texts = EmbeddingSource::open(&text_folder)
            .with_context(|| format!("opening text embeddings {}", text_folder.display()))?;
        if texts.dim() != dim {
            bail!(
                "text embeddings in {} have dimension {}, the image ones {dim}",
                text_folder.display(),
                texts.dim()
            );
        }
        queries.extend(texts.sample(settings.gate_sample.unwrap_or(500), config.seed)?);
    }
    if let Some(path) = &settings.gate_queries {
        let extra = clipedge_datagen::read_vectors(path)
            .with_context(|| format!("reading gate queries {}", path.display()))?;
        if extra.dim != dim {
            bail!(
                "gate queries in {} have dimension {}, the index {dim}",
                path.display(),
                extra.dim
            );
        }
        queries.extend(extra.data);
    }
    let gate_query_count = queries.len() / dim;
    let ingest_s = ingest_started.elapsed().as_secs_f64();

    let storage = Storage::open_or_create(&args.out)
        .with_context(|| format!("opening index root {}", args.out))?;
    let device = Device::open(choice)?;
    eprintln!(
        "run: {n} vectors of dimension {dim} from {} file(s) on {}",
        source.file_count(),
        device.name()
    );
    let progress = StderrProgress::new();
    let train_config = BuildConfig {
        train_size: Some(sample.len() / dim),
        ..config.clone()
    };
    let train_started = Instant::now();
    let trained = train_on(
        &device,
        &VectorSet::new(&sample, dim),
        &train_config,
        &progress,
    )
    .context("training")?;
    drop(sample);
    let train_s = train_started.elapsed().as_secs_f64();

    let mut truth = ExactTopK::on_device(&device, queries.clone(), dim, 10)?;
    let truth_device = if truth.is_on_device() { "gpu" } else { "cpu" };
    let options = StreamOptions {
        batch_rows: settings.batch_rows.unwrap_or(65_536),
        spill_dir,
        // Written after the gate, with the default nprobe it measured.
        defer_manifest: true,
    };
    let (manifest, write_seconds) = runtime
        .block_on(write_generation_streamed(
            &storage,
            &source,
            &trained,
            &config,
            &device,
            &options,
            Some(&mut truth),
            &progress,
        ))
        .context("writing the generation")?;
    progress.finish();
    let truth = truth.finish()?;

    let gate_started = Instant::now();
    let gate_rerank = settings
        .gate_rerank
        .unwrap_or_else(|| clipedge_index_builder::gate_default_rerank(n));
    let gate_config = match (settings.gate_nprobe, settings.gate_max_nprobe) {
        (Some(nprobe), None) => GateConfig::new(nprobe, gate_rerank, min_recall, max_regression),
        (from, max) => GateConfig::calibrating(
            from.unwrap_or(GATE_DEFAULT_NPROBE),
            max.unwrap_or(GATE_DEFAULT_MAX_NPROBE),
            gate_rerank,
            min_recall,
            max_regression,
        ),
    };
    let record = runtime
        .block_on(gate_generation(
            &storage,
            Candidate::Unfinished(&manifest),
            &queries,
            &truth,
            &gate_config,
            now_unix_ms(),
        ))
        .context("running the recall gate")?;
    // The manifest goes last and finishes the generation, failed or not (kept for inspection).
    let manifest = Manifest {
        search_defaults: Some(record.search_defaults()),
        ..manifest
    };
    runtime
        .block_on(write_manifest(&storage, &manifest))
        .context("writing the manifest")?;
    let gate_s = gate_started.elapsed().as_secs_f64();
    let decision = &record.decision;
    eprintln!(
        "gate: {} — {}",
        if decision.passed { "passed" } else { "failed" },
        decision.reason
    );

    let publish_started = Instant::now();
    if decision.passed {
        runtime
            .block_on(publish(&storage, &manifest.generation))
            .context("publishing")?;
    }
    let publish_s = publish_started.elapsed().as_secs_f64();
    let gc_started = Instant::now();
    let gc_deleted = if decision.passed {
        let report = runtime
            .block_on(gc(
                &storage,
                &GcOptions {
                    keep: settings.keep.unwrap_or(3),
                    grace,
                    dry_run: false,
                    now_unix_ms: now_unix_ms(),
                },
            ))
            .context("garbage-collecting old generations")?;
        report.deleted
    } else {
        Vec::new()
    };
    let gc_s = gc_started.elapsed().as_secs_f64();
    let index_bytes = manifest.routing.bytes
        + manifest.groups.bytes
        + manifest.codebooks.bytes
        + manifest.shards.iter().map(|shard| shard.bytes).sum::<u64>();
    let report = RunReport {
        generation: manifest.generation.clone(),
        published: decision.passed,
        recall_at_10: decision.recall_at_10,
        previous_recall_at_10: decision.previous_recall_at_10,
        gate: decision.reason.clone(),
        gate_queries: gate_query_count,
        gc_deleted,
        n,
        d: dim,
        nlist: manifest.nlist,
        ngroups: manifest.ngroups,
        pq_m: manifest.pq.m,
        pq_bits: manifest.pq.bits,
        rerank: manifest.rerank.as_str().to_string(),
        train_size: trained.train_size,
        device: device.name(),
        truth_device,
        default_nprobe: record.nprobe,
        recall_by_nprobe: record.calibration.clone(),
        seconds: Stages {
            fetch_s,
            ingest_s,
            train_s,
            assign_s: write_seconds.assign_s,
            encode_s: write_seconds.encode_s,
            read_s: write_seconds.read_s,
            truth_s: write_seconds.truth_s,
            write_s: write_seconds.write_s,
            gate_s,
            publish_s,
            gc_s,
        },
        total_s: started.elapsed().as_secs_f64(),
        vectors_per_s: n as f64 / (write_seconds.assign_s + write_seconds.encode_s).max(1e-9),
        index_bytes,
        peak_rss_mib: peak_rss_mib(),
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(if decision.passed { 0 } else { 3 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_nightly_config_parses() {
        let settings: Settings =
            toml::from_str(include_str!("../../../deploy/nightly.toml")).unwrap();
        assert_eq!(settings.nlist, Some(65_536));
        assert_eq!(settings.grace.as_deref(), Some("1h"));
        assert!(toml::from_str::<Settings>("nlsit = 3").is_err());
    }

    #[test]
    fn an_empty_text_emb_folder_is_no_query_source() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("embeddings").join("text_emb");
        std::fs::create_dir_all(&folder).unwrap();
        assert_eq!(text_embeddings(dir.path()), None);
        std::fs::write(folder.join("text_emb_0.npy"), b"").unwrap();
        assert_eq!(text_embeddings(dir.path()), Some(folder));
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("h").is_err());
    }
}
