//! The int8 text tower as a bare wasm module for engine checks (`benches/wasm_engine.sh`):
//! a seeded B/32-architecture model built in place, then per-kernel encodes the host times.
//!
//! Exports (all C ABI, no imports): `setup(seed) -> i32` builds the model (0 = ok);
//! `kernels() -> i32` is a bit set of the kernels compiled in (1 scalar, 2 simd128,
//! 4 relaxed, 8 relaxed held to two dots where it would take one); `encode(kernel, tokens)
//! -> i32` runs one encode (0 = ok); `max_ulps(kernel, tokens) -> i32` compares that kernel's
//! embedding with the scalar reference's (0 = equal); `gemm(kernel, rows, cols, tokens, runs)
//! -> i32` runs one GEMM shape `runs` times; `memory_bytes()` is the linear memory size;
//! `best_kernel()` is the code of the kernel an encoder picks here ([`Kernel::best`]: simd128
//! where the engine's relaxed dot saturates);
//! `relaxed_one_dot()` is 1 where the relaxed kernel runs one dot per 16 products (the
//! engine's dot is exact on u8), 0 where two, −1 without relaxed SIMD.

use std::cell::RefCell;

use clipedge_text::int8::{gemm_u8i8, synthetic_model, Int8Config, Int8Model, Kernel};

thread_local! {
    static MODEL: RefCell<Option<Int8Model>> = const { RefCell::new(None) };
}

const SCALAR: i32 = 1;
const SIMD128: i32 = 2;
const RELAXED: i32 = 4;
/// The relaxed kernel held to its two-dot path: offered only where it would otherwise take the
/// one-dot path, so a check covers both on one engine.
const RELAXED_TWO_DOTS: i32 = 8;

/// The kernel a code names; sets or clears the relaxed kernel's two-dot hook to match.
fn kernel_of(code: i32) -> Option<Kernel> {
    let kernel = match code {
        SCALAR => Kernel::Scalar,
        SIMD128 => Kernel::Simd128,
        RELAXED => Kernel::RelaxedSimd,
        RELAXED_TWO_DOTS if Kernel::relaxed_one_dot() == Some(true) => Kernel::RelaxedSimd,
        _ => return None,
    };
    Kernel::force_relaxed_two_dots(code == RELAXED_TWO_DOTS);
    kernel.is_available().then_some(kernel)
}

/// Token ids that look like a query: BOS, then ids spread over the vocabulary, EOT last.
fn query_ids(tokens: usize, vocab: usize) -> Vec<u32> {
    let tokens = tokens.clamp(2, 77);
    let mut ids: Vec<u32> = (0..tokens)
        .map(|i| ((i * 7919 + 321) % (vocab - 2)) as u32)
        .collect();
    ids[0] = (vocab - 2) as u32;
    ids[tokens - 1] = (vocab - 1) as u32;
    ids
}

fn with_model<T>(run: impl FnOnce(&Int8Model) -> Option<T>) -> Option<T> {
    MODEL.with(|model| model.borrow().as_ref().and_then(run))
}

#[no_mangle]
pub extern "C" fn setup(seed: u32) -> i32 {
    let bytes = synthetic_model(&Int8Config::clip_b32(), u64::from(seed));
    match Int8Model::from_bytes(bytes) {
        Ok(model) => {
            MODEL.with(|slot| *slot.borrow_mut() = Some(model));
            0
        }
        Err(_) => 1,
    }
}

#[no_mangle]
pub extern "C" fn kernels() -> i32 {
    [SCALAR, SIMD128, RELAXED, RELAXED_TWO_DOTS]
        .into_iter()
        .filter(|&code| kernel_of(code).is_some())
        .sum()
}

#[no_mangle]
pub extern "C" fn encode(kernel: i32, tokens: u32) -> i32 {
    let Some(kernel) = kernel_of(kernel) else {
        return 2;
    };
    let encoded = with_model(|model| {
        let ids = query_ids(tokens as usize, model.vocab());
        model.forward_with_kernel(&ids, kernel).ok()
    });
    if encoded.is_some() {
        0
    } else {
        1
    }
}

/// The largest distance in units in the last place between this kernel's embedding and the
/// scalar reference's; the kernels are exact integer GEMMs, so anything but 0 is an engine bug.
#[no_mangle]
pub extern "C" fn max_ulps(kernel: i32, tokens: u32) -> i32 {
    let Some(kernel) = kernel_of(kernel) else {
        return -2;
    };
    with_model(|model| {
        let ids = query_ids(tokens as usize, model.vocab());
        let tested = model.forward_with_kernel(&ids, kernel).ok()?;
        let reference = model.forward_with_kernel(&ids, Kernel::Scalar).ok()?;
        let worst = tested
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs())
            .max()
            .unwrap_or(0);
        Some(worst.min(i32::MAX as u64) as i32)
    })
    .unwrap_or(-1)
}

/// One GEMM shape, `runs` times, on deterministic operands: isolates kernel speed from the
/// rest of the forward pass.
#[no_mangle]
pub extern "C" fn gemm(kernel: i32, rows: u32, cols: u32, tokens: u32, runs: u32) -> i32 {
    let Some(kernel) = kernel_of(kernel) else {
        return 2;
    };
    let (rows, cols, tokens) = (rows as usize, cols as usize, tokens as usize);
    let weights: Vec<u8> = (0..rows * cols).map(|i| (i * 31 + 7) as u8).collect();
    let acts: Vec<u8> = (0..tokens * cols)
        .map(|i| ((i * 17 + 3) % 255) as u8)
        .collect();
    let mut out = vec![0i32; rows * tokens];
    for _ in 0..runs {
        gemm_u8i8(kernel, &weights, rows, cols, &acts, tokens, &mut out);
    }
    // Keeps the work observable.
    (out.iter().fold(0i64, |sum, &v| sum + v as i64) & 0x7fff_ffff) as i32
}

#[no_mangle]
pub extern "C" fn memory_bytes() -> u32 {
    #[cfg(target_arch = "wasm32")]
    {
        (core::arch::wasm32::memory_size(0) * 65536) as u32
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        0
    }
}

#[no_mangle]
pub extern "C" fn relaxed_one_dot() -> i32 {
    match Kernel::relaxed_one_dot() {
        Some(true) => 1,
        Some(false) => 0,
        None => -1,
    }
}

/// The kernel an encoder on this engine uses ([`Kernel::best`]): 1 scalar, 2 simd128,
/// 4 relaxed SIMD (the codes of `kernels()`).
#[no_mangle]
pub extern "C" fn best_kernel() -> i32 {
    match Kernel::best() {
        Kernel::RelaxedSimd => RELAXED,
        Kernel::Simd128 => SIMD128,
        _ => SCALAR,
    }
}
