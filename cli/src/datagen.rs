use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use clipedge_datagen::{
    ground_truth, write_fvecs, write_ivecs, write_npy, ClipLikeConfig, ClipLikeGenerator, QueryKind,
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
    /// Base file format: fvecs or npy.
    #[arg(long, default_value = "fvecs")]
    format: String,
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
        other => bail!("--format must be fvecs or npy, got {other:?}"),
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
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
    let to_i32 = |truth: Vec<u32>| truth.into_iter().map(|id| id as i32).collect::<Vec<i32>>();
    write_fvecs(&args.out.join("queries.fvecs"), &text_queries, args.dim)?;
    write_ivecs(&args.out.join("gt.ivecs"), &to_i32(text_truth), args.k)?;
    write_fvecs(&args.out.join("queries_in.fvecs"), &image_queries, args.dim)?;
    write_ivecs(&args.out.join("gt_in.ivecs"), &to_i32(image_truth), args.k)?;
    let summary = DatagenSummary {
        n: args.n,
        dim: args.dim,
        queries: args.queries,
        k: args.k,
        seed: args.seed,
        files: vec![
            base_name.to_string(),
            "queries.fvecs".to_string(),
            "gt.ivecs".to_string(),
            "queries_in.fvecs".to_string(),
            "gt_in.ivecs".to_string(),
        ],
        generate_s,
        truth_s,
    };
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}
