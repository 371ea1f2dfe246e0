//! What each tokenizer costs to load and hold, counted by a global allocator: live heap bytes
//! after loading (resident), the peak above the starting point while loading (transient), load
//! time and the time of a 10-word query. The compact tokenizer against the HF one on the same
//! package. One test in this binary, so no other thread allocates meanwhile. For timings worth
//! quoting run it in release: `cargo test --release -p clipedge-text --test
//! compact_tokenizer_memory -- --nocapture`.
#![cfg(all(feature = "hf-tokenizer", feature = "pack"))]

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use clipedge_text::compact::CompactTokenizer;
use clipedge_text::TextTokenizer;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(size: usize) {
    let live = LIVE.fetch_add(size, Ordering::SeqCst) + size;
    PEAK.fetch_max(live, Ordering::SeqCst);
}

// SAFETY: every call is forwarded to the system allocator unchanged; only sizes are counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() {
            grew(layout.size());
        }
        pointer
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let pointer = unsafe { System.alloc_zeroed(layout) };
        if !pointer.is_null() {
            grew(layout.size());
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        unsafe { System.dealloc(pointer, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new_pointer = unsafe { System.realloc(pointer, layout, new_size) };
        if !new_pointer.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
            grew(new_size);
        }
        new_pointer
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const QUERY: &str = "a photo of a brown dog running on the beach at sunset";

struct Cost {
    resident: usize,
    transient: usize,
    load_ms: f64,
    query_us: f64,
}

/// Loads with `load` (which gets the file bytes, read before counting starts), then times
/// `tokenize` on the query.
fn measure<T>(
    file: &[u8],
    load: impl Fn(Vec<u8>) -> T,
    tokenize: impl Fn(&T) -> usize,
) -> (Cost, T) {
    let bytes = file.to_vec();
    let start_live = LIVE.load(Ordering::SeqCst) - bytes.capacity();
    PEAK.store(LIVE.load(Ordering::SeqCst), Ordering::SeqCst);
    let started = Instant::now();
    let loaded = load(bytes);
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    let resident = LIVE.load(Ordering::SeqCst) - start_live;
    let transient = PEAK.load(Ordering::SeqCst) - start_live - resident;
    let runs = 2_000;
    assert!(tokenize(&loaded) > 0);
    let started = Instant::now();
    for _ in 0..runs {
        std::hint::black_box(tokenize(&loaded));
    }
    let query_us = started.elapsed().as_secs_f64() * 1e6 / runs as f64;
    (
        Cost {
            resident,
            transient,
            load_ms,
            query_us,
        },
        loaded,
    )
}

fn print(package: &str, what: &str, cost: &Cost) {
    println!(
        "{package:13} {what:8} resident {:>10} B ({:6.2} MiB)  load transient {:>10} B ({:6.2} MiB)  load {:8.2} ms  10-word query {:7.2} us",
        cost.resident,
        cost.resident as f64 / 1048576.0,
        cost.transient,
        cost.transient as f64 / 1048576.0,
        cost.load_ms,
        cost.query_us
    );
}

#[test]
fn compact_tokenizer_costs_less_than_hf() {
    for (package, max_tokens) in [("tiny-clip", 77), ("minilm-l6-v2", 256)] {
        let directory = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../models")
            .join(package);
        let packed = std::fs::read(directory.join("tokenizer.bin")).unwrap();
        let json = std::fs::read(directory.join("tokenizer.json")).unwrap();

        let (compact_cost, compact) = measure(
            &packed,
            |bytes| CompactTokenizer::from_bytes(bytes, max_tokens).unwrap(),
            |tokenizer| tokenizer.tokenize(QUERY).unwrap().ids.len(),
        );
        print(package, "compact", &compact_cost);
        println!(
            "{package:13} compact  resident_bytes() {} B, file {} B",
            compact.resident_bytes(),
            packed.len()
        );
        let (hf_cost, hf) = measure(
            &json,
            |bytes| TextTokenizer::from_bytes(&bytes, max_tokens).unwrap(),
            |tokenizer| tokenizer.tokenize(QUERY).unwrap().ids.len(),
        );
        print(package, "hf", &hf_cost);
        assert_eq!(
            compact.tokenize(QUERY).unwrap(),
            hf.tokenize(QUERY).unwrap()
        );

        // resident_bytes() is the tokenizer's own account: it must agree with the allocator.
        let counted = compact_cost.resident as f64;
        let reported = compact.resident_bytes() as f64;
        assert!(
            (counted - reported).abs() <= 0.01 * counted + 4096.0,
            "resident_bytes() {reported} vs counted {counted}"
        );
        assert!(compact_cost.resident <= 4 << 20, "over the 4 MiB budget");
        assert!(
            compact_cost.transient <= 1 << 20,
            "large transient while loading"
        );
        assert!(compact_cost.resident * 4 < hf_cost.resident);
    }
}
