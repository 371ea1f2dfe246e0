use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use clipedge_format::{ModelInfo, RerankKind};
use clipedge_index_builder::{build_index, BuildConfig, VectorSet};
use clipedge_storage::Storage;

use crate::progress::BarProgress;

#[derive(Args)]
pub struct BuildArgs {
    /// Base vectors, `.fvecs` or `.npy` (float32, one row per vector; ids are 0-based rows).
    #[arg(long)]
    vectors: PathBuf,
    /// Index root: a directory, `file://` URL or `s3://bucket/prefix`.
    #[arg(long)]
    out: String,
    /// Number of fine inverted lists.
    #[arg(long)]
    nlist: usize,
    /// PQ sub-quantizers (must divide the dimension).
    #[arg(long)]
    pq_m: usize,
    /// Bits per PQ code: 8, or 4 for fast-scan.
    #[arg(long, default_value_t = 8)]
    pq_bits: u8,
    /// Exact-rerank copy stored with each vector: fp16, int8 or none.
    #[arg(long, default_value = "fp16")]
    rerank_vectors: String,
    /// Routing groups (two-level IVF); default: flat up to 4096 lists, else ~64 lists a group.
    #[arg(long)]
    groups: Option<usize>,
    /// Largest routing group in percent of the mean (even scanner shares); 0: plain k-means.
    #[arg(long, default_value_t = clipedge_index_builder::GROUP_CAPACITY_PERCENT)]
    group_cap_percent: usize,
    /// Vectors sampled for coarse k-means; default min(n, max(100000, 64 * nlist)).
    #[arg(long)]
    train_size: Option<usize>,
    #[arg(long, default_value_t = 1234)]
    seed: u64,
    /// k-means iterations.
    #[arg(long, default_value_t = 20)]
    iterations: u32,
    /// Build threads (0: all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Target shard object size in MiB.
    #[arg(long, default_value_t = 256)]
    shard_mb: u64,
    /// Embedding model id recorded in the manifest.
    #[arg(long, default_value = "external")]
    model_id: String,
    /// Embedding model fingerprint recorded in the manifest; queries from another model are refused.
    #[arg(long, default_value = "unspecified")]
    model_fingerprint: String,
}

pub fn run(args: BuildArgs) -> anyhow::Result<()> {
    let Some(rerank) = RerankKind::parse(&args.rerank_vectors) else {
        bail!(
            "--rerank-vectors must be fp16, int8 or none, got {:?}",
            args.rerank_vectors
        );
    };
    if args.pq_bits != 4 && args.pq_bits != 8 {
        bail!("--pq-bits must be 4 or 8, got {}", args.pq_bits);
    }
    if args.shard_mb == 0 {
        bail!("--shard-mb must be at least 1");
    }
    let matrix = clipedge_datagen::read_vectors(&args.vectors)?;
    let storage = Storage::open_or_create(&args.out)?;
    let config = BuildConfig {
        ngroups: args.groups,
        group_cap_percent: args.group_cap_percent,
        rerank,
        train_size: args.train_size,
        seed: args.seed,
        kmeans_iterations: args.iterations,
        shard_target_bytes: args.shard_mb << 20,
        model: ModelInfo {
            id: args.model_id,
            fingerprint: args.model_fingerprint,
        },
        ..BuildConfig::new(args.nlist, args.pq_m, args.pq_bits)
    };
    let pool = crate::thread_pool(args.threads)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let progress = BarProgress::new();
    let vectors = VectorSet::new(&matrix.data, matrix.dim);
    let report = pool
        .install(|| runtime.block_on(build_index(&storage, &vectors, &config, &progress)))
        .with_context(|| format!("building index at {}", args.out))?;
    progress.finish();
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
