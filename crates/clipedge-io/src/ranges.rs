//! Planning range reads: which nearby ranges of one object to fetch with one GET. Pure, so
//! the storage layer and the edge Worker (which has no object_store) plan alike.

use std::ops::Range;

/// Sorts and merges ranges whose gap is at most `max_gap`, never growing a merged range past
/// `max_merged` (a single range larger than that stays whole).
pub fn coalesce_ranges(ranges: &[Range<u64>], max_gap: u64, max_merged: u64) -> Vec<Range<u64>> {
    let mut sorted: Vec<Range<u64>> = ranges
        .iter()
        .filter(|range| range.start < range.end)
        .cloned()
        .collect();
    sorted.sort_by_key(|range| (range.start, range.end));
    let mut merged: Vec<Range<u64>> = Vec::with_capacity(sorted.len());
    for range in sorted {
        if let Some(last) = merged.last_mut() {
            let close_enough = range.start <= last.end.saturating_add(max_gap);
            let merged_len = range.end.max(last.end) - last.start;
            if close_enough && merged_len <= max_merged {
                last.end = last.end.max(range.end);
                continue;
            }
            if range.end <= last.end {
                // Fully inside the previous range even though merging was refused.
                continue;
            }
        }
        merged.push(range);
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalesces_close_ranges_and_keeps_far_ones_apart() {
        let merged = coalesce_ranges(&[100..200, 0..50, 60..90, 10_000..10_100], 5, 1 << 20);
        assert_eq!(merged, vec![0..50, 60..90, 100..200, 10_000..10_100]);
        let wide = coalesce_ranges(&[100..200, 0..50, 60..90, 10_000..10_100], 16, 1 << 20);
        assert_eq!(wide, vec![0..200, 10_000..10_100]);
    }

    #[test]
    fn coalescing_respects_the_size_cap() {
        let merged = coalesce_ranges(&[0..600, 600..1200], 0, 1000);
        assert_eq!(merged, vec![0..600, 600..1200]);
    }
}
