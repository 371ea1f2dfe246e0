use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use clipedge_text::TextEncoder;
use serde::Serialize;

#[derive(Args)]
pub struct EmbedArgs {
    /// Model package directory (`model.toml`, the ONNX text tower, `tokenizer.json`).
    #[arg(long)]
    model: PathBuf,
    /// Texts to embed; without any, one text per line is read from stdin.
    texts: Vec<String>,
    /// Leave the embedding out of the output (token counts and timings only).
    #[arg(long)]
    no_vector: bool,
}

#[derive(Serialize)]
struct EmbedLine<'a> {
    text: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    tokens: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    truncated: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    encode_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    embedding: Option<Vec<f32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Prints one JSON line per text; a text that cannot be embedded gets an `error` line and the
/// command exits 1 after the others are done.
pub fn run(args: EmbedArgs) -> anyhow::Result<()> {
    let load_start = Instant::now();
    let encoder = TextEncoder::load(&args.model)
        .with_context(|| format!("cannot load model package {}", args.model.display()))?;
    let card = encoder.card();
    eprintln!(
        "model {} (dim {}, fingerprint {}) loaded in {:.0} ms",
        card.name,
        card.dim,
        card.fingerprint,
        load_start.elapsed().as_secs_f64() * 1e3
    );
    let texts: Vec<String> = if args.texts.is_empty() {
        std::io::stdin()
            .lock()
            .lines()
            .collect::<Result<_, _>>()
            .context("cannot read texts from stdin")?
    } else {
        args.texts
    };
    let mut stdout = std::io::stdout().lock();
    let mut failures = 0usize;
    for text in &texts {
        let encode_start = Instant::now();
        let line = match encoder.encode(text) {
            Ok(encoding) => EmbedLine {
                text,
                tokens: Some(encoding.tokens),
                truncated: Some(encoding.truncated),
                encode_ms: Some(encode_start.elapsed().as_secs_f64() * 1e3),
                embedding: (!args.no_vector).then_some(encoding.embedding),
                error: None,
            },
            Err(error) => {
                failures += 1;
                EmbedLine {
                    text,
                    tokens: None,
                    truncated: None,
                    encode_ms: None,
                    embedding: None,
                    error: Some(error.to_string()),
                }
            }
        };
        serde_json::to_writer(&mut stdout, &line)?;
        writeln!(stdout)?;
    }
    if failures > 0 {
        bail!("{failures} of {} texts could not be embedded", texts.len());
    }
    Ok(())
}
