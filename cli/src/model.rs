//! `clipedge model`: the package-time steps of a model package for the int8 engine.
//!
//! - `pack-tokenizer DIR`: `tokenizer.json` → the compact `tokenizer.bin` the Worker loads.
//! - `synth --arch clip-b32 --out DIR`: a B/32-architecture text tower with seeded random weights
//!   written by our own code (no torch, no network), with the CLIP tokenizer of another package;
//!   what the edge benchmark measures.
//! - `fingerprint DIR`: recomputes the card's fingerprint from the files its engine runs.
//!
//! Each edits `model.toml` in place, line by line, so its comments survive.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use clipedge_text::{Engine, ModelCard};
use serde::Serialize;

#[derive(Args)]
pub struct ModelArgs {
    #[command(subcommand)]
    command: ModelCommand,
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Pack the package's tokenizer.json into the compact tokenizer.bin and name it in the card
    /// (with text.int8, when models/pack_int8.py has written it), then refresh the fingerprint.
    PackTokenizer {
        /// Model package directory.
        dir: PathBuf,
    },
    /// Write a text tower with seeded random weights in the int8 engine's format.
    Synth(SynthArgs),
    /// Recompute the card's fingerprint from the files its engine runs (and write it).
    Fingerprint {
        /// Model package directory.
        dir: PathBuf,
        /// Only print it; fail if the card disagrees.
        #[arg(long)]
        check: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Arch {
    /// CLIP ViT-B/32's text tower: width 512, 12 layers, 8 heads, 77 positions, projection 512.
    ClipB32,
}

#[derive(Args)]
struct SynthArgs {
    #[arg(long, value_enum, default_value = "clip-b32")]
    arch: Arch,
    #[arg(long, default_value_t = 20261126)]
    seed: u64,
    /// A package whose CLIP tokenizer (tokenizer.json, tokenizer.bin) the new one shares.
    #[arg(long, default_value = "models/tiny-clip")]
    tokenizer_from: PathBuf,
    #[arg(long)]
    out: PathBuf,
}

#[derive(Serialize)]
struct ModelLine {
    dir: String,
    name: String,
    engine: &'static str,
    fingerprint: String,
    files: Vec<(String, u64)>,
}

pub fn run(args: ModelArgs) -> anyhow::Result<()> {
    match args.command {
        ModelCommand::PackTokenizer { dir } => pack_tokenizer(&dir),
        ModelCommand::Synth(synth) => synthesize(synth),
        ModelCommand::Fingerprint { dir, check } => refingerprint(&dir, check),
    }
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

fn read_card(dir: &Path) -> anyhow::Result<(String, ModelCard)> {
    let text = String::from_utf8(read(&dir.join("model.toml"))?)
        .with_context(|| format!("{}/model.toml is not UTF-8", dir.display()))?;
    let card = ModelCard::from_toml(&text)
        .with_context(|| format!("invalid model card {}/model.toml", dir.display()))?;
    Ok((text, card))
}

/// `text` with `key = value` set: the line replaced where the key is, else appended.
fn set_card_field(text: &str, key: &str, value: &str) -> String {
    let line = format!("{key} = {value}");
    let mut replaced = false;
    let mut lines: Vec<String> = text
        .lines()
        .map(|existing| {
            let existing_key = existing.split('=').next().unwrap_or("").trim();
            if existing_key == key && !replaced {
                replaced = true;
                line.clone()
            } else {
                existing.to_string()
            }
        })
        .collect();
    if !replaced {
        lines.push(line);
    }
    lines.join("\n") + "\n"
}

fn quoted(value: &str) -> String {
    format!("{value:?}")
}

/// Writes the card's fingerprint and prints the package's summary line.
fn finish(dir: &Path) -> anyhow::Result<()> {
    let (text, card) = read_card(dir)?;
    let computed = card.package_fingerprint(dir)?;
    let text = set_card_field(&text, "fingerprint", &quoted(&computed));
    std::fs::write(dir.join("model.toml"), text)?;
    print_line(dir)
}

fn print_line(dir: &Path) -> anyhow::Result<()> {
    let (_, card) = read_card(dir)?;
    let files = card.files_for(card.engine())?;
    let mut sizes = Vec::new();
    for name in [
        Some(files.tower),
        Some(files.tokenizer),
        files.external_data,
    ]
    .into_iter()
    .flatten()
    {
        let size = std::fs::metadata(dir.join(&name))
            .with_context(|| format!("cannot read {}/{name}", dir.display()))?
            .len();
        sizes.push((name, size));
    }
    let line = ModelLine {
        dir: dir.display().to_string(),
        name: card.name.clone(),
        engine: match card.engine() {
            Engine::Int8 => "int8",
            Engine::Onnx => "onnx",
        },
        fingerprint: card.fingerprint.clone(),
        files: sizes,
    };
    println!("{}", serde_json::to_string(&line)?);
    Ok(())
}

fn pack_tokenizer(dir: &Path) -> anyhow::Result<()> {
    let (text, card) = read_card(dir)?;
    let json = read(&dir.join(&card.tokenizer_file))?;
    let packed = clipedge_text::compact::pack_hf_tokenizer(&json)
        .with_context(|| format!("cannot pack {}/{}", dir.display(), card.tokenizer_file))?;
    let name = "tokenizer.bin";
    std::fs::write(dir.join(name), &packed)?;
    let mut text = set_card_field(&text, "compact_tokenizer_file", &quoted(name));
    // models/pack_int8.py writes text.int8 beside the card; name it so the int8 engine runs.
    if card.int8_file.is_none() && dir.join("text.int8").exists() {
        text = set_card_field(&text, "int8_file", &quoted("text.int8"));
    }
    std::fs::write(dir.join("model.toml"), text)?;
    eprintln!(
        "packed {} ({} bytes) into {name} ({} bytes)",
        card.tokenizer_file,
        json.len(),
        packed.len()
    );
    finish(dir)
}

fn synthesize(args: SynthArgs) -> anyhow::Result<()> {
    let (_, source_card) = read_card(&args.tokenizer_from)?;
    if source_card.family.as_deref() != Some("clip") {
        bail!(
            "--tokenizer-from {} is not a CLIP package (family {:?})",
            args.tokenizer_from.display(),
            source_card.family
        );
    }
    let Some(compact_name) = &source_card.compact_tokenizer_file else {
        bail!(
            "--tokenizer-from {} has no compact tokenizer: run `clipedge model pack-tokenizer` on it",
            args.tokenizer_from.display()
        );
    };
    let (config, name) = match args.arch {
        Arch::ClipB32 => (
            clipedge_text::int8::Int8Config::clip_b32(),
            "clip-b32-random-int8",
        ),
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let weights = clipedge_text::int8::synthetic_model(&config, args.seed);
    std::fs::write(args.out.join("text.int8"), &weights)?;
    std::fs::copy(
        args.tokenizer_from.join(compact_name),
        args.out.join("tokenizer.bin"),
    )?;
    std::fs::copy(
        args.tokenizer_from.join(&source_card.tokenizer_file),
        args.out.join("tokenizer.json"),
    )?;
    let card = format!(
        "name = \"{name}\"\n\
         family = \"clip\"\n\
         dim = {dim}\n\
         max_tokens = 77  # truncate to the first max_tokens-1 ids, then EOT\n\
         pooling = \"pooled\"\n\
         normalize = true\n\
         inputs = [\"input_ids\"]\n\
         output = \"text_embeds\"\n\
         quantization = \"int8\"\n\
         int8_file = \"text.int8\"\n\
         compact_tokenizer_file = \"tokenizer.bin\"\n\
         fingerprint = \"0000000000000000\"\n\
         source = \"seeded random weights (seed {seed}), CLIP ViT-B/32 text architecture, written by \
         clipedge model synth; tokenizer: {tokenizer}\"\n",
        dim = config.output_dim(),
        seed = args.seed,
        tokenizer = args.tokenizer_from.display(),
    );
    std::fs::write(args.out.join("model.toml"), card)?;
    finish(&args.out)
}

fn refingerprint(dir: &Path, check: bool) -> anyhow::Result<()> {
    let (_, card) = read_card(dir)?;
    let computed = card.package_fingerprint(dir)?;
    if check {
        if computed != card.fingerprint {
            bail!(
                "{}: the card says fingerprint {}, its files hash to {computed}",
                dir.display(),
                card.fingerprint
            );
        }
        return print_line(dir);
    }
    finish(dir)
}

#[cfg(test)]
mod tests {
    use super::set_card_field;

    #[test]
    fn a_field_is_replaced_in_place_or_appended() {
        let card = "name = \"x\"\nfingerprint = \"aaaa\"  # old\n";
        assert_eq!(
            set_card_field(card, "fingerprint", "\"bbbb\""),
            "name = \"x\"\nfingerprint = \"bbbb\"\n"
        );
        assert_eq!(
            set_card_field(card, "int8_file", "\"text.int8\""),
            "name = \"x\"\nfingerprint = \"aaaa\"  # old\nint8_file = \"text.int8\"\n"
        );
    }
}
