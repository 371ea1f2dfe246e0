//! Seeded random models for benchmarks and tests (no torch, no network): weights scaled like
//! the HF CLIP / BERT initializations, written through [`Int8Writer`].

use super::{Family, Int8Config, Int8Writer};

/// splitmix64: small, seedable, the same on every target (the kernel tests draw from it too).
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Approximately N(0, 1): the sum of four uniforms, centred and scaled (Irwin–Hall); cheap
    /// enough to draw the 35 M values of a B/32 text tower in well under a second.
    fn normal(&mut self) -> f32 {
        let bits = self.next_u64();
        let sum: u32 = (0..4).map(|i| ((bits >> (16 * i)) & 0xffff) as u32).sum();
        (sum as f32 / 65536.0 - 2.0) * 3.0f32.sqrt()
    }

    fn fill(&mut self, values: &mut [f32], std: f32, mean: f32) {
        values
            .iter_mut()
            .for_each(|v| *v = mean + std * self.normal());
    }

    fn vector(&mut self, len: usize, std: f32, mean: f32) -> Vec<f32> {
        let mut values = vec![0.0; len];
        self.fill(&mut values, std, mean);
        values
    }
}

/// A valid `text.int8` for `config` with seeded random weights (CLIP-like scales: embeddings
/// std 0.02, attention std `width^-0.5 · (2·layers)^-0.5`, MLP in `(2·width)^-0.5`), small
/// random biases and LayerNorm parameters near (1, 0) so every code path does something.
pub fn synthetic_model(config: &Int8Config, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed);
    let width = config.width as usize;
    let mlp = config.mlp as usize;
    let attention_std = (width as f32).powf(-0.5) * (2.0 * config.layers.max(1) as f32).powf(-0.5);
    let out_std = (width as f32).powf(-0.5);
    let fc1_std = (2.0 * width as f32).powf(-0.5);
    let bias_std = 0.02;

    let mut writer = Int8Writer::new(config);
    writer.token_table(config.vocab as usize, width, |_, row| {
        rng.fill(row, 0.02, 0.0)
    });
    let positions = rng.vector(config.max_positions as usize * width, 0.01, 0.0);
    writer.f32s(&positions);
    let norm = |writer: &mut Int8Writer, rng: &mut Rng| {
        writer.f32s(&rng.vector(width, 0.05, 1.0));
        writer.f32s(&rng.vector(width, 0.02, 0.0));
    };
    if config.family == Family::Bert {
        norm(&mut writer, &mut rng);
    }
    for _ in 0..config.layers {
        norm(&mut writer, &mut rng);
        let bias = rng.vector(3 * width, bias_std, 0.0);
        writer.linear(
            3 * width,
            width,
            |_, row| rng.fill(row, attention_std, 0.0),
            Some(&bias),
        );
        let bias = rng.vector(width, bias_std, 0.0);
        writer.linear(
            width,
            width,
            |_, row| rng.fill(row, out_std, 0.0),
            Some(&bias),
        );
        norm(&mut writer, &mut rng);
        let bias = rng.vector(mlp, bias_std, 0.0);
        writer.linear(
            mlp,
            width,
            |_, row| rng.fill(row, fc1_std, 0.0),
            Some(&bias),
        );
        let bias = rng.vector(width, bias_std, 0.0);
        writer.linear(
            width,
            mlp,
            |_, row| rng.fill(row, attention_std, 0.0),
            Some(&bias),
        );
    }
    if config.family == Family::Clip {
        norm(&mut writer, &mut rng);
    }
    if config.proj_dim > 0 {
        writer.linear(
            config.proj_dim as usize,
            width,
            |_, row| rng.fill(row, out_std, 0.0),
            None,
        );
    }
    writer.finish()
}
