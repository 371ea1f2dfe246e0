//! Latency of the int8 engine on the CLIP ViT-B/32 text architecture (seeded random weights,
//! so no model files are needed): load (parse) time, then one query at a time at 4, 10, 32 and
//! 77 tokens with every kernel this build can run. Prints one JSON line per figure.
//!
//! Native: `cargo run --release -p clipedge-text --no-default-features --example int8_bench`
//! wasm32 (simd128, relaxed SIMD): build for wasm32-wasip1 with
//! `RUSTFLAGS="-C target-feature=+simd128,+relaxed-simd"` and run under `scripts/wasi-run.mjs`.
//!
//! Arguments (all optional): runs per figure (20), kernels (comma-separated names, e.g.
//! `avx2`; all available by default), token counts (comma-separated; `4,10,32,77` by default).

use std::time::Instant;

use clipedge_text::int8::{synthetic_model, Int8Config, Int8Model, Kernel};

const LENGTHS: [usize; 4] = [4, 10, 32, 77];

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|runs| runs.parse().ok())
        .unwrap_or(20);
    let kernels: Option<Vec<String>> = std::env::args()
        .nth(2)
        .map(|names| names.split(',').map(str::to_owned).collect());
    let lengths: Vec<usize> = std::env::args()
        .nth(3)
        .map(|lengths| {
            lengths
                .split(',')
                .filter_map(|length| length.parse().ok())
                .filter(|&length| length >= 2)
                .collect()
        })
        .unwrap_or_else(|| LENGTHS.to_vec());
    let config = Int8Config::clip_b32();
    let build_start = Instant::now();
    let bytes = synthetic_model(&config, 20261122);
    let build_ms = build_start.elapsed().as_secs_f64() * 1e3;
    let file_mib = bytes.len() as f64 / (1 << 20) as f64;

    let load_start = Instant::now();
    let model = match Int8Model::from_bytes(bytes) {
        Ok(model) => model,
        Err(error) => {
            eprintln!("error: {error}");
            std::process::exit(1);
        }
    };
    let load_ms = load_start.elapsed().as_secs_f64() * 1e3;
    println!(
        "{{\"model\":\"clip-b32-synthetic-int8\",\"target\":\"{}\",\"file_mib\":{file_mib:.1},\"generate_ms\":{build_ms:.0},\"load_ms\":{load_ms:.2}}}",
        std::env::consts::ARCH
    );

    let chosen = Kernel::available().into_iter().filter(|kernel| {
        kernels
            .as_ref()
            .is_none_or(|names| names.iter().any(|name| name == kernel.name()))
    });
    for kernel in chosen {
        for &length in &lengths {
            // Start token, words, EOT, like a tokenized caption.
            let ids: Vec<u32> = (0..length)
                .map(|i| match i {
                    0 => 49406,
                    i if i == length - 1 => 49407,
                    i => (i as u32 * 7919) % 49000 + 256,
                })
                .collect();
            // The scalar kernel is slow at 77 tokens; fewer runs keep the bench short.
            let runs = if kernel == Kernel::Scalar {
                runs.min(5)
            } else {
                runs
            };
            // The embedding's bits, hashed: equal across kernels and across changes that keep
            // the numerics.
            let bits = model
                .forward_with_kernel(&ids, kernel)
                .expect("forward")
                .iter()
                .fold(0xcbf2_9ce4_8422_2325u64, |hash, value| {
                    (hash ^ value.to_bits() as u64).wrapping_mul(0x100_0000_01b3)
                });
            let mut times: Vec<f64> = (0..runs)
                .map(|_| {
                    let start = Instant::now();
                    let embedding = model.forward_with_kernel(&ids, kernel).expect("forward");
                    std::hint::black_box(embedding);
                    start.elapsed().as_secs_f64() * 1e3
                })
                .collect();
            times.sort_by(f64::total_cmp);
            let quantile = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
            println!(
                "{{\"kernel\":\"{}\",\"tokens\":{length},\"runs\":{runs},\"min_ms\":{:.2},\"p50_ms\":{:.2},\"p90_ms\":{:.2},\"fnv\":\"{bits:016x}\"}}",
                kernel.name(),
                times[0],
                quantile(0.5),
                quantile(0.9)
            );
        }
    }
}
