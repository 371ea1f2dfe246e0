//! The stable side of the fuzzing (`docs/fuzzing.md`): every committed corpus input and every
//! crash found so far replayed through its target's check, the seeds checked, and a short
//! deterministic mutation pass over the seeds and corpora. Part of `cargo test`; no nightly.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clipedge_fuzz::mutate::{mutate, Rng};
use clipedge_fuzz::{alloc_cap, seeds, Target, TARGETS};

#[global_allocator]
static ALLOCATOR: clipedge_fuzz::CappedAllocator = clipedge_fuzz::CappedAllocator;

/// Mutants per target per run: a few seconds for all targets in a debug build.
const MUTANTS_PER_TARGET: u64 = 3_000;
/// One input taking this long is a hang (the slowest take milliseconds).
const HANG: Duration = Duration::from_secs(2);

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

fn run(target: Target, input: &[u8], origin: &dyn std::fmt::Display) {
    alloc_cap::set_context(format!("{} on {origin}", target.name));
    let start = Instant::now();
    let outcome = std::panic::catch_unwind(|| (target.check)(input));
    if let Err(panic) = outcome {
        panic!(
            "{} failed on {origin}: {}",
            target.name,
            panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(non-string panic)")
        );
    }
    let took = start.elapsed();
    assert!(took < HANG, "{} took {took:?} on {origin}", target.name);
}

#[test]
fn the_allocation_cap_is_installed_and_catches_large_allocations() {
    assert!(alloc_cap::is_installed());
    let (_, largest) = alloc_cap::largest_allocation(|| vec![0u8; 1 << 20]);
    assert!(largest >= 1 << 20);
    let caught = std::panic::catch_unwind(|| {
        alloc_cap::within_budget("test", 10, alloc_cap::Budget::PROPORTIONAL, || {
            vec![0u8; 1 << 20]
        })
    });
    assert!(caught.is_err(), "1 MiB for 10 bytes passed the budget");
}

#[test]
fn every_target_has_a_corpus_and_seeds() {
    for target in TARGETS {
        let corpus = files_in(&fuzz_dir().join("corpus").join(target.name));
        assert!(!corpus.is_empty(), "fuzz/corpus/{} is empty", target.name);
        assert!(
            !seeds::seeds(target.name).is_empty(),
            "{} has no seeds",
            target.name
        );
        let binary = fuzz_dir()
            .join("fuzz_targets")
            .join(format!("{}.rs", target.name));
        assert!(binary.is_file(), "{} has no cargo-fuzz target", target.name);
    }
}

#[test]
fn the_corpora_and_the_crashes_replay_cleanly() {
    let mut replayed = 0;
    for target in TARGETS {
        for kind in ["corpus", "regressions"] {
            for path in files_in(&fuzz_dir().join(kind).join(target.name)) {
                let input = std::fs::read(&path).expect("corpus file reads");
                run(*target, &input, &path.display());
                replayed += 1;
            }
        }
    }
    println!("replayed {replayed} inputs");
}

#[test]
fn the_seeds_are_valid_encodings() {
    for target in TARGETS {
        for (name, input) in seeds::seeds(target.name) {
            run(*target, &input, &format!("seed {name}"));
        }
    }
}

#[test]
fn mutated_seeds_and_corpora_never_break_a_decoder() {
    // Fixed seeds: the same mutants every run, so a failure reproduces. CLIPEDGE_FUZZ_MUTANTS
    // runs a longer pass locally.
    let mutants = std::env::var("CLIPEDGE_FUZZ_MUTANTS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(MUTANTS_PER_TARGET);
    for (index, target) in TARGETS.iter().enumerate() {
        let mut inputs: Vec<Vec<u8>> = seeds::seeds(target.name)
            .into_iter()
            .map(|(_, bytes)| bytes)
            .collect();
        for path in files_in(&fuzz_dir().join("corpus").join(target.name)) {
            inputs.push(std::fs::read(path).expect("corpus file reads"));
        }
        let mut rng = Rng::new(0x5eed ^ index as u64);
        for round in 0..mutants {
            let parent = &inputs[rng.below(inputs.len())];
            let mutant = mutate(parent, &mut rng);
            let origin = format!("mutant {round} ({} bytes: {mutant:02x?})", mutant.len());
            run(*target, &mutant, &origin);
        }
    }
}
