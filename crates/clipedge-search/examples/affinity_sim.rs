//! How much the scanners' warm list caches hold, with and without cache affinity: replays a
//! Zipf(1.0) stream of queries through the Worker's real planner (`plan::plan_calls`) against
//! 1, 3 and 6 scanner functions, each modelled as one warm instance with an LRU list cache of a
//! fixed byte budget, and counts list-cache hits, GETs (misses) and calls per query. The
//! baseline sends the same calls round-robin, as the Worker did before affinity.
//!
//! A simulation of the planner's effect only: one instance per function (a busy function has
//! several, each with its own cache, which affinity helps even more), the lists a call scans
//! taken as the first `nprobe` of its groups, every list the same size.
//!
//! `cargo run --release -p clipedge-worker --example affinity_sim [QUERIES]`

use std::num::NonZeroUsize;

use clipedge_format::{GroupEntry, RoutingTable};
use clipedge_search::plan::{plan_batches, plan_calls, Call};
use lru::LruCache;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Zipf};

const GROUPS: u32 = 256;
const LISTS_PER_GROUP: u32 = 64;
/// Distinct queries; their popularity is Zipf(1.0) by rank.
const DISTINCT_QUERIES: usize = 5_000;
const GROUPS_PER_QUERY: usize = 6;
const NPROBE: usize = 64;
/// One instance's list cache, in lists (a 10M-vector index with 16,384 lists of ~610 vectors
/// at 4-bit m 64 plus int8 rerank copies is ~0.36 MiB a list: ~2,800 lists in a 1 GiB cache).
const CACHE_LISTS: usize = 2_800;

fn routing() -> RoutingTable {
    let groups = (0..GROUPS)
        .map(|group| GroupEntry {
            first_list: group * LISTS_PER_GROUP,
            list_count: LISTS_PER_GROUP,
            offset: 0,
            length: 0,
            crc32: 0,
            radius: 0.0,
        })
        .collect();
    RoutingTable {
        dim: 1,
        nlist: GROUPS * LISTS_PER_GROUP,
        centroids: vec![0.0; GROUPS as usize],
        groups,
    }
}

/// Each distinct query probes groups near a popular "topic": text queries cluster.
fn query_groups(rng: &mut ChaCha8Rng) -> Vec<Vec<u32>> {
    (0..DISTINCT_QUERIES)
        .map(|_| {
            let topic = (rng.random::<f64>().powi(2) * GROUPS as f64) as u32;
            let mut groups: Vec<u32> = Vec::new();
            while groups.len() < GROUPS_PER_QUERY {
                let offset = rng.random_range(-4i64..=4);
                let group = (topic as i64 + offset).rem_euclid(GROUPS as i64) as u32;
                if !groups.contains(&group) {
                    groups.push(group);
                }
            }
            groups
        })
        .collect()
}

struct Outcome {
    hits: u64,
    gets: u64,
    calls: u64,
}

fn replay(queries: usize, functions: usize, affinity: bool) -> Outcome {
    let table = routing();
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let pool = query_groups(&mut rng);
    let zipf = Zipf::new(pool.len() as f64, 1.0).expect("a valid Zipf(1.0)");
    let urls: Vec<String> = (0..functions)
        .map(|index| format!("https://scanner-{index}.example/scan"))
        .collect();
    let mut caches: Vec<LruCache<u32, ()>> = (0..functions)
        .map(|_| LruCache::new(NonZeroUsize::new(CACHE_LISTS).unwrap()))
        .collect();
    let mut outcome = Outcome {
        hits: 0,
        gets: 0,
        calls: 0,
    };
    for _ in 0..queries {
        // Zipf draws ranks 1..=n; rank 1 is the most popular query.
        let query = zipf.sample(&mut rng) as usize - 1;
        let calls: Vec<Call> = if affinity {
            plan_calls(&table, &pool[query], NPROBE, 6, 8, &urls)
        } else {
            // Before affinity: balanced batches, sent round-robin.
            plan_batches(&table, &pool[query], NPROBE, 6, 8)
                .into_iter()
                .enumerate()
                .map(|(index, batch)| Call {
                    batch,
                    scanner: index % functions,
                    retry_scanner: (index + 1) % functions,
                })
                .collect()
        };
        for call in &calls {
            let scanner = call.scanner;
            outcome.calls += 1;
            let groups_lists = call.batch.group_ids.iter().flat_map(|&group| {
                let first = group * LISTS_PER_GROUP;
                first..first + LISTS_PER_GROUP
            });
            for list in groups_lists.take(call.batch.nprobe as usize) {
                if caches[scanner].get(&list).is_some() {
                    outcome.hits += 1;
                } else {
                    outcome.gets += 1;
                    caches[scanner].put(list, ());
                }
            }
        }
    }
    outcome
}

fn main() {
    let queries: usize = std::env::args()
        .nth(1)
        .and_then(|value| value.parse().ok())
        .unwrap_or(10_000);
    println!(
        "{queries} queries, Zipf(1.0) over {DISTINCT_QUERIES} distinct; {GROUPS} groups × \
         {LISTS_PER_GROUP} lists, {GROUPS_PER_QUERY} groups and nprobe {NPROBE} a query; one \
         warm instance per function caching {CACHE_LISTS} lists"
    );
    println!("functions  routing      hit ratio  GETs/query  calls/query");
    let mut rows = Vec::new();
    for functions in [1, 3, 6] {
        for affinity in [false, true] {
            if functions == 1 && affinity {
                continue;
            }
            let outcome = replay(queries, functions, affinity);
            let scanned = (outcome.hits + outcome.gets).max(1) as f64;
            let routing = if affinity {
                "rendezvous"
            } else {
                "round-robin"
            };
            let hit_ratio = outcome.hits as f64 / scanned;
            let gets = outcome.gets as f64 / queries as f64;
            let calls = outcome.calls as f64 / queries as f64;
            println!(
                "{functions:>9}  {routing:<11}  {hit_ratio:>9.3}  {gets:>10.2}  {calls:>11.2}"
            );
            rows.push(format!(
                "{{\"functions\":{functions},\"routing\":\"{routing}\",\"hit_ratio\":{hit_ratio:.4},\"gets_per_query\":{gets:.3},\"calls_per_query\":{calls:.3}}}"
            ));
        }
    }
    println!("[{}]", rows.join(","));
}
