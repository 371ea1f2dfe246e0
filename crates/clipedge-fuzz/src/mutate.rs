//! A small deterministic mutator for the stable pass: what libFuzzer does most often to a seed
//! (bit flips, truncation, splices) plus the edits that matter most to binary decoders —
//! length and count fields set to extreme values. No dependency, the same inputs every run.

/// SplitMix64: enough randomness for choosing mutations, and reproducible from a seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `0..bound` (`bound` > 0).
    pub fn below(&mut self, bound: usize) -> usize {
        (self.next_u64() % bound as u64) as usize
    }
}

/// Values a length or count field is most interesting at.
const EXTREMES: [u64; 10] = [
    0,
    1,
    0x7f,
    0xff,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x7fff_ffff_ffff_ffff,
    u64::MAX,
];

/// One to four mutations of `seed`, chosen by `rng`.
pub fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        mutate_once(&mut bytes, rng);
    }
    bytes
}

fn mutate_once(bytes: &mut Vec<u8>, rng: &mut Rng) {
    if bytes.is_empty() {
        bytes.push(rng.next_u64() as u8);
        return;
    }
    let at = rng.below(bytes.len());
    match rng.below(8) {
        0 => bytes[at] ^= 1 << rng.below(8),
        1 => bytes[at] = rng.next_u64() as u8,
        2 => bytes.truncate(at),
        3 => {
            // An integer field (4-aligned, as the binary layouts are) set to an extreme.
            let width = if rng.below(2) == 0 { 4 } else { 8 };
            let start = at - at % 4;
            let value = EXTREMES[rng.below(EXTREMES.len())].to_le_bytes();
            for (offset, byte) in value[..width].iter().enumerate() {
                if let Some(slot) = bytes.get_mut(start + offset) {
                    *slot = *byte;
                }
            }
        }
        4 => {
            let len = 1 + rng.below(16.min(bytes.len() - at));
            let chunk = bytes[at..at + len].to_vec();
            let to = rng.below(bytes.len() + 1);
            bytes.splice(to..to, chunk);
        }
        5 => {
            let len = 1 + rng.below(16.min(bytes.len() - at));
            bytes.drain(at..at + len);
        }
        6 => {
            // Text inputs: a digit run made huge or negative, a quote or bracket dropped in.
            let insert: &[u8] = match rng.below(6) {
                0 => b"99999999999999999999",
                1 => b"-1",
                2 => b"1e39",
                3 => b"\"",
                4 => b"[",
                _ => b"{",
            };
            bytes.splice(at..at, insert.iter().copied());
        }
        _ => bytes.extend((0..1 + rng.below(8)).map(|_| rng.next_u64() as u8)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_are_reproducible_and_change_the_input() {
        let seed = b"a seed of some length, 32 bytes.";
        let first: Vec<Vec<u8>> = (0..50).map(|i| mutate(seed, &mut Rng::new(i))).collect();
        let again: Vec<Vec<u8>> = (0..50).map(|i| mutate(seed, &mut Rng::new(i))).collect();
        assert_eq!(first, again);
        assert!(first.iter().filter(|mutant| mutant[..] != seed[..]).count() > 40);
        assert!(!mutate(b"", &mut Rng::new(1)).is_empty());
    }
}
