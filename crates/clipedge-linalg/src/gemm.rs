//! Blocked inner products against a set of centroids, the heavy part of k-means and list assignment.

use crate::par;

const ROWS_PER_BLOCK: usize = 256;
/// Up to this dimension (PQ sub-spaces) a GEMM's inner loop is too short to pay; a loop over
/// transposed centroids vectorizes across centroids instead.
const SMALL_DIM: usize = 16;

fn nearest_centroids_small_dim(
    data: &[f32],
    dim: usize,
    centroids: &[f32],
) -> (Vec<u32>, Vec<f32>) {
    let k = centroids.len() / dim;
    let mut transposed = vec![0f32; k * dim];
    for (index, centroid) in centroids.chunks_exact(dim).enumerate() {
        for (d, value) in centroid.iter().enumerate() {
            transposed[d * k + index] = *value;
        }
    }
    let centroid_norms: Vec<f32> = centroids
        .chunks_exact(dim)
        .map(|c| crate::dot::dot(c, c))
        .collect();
    let blocks = par::map_chunks(data, ROWS_PER_BLOCK * dim, |_, block| {
        assign_small_dim_block(block, dim, &transposed, &centroid_norms)
    });
    concat_blocks(blocks)
}

/// For each row of `data` (`n x dim`), the index of the nearest centroid (squared L2) and that distance.
/// Ties go to the lower centroid index. Runs on all rayon threads when the `parallel` feature is on.
pub fn nearest_centroids(data: &[f32], dim: usize, centroids: &[f32]) -> (Vec<u32>, Vec<f32>) {
    if dim <= SMALL_DIM {
        return nearest_centroids_small_dim(data, dim, centroids);
    }
    let k = centroids.len() / dim;
    let centroid_norms: Vec<f32> = centroids
        .chunks_exact(dim)
        .map(|c| crate::dot::dot(c, c))
        .collect();
    let blocks = par::map_chunks(data, ROWS_PER_BLOCK * dim, |_, block| {
        let rows = block.len() / dim;
        let mut products = vec![0f32; rows * k];
        inner_products(block, rows, dim, centroids, k, &mut products);
        let mut labels = Vec::with_capacity(rows);
        let mut distances = Vec::with_capacity(rows);
        for (row_vector, row_products) in block.chunks_exact(dim).zip(products.chunks_exact_mut(k))
        {
            for (product, norm) in row_products.iter_mut().zip(&centroid_norms) {
                *product = norm - 2.0 * *product;
            }
            let (label, distance) = crate::dot::argmin(row_products);
            labels.push(label as u32);
            distances.push((distance + crate::dot::dot(row_vector, row_vector)).max(0.0));
        }
        (labels, distances)
    });
    concat_blocks(blocks)
}

/// `out[i * k + j] = <data_i, centroid_j>` with one single-threaded SGEMM call.
pub fn inner_products(
    data: &[f32],
    rows: usize,
    dim: usize,
    centroids: &[f32],
    k: usize,
    out: &mut [f32],
) {
    assert_eq!(data.len(), rows * dim);
    assert_eq!(centroids.len(), k * dim);
    assert_eq!(out.len(), rows * k);
    if rows == 0 || k == 0 {
        return;
    }
    // SAFETY: the asserts above bound every access matrixmultiply makes through these
    // pointers and strides: A is rows x dim row-major, B is the transpose of the
    // k x dim centroid matrix (so its row stride is 1 and column stride dim), C is rows x k.
    unsafe {
        matrixmultiply::sgemm(
            rows,
            dim,
            k,
            1.0,
            data.as_ptr(),
            dim as isize,
            1,
            centroids.as_ptr(),
            1,
            dim as isize,
            0.0,
            out.as_mut_ptr(),
            k as isize,
            1,
        );
    }
}

/// For each row of `data`, the centroid with the highest inner product (ties to the lower
/// index). Used to file vectors into lists under the same criterion queries probe them by.
pub fn best_inner_product_centroids(data: &[f32], dim: usize, centroids: &[f32]) -> Vec<u32> {
    let k = centroids.len() / dim;
    let blocks = par::map_chunks(data, ROWS_PER_BLOCK * dim, |_, block| {
        let rows = block.len() / dim;
        let mut products = vec![0f32; rows * k];
        inner_products(block, rows, dim, centroids, k, &mut products);
        products
            .chunks_exact_mut(k)
            .map(|row_products| {
                for product in row_products.iter_mut() {
                    *product = -*product;
                }
                crate::dot::argmin(row_products).0 as u32
            })
            .collect::<Vec<u32>>()
    });
    blocks.concat()
}

/// Nearest centroids of one block of short rows. On x86_64 with AVX2 the same code is compiled
/// for 256-bit registers (no FMA, so results equal the baseline build's).
fn assign_small_dim_block(
    block: &[f32],
    dim: usize,
    transposed: &[f32],
    centroid_norms: &[f32],
) -> (Vec<u32>, Vec<f32>) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 presence checked at run time.
            return unsafe { assign_small_dim_block_avx2(block, dim, transposed, centroid_norms) };
        }
    }
    assign_small_dim_block_portable(block, dim, transposed, centroid_norms)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn assign_small_dim_block_avx2(
    block: &[f32],
    dim: usize,
    transposed: &[f32],
    centroid_norms: &[f32],
) -> (Vec<u32>, Vec<f32>) {
    assign_small_dim_block_portable(block, dim, transposed, centroid_norms)
}

#[inline(always)]
fn assign_small_dim_block_portable(
    block: &[f32],
    dim: usize,
    transposed: &[f32],
    centroid_norms: &[f32],
) -> (Vec<u32>, Vec<f32>) {
    let k = centroid_norms.len();
    let mut products = vec![0f32; k];
    let mut labels = Vec::with_capacity(block.len() / dim);
    let mut distances = Vec::with_capacity(block.len() / dim);
    for row in block.chunks_exact(dim) {
        products.fill(0.0);
        for (d, &value) in row.iter().enumerate() {
            for (product, c) in products.iter_mut().zip(&transposed[d * k..(d + 1) * k]) {
                *product += value * c;
            }
        }
        for (product, norm) in products.iter_mut().zip(centroid_norms) {
            *product = norm - 2.0 * *product;
        }
        let (label, distance) = crate::dot::argmin(&products);
        labels.push(label as u32);
        distances.push((distance + crate::dot::dot(row, row)).max(0.0));
    }
    (labels, distances)
}

/// Joins per-block (labels, distances) in block order.
fn concat_blocks(blocks: Vec<(Vec<u32>, Vec<f32>)>) -> (Vec<u32>, Vec<f32>) {
    let rows = blocks.iter().map(|(labels, _)| labels.len()).sum();
    let mut labels = Vec::with_capacity(rows);
    let mut distances = Vec::with_capacity(rows);
    for (block_labels, block_distances) in blocks {
        labels.extend(block_labels);
        distances.extend(block_distances);
    }
    (labels, distances)
}
