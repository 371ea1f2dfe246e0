//! The text tower's int8 GEMM (u8 activations × i8 weights → i32), every kernel this CPU has,
//! on the B/32 shapes: the attention projections (512 × 512), the MLP (2048 × 512, 512 × 2048)
//! at 10 and 77 tokens. The kernels are bit-identical, so only their speed differs; the fastest
//! one is what `Kernel::best` should pick.

use std::hint::black_box;

use clipedge_benches::quick_criterion;
use clipedge_text::int8::{gemm_u8i8, Kernel};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn int8_gemm(c: &mut Criterion) {
    let mut group = c.benchmark_group("int8_gemm");
    for (rows, cols) in [(512, 512), (2048, 512), (512, 2048)] {
        for tokens in [10, 77] {
            let weights: Vec<u8> = (0..rows * cols).map(|i| (i * 31 + 7) as u8).collect();
            let acts: Vec<u8> = (0..tokens * cols)
                .map(|i| ((i * 17 + 3) % 255) as u8)
                .collect();
            let mut out = vec![0i32; rows * tokens];
            group.throughput(Throughput::Elements((rows * cols * tokens) as u64));
            for kernel in Kernel::available() {
                if kernel == Kernel::Scalar {
                    continue;
                }
                group.bench_function(format!("{}/{rows}x{cols}/t{tokens}", kernel.name()), |b| {
                    b.iter(|| {
                        gemm_u8i8(
                            kernel,
                            black_box(&weights),
                            rows,
                            cols,
                            black_box(&acts),
                            tokens,
                            &mut out,
                        )
                    })
                });
            }
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = quick_criterion();
    targets = int8_gemm
}
criterion_main!(benches);
