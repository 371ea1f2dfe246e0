//! TopK against a full sort (score descending, key ascending).

use clipedge_linalg::{Scored, TopK};
use rand::seq::SliceRandom;
use rand::Rng;

use crate::common::seeded;

fn full_sort(items: &[(f32, u64)], k: usize) -> Vec<Scored> {
    let mut kept: Vec<Scored> = items
        .iter()
        .filter(|(score, _)| !score.is_nan())
        .map(|&(score, key)| Scored { score, key })
        .collect();
    kept.sort_by(|a, b| {
        b.score
            .partial_cmp(&a.score)
            .unwrap()
            .then(a.key.cmp(&b.key))
    });
    kept.truncate(k);
    kept
}

fn select(items: &[(f32, u64)], k: usize) -> Vec<Scored> {
    let mut top = TopK::new(k);
    for &(score, key) in items {
        top.push(score, key);
    }
    top.into_sorted()
}

#[test]
fn matches_full_sort_with_many_ties() {
    let mut rng = seeded(41);
    for trial in 0..300 {
        let n = rng.random_range(0..400);
        // Few distinct scores force tie-breaks; shuffled keys make arrival order unrelated to key order.
        let distinct = rng.random_range(1..12);
        let mut keys: Vec<u64> = (0..n as u64).map(|key| key * 3 + 7).collect();
        keys.shuffle(&mut rng);
        let items: Vec<(f32, u64)> = keys
            .iter()
            .map(|&key| (rng.random_range(0..distinct) as f32 * 0.25 - 1.0, key))
            .collect();
        let k = rng.random_range(1..60);
        assert_eq!(
            select(&items, k),
            full_sort(&items, k),
            "trial {trial}, n {n}, k {k}"
        );
    }
}

#[test]
fn matches_full_sort_on_continuous_scores() {
    let mut rng = seeded(42);
    let items: Vec<(f32, u64)> = (0..5000).map(|key| (rng.random::<f32>(), key)).collect();
    for k in [1, 2, 10, 100, 4999, 5000] {
        assert_eq!(select(&items, k), full_sort(&items, k), "k = {k}");
    }
}

#[test]
fn equal_scores_keep_the_lowest_keys_whatever_the_arrival_order() {
    let mut top = TopK::new(3);
    for key in [9u64, 4, 8, 1, 7, 2, 6] {
        top.push(0.5, key);
    }
    let keys: Vec<u64> = top.into_sorted().iter().map(|item| item.key).collect();
    assert_eq!(keys, vec![1, 2, 4]);
}

#[test]
fn zero_capacity_keeps_nothing() {
    let mut top = TopK::new(0);
    for key in 0..100 {
        top.push(key as f32, key);
    }
    assert_eq!(top.capacity(), 0);
    assert!(top.is_empty());
    assert!(top.into_sorted().is_empty());
}

#[test]
fn zero_capacity_threshold_rejects_every_score() {
    // The scans read threshold() before pushing; with k = 0 nothing can ever enter.
    let top = TopK::new(0);
    assert_eq!(top.threshold(), f32::INFINITY);
}

#[test]
fn capacity_above_input_size_returns_everything_sorted() {
    let items = [(0.1f32, 5u64), (0.9, 2), (0.1, 1), (-3.0, 0), (0.9, 3)];
    let selected = select(&items, 50);
    assert_eq!(selected, full_sort(&items, 50));
    assert_eq!(selected.len(), items.len());
}

#[test]
fn nan_scores_are_ignored() {
    let mut rng = seeded(43);
    let items: Vec<(f32, u64)> = (0..500)
        .map(|key| {
            let score = if key % 3 == 0 {
                f32::NAN
            } else {
                rng.random::<f32>()
            };
            (score, key)
        })
        .collect();
    for k in [1, 10, 400] {
        let selected = select(&items, k);
        assert!(selected.iter().all(|item| !item.score.is_nan()));
        assert_eq!(selected, full_sort(&items, k), "k = {k}");
    }
    // A NaN must not count towards filling the heap either.
    let mut top = TopK::new(2);
    top.push(f32::NAN, 0);
    top.push(f32::NAN, 1);
    assert_eq!(top.len(), 0);
    assert_eq!(top.threshold(), f32::NEG_INFINITY);
}

#[test]
fn infinite_scores_are_ordinary_extremes() {
    let items = [
        (f32::NEG_INFINITY, 0u64),
        (f32::INFINITY, 5),
        (1.0, 1),
        (f32::INFINITY, 2),
    ];
    assert_eq!(select(&items, 3), full_sort(&items, 3));
}

#[test]
fn threshold_is_the_kth_best_score_once_full() {
    let mut top = TopK::new(3);
    assert_eq!(top.threshold(), f32::NEG_INFINITY);
    for (score, key) in [(0.3, 0), (0.7, 1)] {
        top.push(score, key);
        assert_eq!(top.threshold(), f32::NEG_INFINITY);
    }
    top.push(0.5, 2);
    assert_eq!(top.threshold(), 0.3);
    top.push(0.9, 3);
    assert_eq!(top.threshold(), 0.5);
    top.push(0.1, 4);
    assert_eq!(top.threshold(), 0.5);
    assert_eq!(top.len(), 3);
}

#[test]
fn extend_equals_pushing_one_by_one() {
    let mut rng = seeded(44);
    let items: Vec<Scored> = (0..1000)
        .map(|key| Scored {
            score: rng.random_range(0..20) as f32,
            key,
        })
        .collect();
    let mut extended = TopK::new(37);
    extended.extend(items.iter().copied());
    let pairs: Vec<(f32, u64)> = items.iter().map(|item| (item.score, item.key)).collect();
    assert_eq!(extended.into_sorted(), select(&pairs, 37));
}
