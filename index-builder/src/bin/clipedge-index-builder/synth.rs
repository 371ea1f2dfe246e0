//! `synth`: a seeded CLIP-like embedding folder in clip-retrieval's layout (float16), for
//! benchmarks and GPU checks of the nightly job where no real embeddings can be downloaded.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::bail;
use clap::Args;
use clipedge_datagen::{ClipLikeConfig, ClipLikeGenerator, QueryKind};
use clipedge_index_builder::EmbeddingSource;
use rand::{Rng, SeedableRng};

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
    /// Also write `metadata/metadata_N.parquet` beside each embedding file (url, caption, width,
    /// height), so the build has a catalog whose reads a benchmark can count.
    #[arg(long)]
    metadata: bool,
    /// Only add the metadata files to the embedding folder already at `--out` (`--n` ignored).
    #[arg(long, conflicts_with = "metadata")]
    metadata_only: bool,
}

pub fn run(args: SynthArgs) -> anyhow::Result<()> {
    if args.metadata_only {
        let rows = write_metadata_for(&args.out, args.seed)?;
        println!(
            "{}",
            serde_json::json!({ "out": args.out, "metadata_rows": rows })
        );
        return Ok(());
    }
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
    if args.metadata {
        write_metadata_for(&args.out, args.seed)?;
    }
    println!(
        "{}",
        serde_json::json!({ "out": args.out, "n": args.n, "dim": args.dim, "files": files, "text": args.text })
    );
    Ok(())
}

/// Words of the synthetic captions (LAION captions average ~10 words).
const CAPTION_WORDS: &[&str] = &[
    "a",
    "the",
    "dog",
    "cat",
    "running",
    "on",
    "beach",
    "red",
    "car",
    "parked",
    "near",
    "old",
    "house",
    "mountain",
    "lake",
    "at",
    "sunset",
    "portrait",
    "of",
    "woman",
    "man",
    "smiling",
    "city",
    "street",
    "night",
    "with",
    "lights",
    "vintage",
    "poster",
    "blue",
    "sky",
    "flowers",
    "garden",
    "photo",
    "illustration",
    "wooden",
    "table",
    "coffee",
    "cup",
    "and",
    "books",
    "snow",
    "forest",
    "river",
    "bridge",
    "child",
    "playing",
    "ball",
    "green",
    "field",
];

/// `metadata/metadata_N.parquet` for each `img_emb_N.npy` under `root`, row-aligned: seeded
/// captions and URLs that name the row, as clip-retrieval writes them (snappy). Returns the
/// rows written.
fn write_metadata_for(root: &Path, seed: u64) -> anyhow::Result<u64> {
    let source = EmbeddingSource::open(root)?;
    let folder = root.join("metadata");
    std::fs::create_dir_all(&folder)?;
    let mut first_row = 0u64;
    for (path, rows) in source.files() {
        let stem = path
            .file_stem()
            .and_then(|stem| stem.to_str())
            .unwrap_or("");
        let Some(number) = stem.rsplit('_').next().filter(|n| !n.is_empty()) else {
            bail!("{}: not named like img_emb_N.npy", path.display());
        };
        let out = folder.join(format!("metadata_{number}.parquet"));
        write_metadata_file(&out, first_row, rows, seed)?;
        eprintln!("synth: wrote {} ({rows} rows)", out.display());
        first_row += rows;
    }
    Ok(first_row)
}

fn write_metadata_file(path: &Path, first_row: u64, rows: u64, seed: u64) -> anyhow::Result<()> {
    use parquet::basic::Compression;
    use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;

    const ROWS_PER_GROUP: u64 = 1 << 17;
    let schema = Arc::new(parse_message_type(
        "message schema { REQUIRED BYTE_ARRAY url (UTF8); REQUIRED BYTE_ARRAY caption (UTF8); \
         REQUIRED INT64 width; REQUIRED INT64 height; }",
    )?);
    let properties = Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build(),
    );
    let mut writer = SerializedFileWriter::new(File::create(path)?, schema, properties)?;
    let mut start = first_row;
    while start < first_row + rows {
        let end = (start + ROWS_PER_GROUP).min(first_row + rows);
        let mut urls = Vec::with_capacity((end - start) as usize);
        let mut captions = Vec::with_capacity(urls.capacity());
        let mut widths = Vec::with_capacity(urls.capacity());
        let mut heights = Vec::with_capacity(urls.capacity());
        for row in start..end {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
                seed ^ row.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            );
            let words = rng.random_range(5..15);
            let caption: Vec<&str> = (0..words)
                .map(|_| CAPTION_WORDS[rng.random_range(0..CAPTION_WORDS.len())])
                .collect();
            urls.push(ByteArray::from(
                format!("https://img.example/{row}.jpg").as_str(),
            ));
            captions.push(ByteArray::from(caption.join(" ").as_str()));
            widths.push(rng.random_range(256..2048i64));
            heights.push(rng.random_range(256..2048i64));
        }
        let mut group = writer.next_row_group()?;
        for strings in [&urls, &captions] {
            let mut column = group.next_column()?.expect("schema column");
            column
                .typed::<ByteArrayType>()
                .write_batch(strings, None, None)?;
            column.close()?;
        }
        for numbers in [&widths, &heights] {
            let mut column = group.next_column()?.expect("schema column");
            column
                .typed::<Int64Type>()
                .write_batch(numbers, None, None)?;
            column.close()?;
        }
        group.close()?;
        start = end;
    }
    writer.close()?;
    Ok(())
}
