//! Product quantization: training, encoding and inner-product lookup tables.

use crate::kmeans::KMeansInit;
use crate::{dot, kmeans, par, KMeans, KMeansConfig, LinalgError};

/// `m` sub-quantizers of `ksub = 2^bits` centroids over `dsub = dim / m` dimensions.
#[derive(Debug, Clone, PartialEq)]
pub struct ProductQuantizer {
    pub dim: usize,
    pub m: usize,
    pub bits: u8,
    pub dsub: usize,
    pub ksub: usize,
    /// `m * ksub * dsub` floats, sub-quantizer major.
    pub centroids: Vec<f32>,
    /// Per sub-quantizer the codebook transposed to `dsub x ksub`, so encode and LUT
    /// loops run over centroids in the inner loop and vectorize.
    transposed: Vec<f32>,
    norms: Vec<f32>,
}

impl ProductQuantizer {
    pub fn validate_shape(dim: usize, m: usize, bits: u8) -> Result<(), LinalgError> {
        if bits != 4 && bits != 8 {
            return Err(LinalgError::Pq(format!("bits must be 4 or 8, got {bits}")));
        }
        if m == 0 || !dim.is_multiple_of(m) {
            return Err(LinalgError::Pq(format!("m = {m} must divide dim = {dim}")));
        }
        if bits == 4 && (!m.is_multiple_of(2) || m > 256) {
            return Err(LinalgError::Pq(format!(
                "4-bit codes need an even m <= 256, got {m}"
            )));
        }
        Ok(())
    }

    pub fn from_centroids(
        dim: usize,
        m: usize,
        bits: u8,
        centroids: Vec<f32>,
    ) -> Result<Self, LinalgError> {
        Self::validate_shape(dim, m, bits)?;
        let dsub = dim / m;
        let ksub = 1usize << bits;
        if centroids.len() != m * ksub * dsub {
            return Err(LinalgError::Pq(format!(
                "expected {} codebook floats, got {}",
                m * ksub * dsub,
                centroids.len()
            )));
        }
        let mut transposed = vec![0f32; centroids.len()];
        let mut norms = vec![0f32; m * ksub];
        for sub in 0..m {
            for code in 0..ksub {
                let centroid =
                    &centroids[(sub * ksub + code) * dsub..(sub * ksub + code + 1) * dsub];
                norms[sub * ksub + code] = dot::dot(centroid, centroid);
                for d in 0..dsub {
                    transposed[sub * ksub * dsub + d * ksub + code] = centroid[d];
                }
            }
        }
        Ok(ProductQuantizer {
            dim,
            m,
            bits,
            dsub,
            ksub,
            centroids,
            transposed,
            norms,
        })
    }

    /// Trains each sub-quantizer with k-means on its slice of `data` (in parallel).
    pub fn train(
        data: &[f32],
        dim: usize,
        m: usize,
        bits: u8,
        iterations: u32,
        seed: u64,
    ) -> Result<Self, LinalgError> {
        Self::validate_shape(dim, m, bits)?;
        let n = data.len() / dim;
        let dsub = dim / m;
        let ksub = 1usize << bits;
        if n < ksub {
            return Err(LinalgError::Pq(format!(
                "need at least {ksub} training vectors, got {n}"
            )));
        }
        let trained: Vec<Result<KMeans, LinalgError>> = par::map_range(m, |sub| {
            let mut slice = Vec::with_capacity(n * dsub);
            for row in data.chunks_exact(dim) {
                slice.extend_from_slice(&row[sub * dsub..(sub + 1) * dsub]);
            }
            let config = KMeansConfig {
                k: ksub,
                iterations,
                seed: seed.wrapping_add(sub as u64 * 0x9E37_79B9),
                max_points_per_centroid: 256,
                init: KMeansInit::Random,
            };
            KMeans::train(&slice, dsub, &config)
        });
        let mut centroids = Vec::with_capacity(m * ksub * dsub);
        for result in trained {
            centroids.extend_from_slice(&result?.centroids);
        }
        Self::from_centroids(dim, m, bits, centroids)
    }

    /// Squared norm of every codebook centroid, `m * ksub`, sub-quantizer major: what encoders on
    /// other devices need to reproduce [`Self::encode_one`]'s distances bit for bit.
    pub fn norms(&self) -> &[f32] {
        &self.norms
    }

    /// Code of one vector: one byte per sub-quantizer (also for 4 bits; see [`crate::fastscan::pack_block_codes`]).
    pub fn encode_one(&self, vector: &[f32], out: &mut [u8]) {
        debug_assert_eq!(vector.len(), self.dim);
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") {
                // SAFETY: AVX2 presence checked at run time.
                return unsafe { self.encode_one_avx2(vector, out) };
            }
        }
        self.encode_one_portable(vector, out)
    }

    /// The same code compiled for 256-bit registers (no FMA: codes equal the baseline build's).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn encode_one_avx2(&self, vector: &[f32], out: &mut [u8]) {
        self.encode_one_portable(vector, out)
    }

    #[inline(always)]
    fn encode_one_portable(&self, vector: &[f32], out: &mut [u8]) {
        let mut products = vec![0f32; self.ksub];
        for sub in 0..self.m {
            let x = &vector[sub * self.dsub..(sub + 1) * self.dsub];
            self.sub_products(sub, x, &mut products);
            let norms = &self.norms[sub * self.ksub..(sub + 1) * self.ksub];
            for (product, norm) in products.iter_mut().zip(norms) {
                *product = norm - 2.0 * *product;
            }
            out[sub] = dot::argmin(&products).0 as u8;
        }
    }

    /// Codes of `n` vectors, `n * m` bytes, in parallel.
    pub fn encode(&self, data: &[f32]) -> Vec<u8> {
        let rows_per_chunk = 1024;
        let chunks = par::map_chunks(data, rows_per_chunk * self.dim, |_, chunk| {
            let mut codes = vec![0u8; chunk.len() / self.dim * self.m];
            for (vector, code) in chunk
                .chunks_exact(self.dim)
                .zip(codes.chunks_exact_mut(self.m))
            {
                self.encode_one(vector, code);
            }
            codes
        });
        chunks.concat()
    }

    pub fn decode_one(&self, code: &[u8], out: &mut [f32]) {
        for sub in 0..self.m {
            let c = code[sub] as usize;
            let centroid = &self.centroids
                [(sub * self.ksub + c) * self.dsub..(sub * self.ksub + c + 1) * self.dsub];
            out[sub * self.dsub..(sub + 1) * self.dsub].copy_from_slice(centroid);
        }
    }

    /// Inner-product lookup table: `lut[sub * ksub + code] = <query_sub, centroid_sub_code>`.
    pub fn inner_product_table(&self, query: &[f32]) -> Vec<f32> {
        let mut lut = vec![0f32; self.m * self.ksub];
        for (sub, table) in lut.chunks_exact_mut(self.ksub).enumerate() {
            self.sub_products(sub, &query[sub * self.dsub..(sub + 1) * self.dsub], table);
        }
        lut
    }

    #[inline(always)]
    fn sub_products(&self, sub: usize, x: &[f32], out: &mut [f32]) {
        let base = sub * self.ksub * self.dsub;
        out.fill(0.0);
        for (d, &value) in x.iter().enumerate() {
            let row = &self.transposed[base + d * self.ksub..base + (d + 1) * self.ksub];
            for (o, c) in out.iter_mut().zip(row) {
                *o += value * c;
            }
        }
    }
}

/// Re-export for callers that sample training sets the same way k-means does.
pub use kmeans::sample_rows;
