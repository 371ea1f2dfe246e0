use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use clipedge_datagen::{
    ground_truth, write_fvecs, write_ivecs, write_npy, write_npy_f16, ClipLikeConfig,
    ClipLikeGenerator, QueryKind, TruthAccumulator,
};
use serde::Serialize;

#[derive(Args)]
pub struct DatagenArgs {
    /// Output directory (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Base vectors.
    #[arg(long)]
    n: usize,
    #[arg(long, default_value_t = 512)]
    dim: usize,
    /// Queries of each kind (out-of-distribution text-like, and in-distribution).
    #[arg(long, default_value_t = 1000)]
    queries: usize,
    /// Ground-truth neighbours per query.
    #[arg(long, default_value_t = 100)]
    k: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Base file format: fvecs or npy (one file, built in memory), or clip-retrieval
    /// (`embeddings/img_emb/img_emb_N.npy` float16 shards written one at a time, for sets
    /// larger than memory; the ground truth is taken over the stored float16 values).
    #[arg(long, default_value = "fvecs")]
    format: String,
    /// Rows per shard with `--format clip-retrieval` (a multiple of 1024).
    #[arg(long, default_value_t = 1 << 20)]
    shard_rows: usize,
}

#[derive(Serialize)]
struct DatagenSummary {
    n: usize,
    dim: usize,
    queries: usize,
    k: usize,
    seed: u64,
    files: Vec<String>,
    generate_s: f64,
    truth_s: f64,
}

pub fn run(args: DatagenArgs) -> anyhow::Result<()> {
    if args.n == 0 || args.dim == 0 || args.queries == 0 {
        bail!("--n, --dim and --queries must be at least 1");
    }
    if args.k == 0 || args.k > args.n {
        bail!(
            "--k must be in 1..={} (the number of base vectors), got {}",
            args.n,
            args.k
        );
    }
    let base_name = match args.format.as_str() {
        "fvecs" => "base.fvecs",
        "npy" => "base.npy",
        "clip-retrieval" => "embeddings/img_emb",
        other => bail!("--format must be fvecs, npy or clip-retrieval, got {other:?}"),
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    if args.format == "clip-retrieval" {
        return run_sharded(&args, base_name);
    }
    let started = std::time::Instant::now();
    let generator = ClipLikeGenerator::new(ClipLikeConfig::new(args.dim, args.seed));
    let base = generator.base(args.n);
    let text_queries = generator.queries(args.queries, QueryKind::OutOfDistribution);
    let image_queries = generator.queries(args.queries, QueryKind::InDistribution);
    let generate_s = started.elapsed().as_secs_f64();
    let truth_started = std::time::Instant::now();
    let text_truth = ground_truth(&base, &text_queries, args.dim, args.k);
    let image_truth = ground_truth(&base, &image_queries, args.dim, args.k);
    let truth_s = truth_started.elapsed().as_secs_f64();

    let base_path = args.out.join(base_name);
    if args.format == "npy" {
        write_npy(&base_path, &base, args.dim)?;
    } else {
        write_fvecs(&base_path, &base, args.dim)?;
    }
    let queries = QuerySets {
        text: (text_queries, text_truth),
        image: (image_queries, image_truth),
    };
    finish(
        &args,
        vec![base_name.to_string()],
        queries,
        generate_s,
        truth_s,
    )
}

/// Both query sets with their ground truth.
struct QuerySets {
    text: (Vec<f32>, Vec<u32>),
    image: (Vec<f32>, Vec<u32>),
}

/// Writes the queries and their truth next to the base and prints the summary line.
fn finish(
    args: &DatagenArgs,
    mut files: Vec<String>,
    queries: QuerySets,
    generate_s: f64,
    truth_s: f64,
) -> anyhow::Result<()> {
    let to_i32 = |truth: Vec<u32>| truth.into_iter().map(|id| id as i32).collect::<Vec<i32>>();
    let (text_queries, text_truth) = queries.text;
    let (image_queries, image_truth) = queries.image;
    write_fvecs(&args.out.join("queries.fvecs"), &text_queries, args.dim)?;
    write_ivecs(&args.out.join("gt.ivecs"), &to_i32(text_truth), args.k)?;
    write_fvecs(&args.out.join("queries_in.fvecs"), &image_queries, args.dim)?;
    write_ivecs(&args.out.join("gt_in.ivecs"), &to_i32(image_truth), args.k)?;
    files.extend(
        [
            "queries.fvecs",
            "gt.ivecs",
            "queries_in.fvecs",
            "gt_in.ivecs",
        ]
        .map(String::from),
    );
    let summary = DatagenSummary {
        n: args.n,
        dim: args.dim,
        queries: args.queries,
        k: args.k,
        seed: args.seed,
        files,
        generate_s,
        truth_s,
    };
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}

/// `--format clip-retrieval`: generates, rounds to float16, writes and scores one shard at a
/// time, so memory holds one shard whatever `--n` is.
fn run_sharded(args: &DatagenArgs, base_name: &str) -> anyhow::Result<()> {
    if args.shard_rows == 0 || !args.shard_rows.is_multiple_of(1024) {
        bail!(
            "--shard-rows must be a positive multiple of 1024, got {}",
            args.shard_rows
        );
    }
    let folder = args.out.join(base_name);
    std::fs::create_dir_all(&folder).with_context(|| format!("creating {}", folder.display()))?;
    let started = std::time::Instant::now();
    let generator = ClipLikeGenerator::new(ClipLikeConfig::new(args.dim, args.seed));
    let text_queries = generator.queries(args.queries, QueryKind::OutOfDistribution);
    let image_queries = generator.queries(args.queries, QueryKind::InDistribution);
    let mut text_truth = TruthAccumulator::new(text_queries.clone(), args.dim, args.k);
    let mut image_truth = TruthAccumulator::new(image_queries.clone(), args.dim, args.k);
    let (mut generate_s, mut truth_s) = (0f64, 0f64);
    let mut files = Vec::new();
    for (shard_index, start) in (0..args.n).step_by(args.shard_rows).enumerate() {
        let rows = args.shard_rows.min(args.n - start);
        let shard_started = std::time::Instant::now();
        let mut shard = generator.base_from(start, rows);
        // The stored values are the set: score what the builder will read.
        for value in shard.iter_mut() {
            *value = half::f16::from_f32(*value).to_f32();
        }
        let name = format!("img_emb_{shard_index}.npy");
        write_npy_f16(&folder.join(&name), &shard, args.dim)?;
        generate_s += shard_started.elapsed().as_secs_f64();
        let truth_started = std::time::Instant::now();
        text_truth.add_shard(&shard);
        image_truth.add_shard(&shard);
        truth_s += truth_started.elapsed().as_secs_f64();
        tracing::info!(
            shard = shard_index,
            rows,
            elapsed_s = started.elapsed().as_secs_f64(),
            "wrote shard"
        );
        files.push(format!("{base_name}/{name}"));
    }
    let queries = QuerySets {
        text: (text_queries, text_truth.finish()),
        image: (image_queries, image_truth.finish()),
    };
    finish(args, files, queries, generate_s, truth_s)
}
