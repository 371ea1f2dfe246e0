//! Thin switch between rayon and sequential iteration, so kernels compile for wasm32 without threads.

#[cfg(feature = "parallel")]
pub(crate) fn map_chunks<T: Send + Sync, R: Send>(
    items: &[T],
    chunk_len: usize,
    f: impl Fn(usize, &[T]) -> R + Send + Sync,
) -> Vec<R> {
    use rayon::prelude::*;
    items
        .par_chunks(chunk_len.max(1))
        .enumerate()
        .map(|(index, chunk)| f(index, chunk))
        .collect()
}

#[cfg(not(feature = "parallel"))]
pub(crate) fn map_chunks<T, R>(
    items: &[T],
    chunk_len: usize,
    f: impl Fn(usize, &[T]) -> R,
) -> Vec<R> {
    items
        .chunks(chunk_len.max(1))
        .enumerate()
        .map(|(index, chunk)| f(index, chunk))
        .collect()
}

#[cfg(feature = "parallel")]
pub(crate) fn map_range<R: Send>(count: usize, f: impl Fn(usize) -> R + Send + Sync) -> Vec<R> {
    use rayon::prelude::*;
    (0..count).into_par_iter().map(f).collect()
}

#[cfg(not(feature = "parallel"))]
pub(crate) fn map_range<R>(count: usize, f: impl Fn(usize) -> R) -> Vec<R> {
    (0..count).map(f).collect()
}
