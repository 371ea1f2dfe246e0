//! `device-check`: the GPU twin against the CPU reference on seeded CLIP-like data, and the
//! GPU's assign + encode throughput. The GPU test of the build path (CI has no GPU; run it on
//! a GPU box, see docs/nightly.md).

use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use clipedge_datagen::{ClipLikeConfig, ClipLikeGenerator, QueryKind};
use clipedge_index_builder::device::{train_balanced_kmeans, Device, DeviceChoice, Metric};
use clipedge_index_builder::ExactTopK;
use clipedge_linalg::balanced::BalancedConfig;
use clipedge_linalg::kmeans::{sample_rows, seeded_rng};
use clipedge_linalg::ProductQuantizer;
use serde::Serialize;

#[derive(Args)]
pub struct DeviceCheckArgs {
    /// Vectors assigned and encoded on the device (the throughput figure).
    #[arg(long, default_value_t = 1_000_000)]
    n: usize,
    /// Vectors also run on the CPU and compared.
    #[arg(long, default_value_t = 20_000)]
    compare: usize,
    #[arg(long, default_value_t = 65_536)]
    nlist: usize,
    #[arg(long, default_value_t = 512)]
    dim: usize,
    #[arg(long, default_value_t = 64)]
    pq_m: usize,
    #[arg(long, default_value_t = 8)]
    pq_bits: u8,
    /// k-means clusters of the training comparison (GPU- vs CPU-assigned Lloyd iterations).
    #[arg(long, default_value_t = 1024)]
    train_k: usize,
    /// Hierarchical balanced k-means on the device alone at this many lists (0: skip), timed,
    /// on a sample of `--balanced-sample` vectors (default 64 per list, at most --n).
    #[arg(long, default_value_t = 0)]
    balanced_k: usize,
    #[arg(long)]
    balanced_sample: Option<usize>,
    /// Hierarchical balanced k-means on the device and on the CPU at this many lists
    /// (64 points each): the device's inertia must be at most 1 % above the CPU's (0: skip).
    #[arg(long, default_value_t = 1024)]
    balanced_compare_k: usize,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// The device to check against the CPU: cuda (default) or cpu (checks the harness itself).
    #[arg(long, default_value = "cuda")]
    device: String,
    /// Queries of the exact top-10 comparison (the recall gate's ground truth), half
    /// image-like, half text-like; 0 skips it. The device scores all `--n` vectors (timed), the
    /// CPU the first `--truth-compare-n`.
    #[arg(long, default_value_t = 200)]
    truth_queries: usize,
    #[arg(long, default_value_t = 1_000_000)]
    truth_compare_n: usize,
    /// Fail (exit 1) below these agreement ratios.
    #[arg(long, default_value_t = 0.999)]
    min_label_agreement: f64,
    #[arg(long, default_value_t = 0.99)]
    min_code_agreement: f64,
}

#[derive(Serialize)]
struct DeviceCheckReport {
    device: String,
    n: usize,
    nlist: usize,
    dim: usize,
    pq_m: usize,
    pq_bits: u8,
    compared: usize,
    label_agreement: f64,
    /// Labels that differ but score within 1e-4 of each other (fp rounding ties).
    label_near_ties: usize,
    code_agreement: f64,
    l2_label_agreement: f64,
    kmeans_inertia_cpu: f64,
    kmeans_inertia_device: f64,
    balanced_compare: Option<BalancedComparison>,
    balanced: Option<BalancedRun>,
    upload_s: f64,
    assign_s: f64,
    encode_s: f64,
    assign_vectors_per_s: f64,
    encode_vectors_per_s: f64,
    assign_encode_vectors_per_s: f64,
    /// One pass of [`Device::assign_and_encode`] (what the build runs).
    fused_s: f64,
    fused_vectors_per_s: f64,
    truth: Option<TruthComparison>,
    passed: bool,
}

/// Exact top-10 on the device against the CPU's heaps, same queries and vectors.
#[derive(Serialize)]
struct TruthComparison {
    queries: usize,
    /// Vectors both sides scored.
    compared_n: usize,
    /// Mean |device ∩ cpu| / 10 over the queries (1.0 but for fp32 summation-order ties).
    overlap: f64,
    cpu_s: f64,
    device_s: f64,
    /// The device over all `--n` vectors.
    device_full_s: f64,
    device_vectors_per_s: f64,
    /// Assign + encode + this truth in one pass over all `--n` (what `run` does on a GPU),
    /// against `fused_s` without the truth; and its top-10's overlap with the separate pass's.
    fused_with_truth_s: f64,
    fused_overlap: f64,
    /// Whether the device computed it (false: the device fell back to the CPU heaps).
    on_device: bool,
}

/// Mean share of each query's ids in `a` that are also in `b`'s.
fn overlap(a: &[Vec<u64>], b: &[Vec<u64>]) -> f64 {
    let shared: usize = a
        .iter()
        .zip(b)
        .map(|(a, b)| a.iter().filter(|id| b.contains(id)).count())
        .sum();
    let total: usize = a.iter().map(Vec::len).sum();
    shared as f64 / total.max(1) as f64
}

fn exact_top_10(
    device: &Device,
    queries: &[f32],
    data: &[f32],
    dim: usize,
) -> anyhow::Result<(Vec<Vec<u64>>, f64, bool)> {
    let started = Instant::now();
    let mut top = ExactTopK::on_device(device, queries.to_vec(), dim, 10)?;
    let on_device = top.is_on_device();
    // The build feeds 65,536-row batches.
    for (index, batch) in data.chunks(65_536 * dim).enumerate() {
        top.add_batch(batch, (index * 65_536) as u64)?;
    }
    let truth = top.finish()?;
    Ok((truth, started.elapsed().as_secs_f64(), on_device))
}

/// Hierarchical balanced k-means, device against CPU on one sample.
#[derive(Serialize)]
struct BalancedComparison {
    k: usize,
    points: usize,
    inertia_cpu: f64,
    inertia_device: f64,
    cpu_s: f64,
    device_s: f64,
}

/// Hierarchical balanced k-means on the device alone.
#[derive(Serialize)]
struct BalancedRun {
    k: usize,
    points: usize,
    seconds: f64,
    mesoclusters: usize,
    reseeded: usize,
    /// List sizes in the last full pass, against the mean.
    smallest: u64,
    largest: u64,
    mean: f64,
    inertia: f64,
}

fn balanced_config(k: usize, seed: u64) -> BalancedConfig {
    BalancedConfig {
        iterations: 10,
        seed,
        ..BalancedConfig::new(k)
    }
}

pub fn run(args: DeviceCheckArgs) -> anyhow::Result<bool> {
    let Some(choice) = DeviceChoice::parse(&args.device) else {
        bail!("--device must be cuda or cpu, got {:?}", args.device);
    };
    if args.compare > args.n || args.nlist > args.n {
        bail!("--compare and --nlist must not exceed --n");
    }
    let device = Device::open(choice).context("opening the device")?;
    let cpu = Device::cpu();
    eprintln!("device-check on {}", device.name());
    let dim = args.dim;
    let generator = ClipLikeGenerator::new(ClipLikeConfig::new(dim, args.seed));
    let started = Instant::now();
    let data = generator.base(args.n);
    eprintln!(
        "generated {} x {dim} in {:.1}s",
        args.n,
        started.elapsed().as_secs_f64()
    );

    // Centroids: a seeded sample of the data (k-means' own start), enough to compare devices.
    let mut rng = seeded_rng(args.seed);
    let coarse_host = sample_rows(&data, dim, args.nlist, &mut rng);
    let pq_sample = sample_rows(&data, dim, (256 << args.pq_bits).min(args.n), &mut rng);
    let sample_centroids = cpu.centroids(coarse_host.clone(), dim, Metric::InnerProduct)?;
    let (sample_labels, _) = cpu.search(&sample_centroids, &pq_sample)?;
    let residuals: Vec<f32> = pq_sample
        .chunks_exact(dim)
        .zip(&sample_labels)
        .flat_map(|(row, label)| {
            let centroid = &coarse_host[*label as usize * dim..(*label as usize + 1) * dim];
            row.iter()
                .zip(centroid)
                .map(|(x, c)| x - c)
                .collect::<Vec<f32>>()
        })
        .collect();
    let pq = ProductQuantizer::train(&residuals, dim, args.pq_m, args.pq_bits, 8, args.seed)?;
    eprintln!(
        "trained the check codebook in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let upload_started = Instant::now();
    let coarse = device.centroids(coarse_host.clone(), dim, Metric::InnerProduct)?;
    let encoder = device.encoder(&pq, &coarse)?;
    let upload_s = upload_started.elapsed().as_secs_f64();
    // Warm-up (kernel load, cuBLAS heuristics) outside the timing.
    let warm = &data[..dim * 1024.min(args.n)];
    let (warm_labels, _) = device.search(&coarse, warm)?;
    device.encode_residuals(&encoder, warm, &warm_labels)?;

    let assign_started = Instant::now();
    let (labels, _) = device.search(&coarse, &data)?;
    let assign_s = assign_started.elapsed().as_secs_f64();
    let encode_started = Instant::now();
    let codes = device.encode_residuals(&encoder, &data, &labels)?;
    let encode_s = encode_started.elapsed().as_secs_f64();
    let fused_started = Instant::now();
    let (fused_labels, fused_codes) = device.assign_and_encode(&encoder, &data)?;
    let fused_s = fused_started.elapsed().as_secs_f64();
    if fused_labels != labels || fused_codes != codes {
        bail!("assign_and_encode disagrees with search + encode_residuals on the same device");
    }
    eprintln!("device: assign {assign_s:.2}s, encode {encode_s:.2}s, both fused {fused_s:.2}s");

    // The CPU reference on a prefix.
    let compare = &data[..args.compare * dim];
    let (cpu_labels, _) = cpu.search(&sample_centroids, compare)?;
    let mut agree = 0usize;
    let mut near_ties = 0usize;
    for (row, (a, b)) in compare
        .chunks_exact(dim)
        .zip(labels.iter().zip(&cpu_labels))
    {
        if a == b {
            agree += 1;
            continue;
        }
        let score = |label: u32| {
            clipedge_linalg::dot::dot(
                row,
                &coarse_host[label as usize * dim..(label as usize + 1) * dim],
            )
        };
        if (score(*a) - score(*b)).abs() <= 1e-4 {
            near_ties += 1;
        }
    }
    // Codes compared under the same labels (the device's), so a label tie cannot count twice.
    let cpu_encoder = cpu.encoder(&pq, &sample_centroids)?;
    let cpu_codes = cpu.encode_residuals(&cpu_encoder, compare, &labels[..args.compare])?;
    let code_agree = codes[..args.compare * args.pq_m]
        .chunks_exact(args.pq_m)
        .zip(cpu_codes.chunks_exact(args.pq_m))
        .filter(|(a, b)| a == b)
        .count();

    // L2 search and k-means training through the device's assignment.
    let train_rows = (args.train_k * 64).min(args.n);
    let train = &data[..train_rows * dim];
    let l2_host = sample_rows(train, dim, args.train_k, &mut rng);
    let l2_cpu = cpu.centroids(l2_host.clone(), dim, Metric::L2)?;
    let l2_device = device.centroids(l2_host, dim, Metric::L2)?;
    let (l2_a, _) = cpu.search(&l2_cpu, compare)?;
    let (l2_b, _) = device.search(&l2_device, compare)?;
    let l2_agree = l2_a.iter().zip(&l2_b).filter(|(a, b)| a == b).count();
    let kmeans_config = clipedge_linalg::KMeansConfig {
        k: args.train_k,
        iterations: 10,
        seed: args.seed,
        max_points_per_centroid: usize::MAX,
        init: clipedge_linalg::KMeansInit::Random,
    };
    let cpu_kmeans =
        clipedge_index_builder::device::train_kmeans(&cpu, train, dim, &kmeans_config)?;
    let device_kmeans =
        clipedge_index_builder::device::train_kmeans(&device, train, dim, &kmeans_config)?;

    let balanced_compare = if args.balanced_compare_k > 0 {
        let points = (args.balanced_compare_k * 64).min(args.n);
        let sample = &data[..points * dim];
        let config = balanced_config(args.balanced_compare_k, args.seed);
        let cpu_started = Instant::now();
        let (cpu_kmeans, _) = train_balanced_kmeans(&cpu, sample, dim, &config)?;
        let cpu_s = cpu_started.elapsed().as_secs_f64();
        let device_started = Instant::now();
        let (device_kmeans, _) = train_balanced_kmeans(&device, sample, dim, &config)?;
        let device_s = device_started.elapsed().as_secs_f64();
        eprintln!(
            "balanced k-means, k {}: cpu {cpu_s:.1}s, device {device_s:.1}s",
            args.balanced_compare_k
        );
        Some(BalancedComparison {
            k: args.balanced_compare_k,
            points,
            inertia_cpu: cpu_kmeans.inertia,
            inertia_device: device_kmeans.inertia,
            cpu_s,
            device_s,
        })
    } else {
        None
    };
    let balanced = if args.balanced_k > 0 {
        let points = args
            .balanced_sample
            .unwrap_or(64 * args.balanced_k)
            .min(args.n);
        let sample = sample_rows(&data, dim, points, &mut rng);
        let started = Instant::now();
        let (kmeans, stats) = train_balanced_kmeans(
            &device,
            &sample,
            dim,
            &balanced_config(args.balanced_k, args.seed),
        )?;
        let seconds = started.elapsed().as_secs_f64();
        eprintln!(
            "balanced k-means, k {} over {points} points on the device: {seconds:.1}s",
            args.balanced_k
        );
        Some(BalancedRun {
            k: args.balanced_k,
            points,
            seconds,
            mesoclusters: stats.mesoclusters,
            reseeded: stats.reseeded,
            smallest: stats.smallest,
            largest: stats.largest,
            mean: points as f64 / args.balanced_k as f64,
            inertia: kmeans.inertia,
        })
    } else {
        None
    };

    let truth = if args.truth_queries > 0 {
        let image_like = args.truth_queries / 2;
        let mut queries = generator.queries(image_like, QueryKind::InDistribution);
        queries.extend(generator.queries(
            args.truth_queries - image_like,
            QueryKind::OutOfDistribution,
        ));
        // Warm-up: kernel load and cuBLAS heuristics outside the timing.
        exact_top_10(&device, &queries, &data[..dim * 1024.min(args.n)], dim)?;
        let (device_full, device_full_s, on_device) = exact_top_10(&device, &queries, &data, dim)?;
        // The build's way on a GPU: the truth fed by the assign + encode pass itself.
        let fused_started = Instant::now();
        let mut fused_top = ExactTopK::on_device(&device, queries.clone(), dim, 10)?;
        let (fused_truth_labels, fused_truth_codes) = match fused_top.device_feed(&data, 0)? {
            Some(top) => device.assign_encode_and_truth(&encoder, &data, top, 0)?,
            None => {
                fused_top.add_batch(&data, 0)?;
                device.assign_and_encode(&encoder, &data)?
            }
        };
        let fused_truth = fused_top.finish()?;
        let fused_with_truth_s = fused_started.elapsed().as_secs_f64();
        if fused_truth_labels != fused_labels || fused_truth_codes != fused_codes {
            bail!("assign_encode_and_truth disagrees with assign_and_encode on the same device");
        }
        let fused_overlap = overlap(&fused_truth, &device_full);
        let compared_n = args.truth_compare_n.min(args.n);
        let prefix = &data[..compared_n * dim];
        let (device_truth, device_s, _) = exact_top_10(&device, &queries, prefix, dim)?;
        let (cpu_truth, cpu_s, _) = exact_top_10(&cpu, &queries, prefix, dim)?;
        let overlap = overlap(&device_truth, &cpu_truth);
        eprintln!(
            "exact top-10 of {} queries: overlap {overlap:.5}; over {compared_n}: cpu {cpu_s:.2}s, \
             device {device_s:.2}s; over {}: device {device_full_s:.2}s, in the assign + encode \
             pass {fused_with_truth_s:.2}s (overlap {fused_overlap:.5})",
            args.truth_queries, args.n
        );
        Some(TruthComparison {
            queries: args.truth_queries,
            compared_n,
            overlap,
            cpu_s,
            device_s,
            device_full_s,
            device_vectors_per_s: args.n as f64 / device_full_s.max(1e-9),
            fused_with_truth_s,
            fused_overlap,
            on_device,
        })
    } else {
        None
    };
    // fp32 either side; only summation order differs, so a swap at the 10th place is rare.
    let truth_close = truth
        .as_ref()
        .is_none_or(|truth| truth.overlap >= 0.999 && truth.fused_overlap >= 0.999);

    let label_agreement = agree as f64 / args.compare as f64;
    let code_agreement = code_agree as f64 / args.compare as f64;
    let inertia_close = (cpu_kmeans.inertia - device_kmeans.inertia).abs()
        <= 0.01 * cpu_kmeans.inertia.abs().max(1e-12);
    // One-sided: the three-level scheme amplifies the odd near-tie label that fp16 scoring
    // resolves differently (flat Lloyd above stays within 1e-9; this drifted 1.7 % on an H100,
    // the GPU's side lower), so the GPU twin must train no worse, not identically.
    let balanced_close = balanced_compare
        .as_ref()
        .is_none_or(|compare| compare.inertia_device <= compare.inertia_cpu * 1.01 + 1e-12);
    let passed = (label_agreement + near_ties as f64 / args.compare as f64)
        >= args.min_label_agreement
        && code_agreement >= args.min_code_agreement
        && inertia_close
        && balanced_close
        && truth_close;
    let report = DeviceCheckReport {
        device: device.name(),
        n: args.n,
        nlist: args.nlist,
        dim,
        pq_m: args.pq_m,
        pq_bits: args.pq_bits,
        compared: args.compare,
        label_agreement,
        label_near_ties: near_ties,
        code_agreement,
        l2_label_agreement: l2_agree as f64 / args.compare as f64,
        kmeans_inertia_cpu: cpu_kmeans.inertia,
        kmeans_inertia_device: device_kmeans.inertia,
        balanced_compare,
        balanced,
        upload_s,
        assign_s,
        encode_s,
        assign_vectors_per_s: args.n as f64 / assign_s.max(1e-9),
        encode_vectors_per_s: args.n as f64 / encode_s.max(1e-9),
        assign_encode_vectors_per_s: args.n as f64 / (assign_s + encode_s).max(1e-9),
        fused_s,
        fused_vectors_per_s: args.n as f64 / fused_s.max(1e-9),
        truth,
        passed,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(passed)
}
