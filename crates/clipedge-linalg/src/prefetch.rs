//! Software prefetch of the start of the next object a loop will read. A query touches a few
//! hundred lists, each its own allocation: the hardware prefetcher follows a list once it is
//! being read, but the first cache lines of every list miss. Prefetches never fault and change
//! no result.

/// Cache line size on the targets that prefetch.
const LINE: usize = 64;

/// Asks the CPU to bring the first `lines` cache lines of `bytes` into L1 (fewer if `bytes` is
/// shorter). A no-op on targets without a prefetch instruction here (wasm32).
#[inline(always)]
pub fn read(bytes: &[u8], lines: usize) {
    let lines = lines.min(bytes.len().div_ceil(LINE));
    for line in 0..lines {
        let address = bytes[line * LINE..].as_ptr();
        #[cfg(target_arch = "x86_64")]
        // SAFETY: SSE is part of the x86_64 baseline; a prefetch reads nothing architecturally.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                address as *const i8,
            )
        };
        #[cfg(target_arch = "aarch64")]
        // SAFETY: `prfm` is a hint: it never faults and writes nothing.
        unsafe {
            std::arch::asm!("prfm pldl1keep, [{0}]", in(reg) address, options(nostack, readonly, preserves_flags))
        };
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        let _ = address;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn prefetching_any_length_is_safe() {
        for length in [0usize, 1, 63, 64, 65, 1000] {
            let bytes = vec![7u8; length];
            for lines in [0, 1, 4, 100] {
                super::read(&bytes, lines);
            }
        }
    }
}
