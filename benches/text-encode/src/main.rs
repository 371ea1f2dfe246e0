//! Measures the text tower the way a Worker isolate meets it: load a model package from bytes,
//! then encode one query at a time at 4, 10, 32 and 77 tokens. Prints one JSON line per figure.
//!
//! Native: `cargo run --release -p clipedge-text-bench -- models/clip-b32-random-int8-dynamic`
//! wasm:   see `benches/README.md` (built for wasm32-wasip1 with simd128, run under Node's WASI).
//!
//! Peak memory is VmHWM natively and the wasm linear memory size in wasm (linear memory never
//! shrinks, so its size is the high-water mark of the module's heap).

use std::path::PathBuf;
use std::time::Instant;

use clipedge_text::{ModelCard, PackageBytes, TextEncoder, Tokens};

const LENGTHS: [usize; 4] = [4, 10, 32, 77];

fn main() {
    if let Err(error) = run() {
        eprintln!("error: {error}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .ok_or("usage: text-encode-bench MODEL_DIR [RUNS]")?,
    );
    let runs: usize = args
        .next()
        .map(|runs| runs.parse().map_err(|_| "RUNS must be a number"))
        .transpose()?
        .unwrap_or(20);
    let read = |name: &str| {
        std::fs::read(dir.join(name))
            .map_err(|error| format!("{}: {error}", dir.join(name).display()))
    };

    let card_text =
        String::from_utf8(read("model.toml")?).map_err(|_| "model.toml is not UTF-8")?;
    let card = ModelCard::from_toml(&card_text).map_err(|error| error.to_string())?;
    // The files of the engine the card names (the int8 engine when the package ships it).
    let files = card
        .files_for(card.engine())
        .map_err(|error| error.to_string())?;
    let tower = read(&files.tower)?;
    let external_data = match &files.external_data {
        Some(name) => Some(read(name)?),
        None => None,
    };
    let tokenizer = read(&files.tokenizer)?;
    let package_bytes =
        tower.len() + external_data.as_ref().map_or(0, |data| data.len()) + tokenizer.len();
    let memory_before_load = peak_memory_bytes();

    let load_start = Instant::now();
    let encoder = TextEncoder::from_package(PackageBytes {
        card_toml: &card_text,
        tokenizer,
        tower,
        external_data,
    })
    .map_err(|error| error.to_string())?;
    let load_ms = load_start.elapsed().as_secs_f64() * 1e3;
    println!(
        "{{\"model\":\"{}\",\"target\":\"{}\",\"package_mib\":{:.1},\"load_ms\":{load_ms:.0},\"memory_before_load_mib\":{:.1},\"peak_after_load_mib\":{:.1}}}",
        card.name,
        std::env::consts::ARCH,
        mib(package_bytes),
        mib(memory_before_load),
        mib(peak_memory_bytes())
    );

    if let Ok(reference) = read("reference.json") {
        let (texts, worst) = reference_parity(&encoder, &reference)?;
        println!("{{\"model\":\"{}\",\"reference_texts\":{texts},\"min_cosine_vs_fp32_reference\":{worst:.6}}}", card.name);
    }

    let real_ids = encoder
        .tokenize("a photo of a dog running on the beach at sunset")
        .map_err(|error| error.to_string())?
        .ids;
    for &length in &LENGTHS {
        if length > card.max_tokens {
            continue;
        }
        let tokens = tokens_of_length(&real_ids, length);
        let first_start = Instant::now();
        encoder
            .encode_tokens(&tokens)
            .map_err(|error| error.to_string())?;
        let first_ms = first_start.elapsed().as_secs_f64() * 1e3;
        let mut samples: Vec<f64> = (0..runs)
            .map(|_| {
                let start = Instant::now();
                encoder
                    .encode_tokens(&tokens)
                    .map(|_| start.elapsed().as_secs_f64() * 1e3)
            })
            .collect::<Result<_, _>>()
            .map_err(|error| error.to_string())?;
        samples.sort_by(f64::total_cmp);
        println!(
            "{{\"model\":\"{}\",\"target\":\"{}\",\"tokens\":{length},\"first_ms\":{first_ms:.1},\"p50_ms\":{:.2},\"min_ms\":{:.2},\"peak_mib\":{:.1}}}",
            card.name,
            std::env::consts::ARCH,
            samples[samples.len() / 2],
            samples[0],
            mib(peak_memory_bytes())
        );
    }
    Ok(())
}

/// Lowest cosine between our embedding and the fp32 reference over `reference.json`.
fn reference_parity(encoder: &TextEncoder, reference: &[u8]) -> Result<(usize, f32), String> {
    #[derive(serde::Deserialize)]
    struct Entry {
        ids: Vec<i64>,
        embedding: Vec<f32>,
    }
    let entries: Vec<Entry> =
        serde_json::from_slice(reference).map_err(|error| format!("reference.json: {error}"))?;
    let mut worst = 1.0f32;
    for entry in &entries {
        let tokens = Tokens {
            type_ids: vec![0; entry.ids.len()],
            ids: entry.ids.clone(),
            truncated: false,
        };
        let ours = encoder
            .encode_tokens(&tokens)
            .map_err(|error| error.to_string())?
            .embedding;
        let dot: f32 = ours.iter().zip(&entry.embedding).map(|(a, b)| a * b).sum();
        let norm = entry.embedding.iter().map(|x| x * x).sum::<f32>().sqrt();
        worst = worst.min(dot / norm);
    }
    Ok((entries.len(), worst))
}

/// `length` positions: the real query's first token, content ids repeated, its last token.
fn tokens_of_length(real_ids: &[i64], length: usize) -> Tokens {
    let (first, last) = (real_ids[0], real_ids[real_ids.len() - 1]);
    let content = &real_ids[1..real_ids.len() - 1];
    let mut ids = vec![first];
    ids.extend(content.iter().cycle().take(length - 2));
    ids.push(last);
    Tokens {
        type_ids: vec![0; length],
        ids,
        truncated: false,
    }
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[cfg(target_arch = "wasm32")]
fn peak_memory_bytes() -> usize {
    core::arch::wasm32::memory_size(0) * 65536
}

#[cfg(not(target_arch = "wasm32"))]
fn peak_memory_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| {
            value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<usize>()
                .ok()
        })
        .map_or(0, |kib| kib * 1024)
}
