//! `synth`: a seeded CLIP-like embedding folder in clip-retrieval's layout (float16), for
//! benchmarks and GPU checks of the nightly job where no real embeddings can be downloaded.

use std::path::PathBuf;

use anyhow::bail;
use clap::Args;
use clipedge_datagen::{ClipLikeConfig, ClipLikeGenerator, QueryKind};

#[derive(Args)]
pub struct SynthArgs {
    /// Output folder (gets embeddings/img_emb/img_emb_N.npy and embeddings/text_emb/).
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    n: usize,
    #[arg(long, default_value_t = 512)]
    dim: usize,
    /// Rows per img_emb file (rounded up to a multiple of 1024).
    #[arg(long, default_value_t = 1_048_576)]
    rows_per_file: usize,
    /// Text-like (out-of-distribution) query embeddings written to text_emb/.
    #[arg(long, default_value_t = 1000)]
    text: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

pub fn run(args: SynthArgs) -> anyhow::Result<()> {
    if args.n == 0 || args.dim == 0 {
        bail!("--n and --dim must be positive");
    }
    let generator = ClipLikeGenerator::new(ClipLikeConfig::new(args.dim, args.seed));
    let chunk = ClipLikeGenerator::ROWS_PER_CHUNK;
    let rows_per_file = args.rows_per_file.max(1).div_ceil(chunk) * chunk;
    let image_folder = args.out.join("embeddings").join("img_emb");
    let text_folder = args.out.join("embeddings").join("text_emb");
    std::fs::create_dir_all(&image_folder)?;
    let files = args.n.div_ceil(rows_per_file);
    // clip-retrieval zero-pads N to the width of the largest index.
    let width = files.to_string().len().max(1);
    for file in 0..files {
        let start = file * rows_per_file;
        let rows = rows_per_file.min(args.n - start);
        let data = generator.base_from(start, rows);
        let path = image_folder.join(format!("img_emb_{file:0width$}.npy"));
        clipedge_datagen::write_npy_f16(&path, &data, args.dim)?;
        eprintln!("synth: wrote {} ({rows} rows)", path.display());
    }
    if args.text > 0 {
        std::fs::create_dir_all(&text_folder)?;
        let texts = generator.queries(args.text, QueryKind::OutOfDistribution);
        clipedge_datagen::write_npy_f16(&text_folder.join("text_emb_0.npy"), &texts, args.dim)?;
    }
    println!(
        "{}",
        serde_json::json!({ "out": args.out, "n": args.n, "dim": args.dim, "files": files, "text": args.text })
    );
    Ok(())
}
