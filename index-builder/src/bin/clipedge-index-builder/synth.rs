//! `synth`: a seeded CLIP-like embedding folder in clip-retrieval's layout (float16), for
//! benchmarks and GPU checks of the nightly job where no real embeddings can be downloaded.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
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

fn write_f16_npy(path: &Path, data: &[f32], dim: usize) -> anyhow::Result<()> {
    let rows = data.len() / dim;
    let dict = format!("{{'descr': '<f2', 'fortran_order': False, 'shape': ({rows}, {dim}), }}");
    let mut header = dict.into_bytes();
    // NumPy pads the header so the data starts on a 64-byte boundary.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(b' ');
    }
    header.push(b'\n');
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut writer = std::io::BufWriter::with_capacity(1 << 22, file);
    writer.write_all(b"\x93NUMPY\x01\x00")?;
    writer.write_all(&(header.len() as u16).to_le_bytes())?;
    writer.write_all(&header)?;
    for value in data {
        writer.write_all(&half::f16::from_f32(*value).to_le_bytes())?;
    }
    writer.flush()?;
    Ok(())
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
        write_f16_npy(&path, &data, args.dim)?;
        eprintln!("synth: wrote {} ({rows} rows)", path.display());
    }
    if args.text > 0 {
        std::fs::create_dir_all(&text_folder)?;
        let texts = generator.queries(args.text, QueryKind::OutOfDistribution);
        write_f16_npy(&text_folder.join("text_emb_0.npy"), &texts, args.dim)?;
    }
    println!(
        "{}",
        serde_json::json!({ "out": args.out, "n": args.n, "dim": args.dim, "files": files, "text": args.text })
    );
    Ok(())
}
