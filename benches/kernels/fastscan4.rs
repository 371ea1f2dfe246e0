//! 4-bit fast-scan of one inverted list (m = 128, 10k codes): the full `scan_list`, and
//! the block kernel through the dispatcher (AVX2 here) against the scalar reference.

use std::hint::black_box;

use clipedge_benches::{quick_criterion, random_codes, random_quantizer, unit_vectors, CLIP_DIM};
use clipedge_linalg::fastscan::{
    block_pair_sums, block_sums, block_sums_scalar, pack_block_codes, scan_list, QuantizedLut,
};
use clipedge_linalg::TopK;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const M: usize = 128;
const CODES: usize = 10_000;

/// Runs `kernel` over every block of `packed` and folds the sums so none is optimised away.
fn sum_all_blocks(
    kernel: fn(&[u8], usize, &[u8], &mut [u16; 32]),
    table: &[u8],
    packed: &[u8],
) -> u64 {
    let mut sums = [0u16; 32];
    let mut checksum = 0u64;
    for block in packed.chunks_exact(16 * M) {
        kernel(table, M, block, &mut sums);
        checksum += sums[0] as u64 + sums[31] as u64;
    }
    checksum
}

fn fastscan4(c: &mut Criterion) {
    let pq = random_quantizer(CLIP_DIM, M, 4, 20);
    let lut = QuantizedLut::from_float(&pq.inner_product_table(&unit_vectors(1, CLIP_DIM, 21)));
    let packed = pack_block_codes(&random_codes(CODES, M, 16, 22), M);
    let mut group = c.benchmark_group("fastscan4");
    group.throughput(Throughput::Elements(CODES as u64));
    group.bench_function(
        format!("scan_list/m128_10k_top10_{}", clipedge_linalg::simd_level()),
        |b| {
            b.iter(|| {
                let mut top = TopK::new(10);
                scan_list(black_box(&lut), black_box(&packed), CODES, 0.0, 0, &mut top);
                top
            })
        },
    );
    group.bench_function(
        format!("block_sums/m128_10k_{}", clipedge_linalg::simd_level()),
        |b| b.iter(|| sum_all_blocks(block_sums, black_box(&lut.table), black_box(&packed))),
    );
    group.bench_function(
        format!("block_pair_sums/m128_10k_{}", clipedge_linalg::simd_level()),
        |b| {
            b.iter(|| {
                let table = black_box(&lut.table);
                let mut sums = [[0u16; 32]; 2];
                let mut total = 0u32;
                for pair in black_box(&packed).chunks_exact(2 * 16 * M) {
                    let (first, second) = pair.split_at(16 * M);
                    let maxima = block_pair_sums(table, M, first, second, &mut sums);
                    total += u32::from(maxima[0]) + u32::from(maxima[1]);
                }
                total
            })
        },
    );
    group.bench_function("block_sums/m128_10k_scalar", |b| {
        b.iter(|| sum_all_blocks(block_sums_scalar, black_box(&lut.table), black_box(&packed)))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = quick_criterion();
    targets = fastscan4
}
criterion_main!(benches);
