//! Spreading a query's routing groups over at most six scanner calls, and folding the answers
//! (with their failures) back into one candidate set. No I/O: the front's [`crate::Leaves`]
//! makes the calls.

use std::collections::{BTreeSet, HashMap};

use clipedge_format::{Hit, RoutingTable};
use clipedge_protocol::{ScanResponse, ScanStatus, ScanTargets};

/// The groups one scanner call scans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// In routing rank order.
    pub group_ids: Vec<u32>,
    /// Fine lists the scanner scans among the groups' lists.
    pub nprobe: u32,
    /// Every list of the groups: what a failed call fails.
    pub lists: Vec<u32>,
}

impl Batch {
    pub fn targets(&self) -> ScanTargets {
        ScanTargets::Groups {
            group_ids: self.group_ids.clone(),
            nprobe: self.nprobe,
        }
    }
}

/// The lists of `group`, from the routing table the edge holds.
pub fn group_lists(routing: &RoutingTable, group: u32) -> std::ops::Range<u32> {
    match routing.groups.get(group as usize) {
        Some(entry) => entry.first_list..entry.first_list + entry.list_count,
        None => 0..0,
    }
}

/// Splits the chosen `groups` (best first) into scanner calls.
///
/// - Calls: one per `min_lists_per_call` lists the query scans, at most `max_calls` (a Worker
///   holds 6 connections at once) and at most one per group.
/// - Groups go to the call with the fewest lists so far (largest groups first), so calls finish
///   together.
/// - Each call scans the best `min(its lists, nprobe, ⌈margin · nprobe · its share of the
///   lists⌉)` lists of its groups, `margin` = [`CALL_SHARE_MARGIN`]: the calls together scan
///   about `nprobe` lists, as the in-process reader does (all of them for a flat index, one
///   list per group, where the chosen groups are the `nprobe` lists).
pub fn plan_batches(
    routing: &RoutingTable,
    groups: &[u32],
    nprobe: usize,
    max_calls: usize,
    min_lists_per_call: usize,
) -> Vec<Batch> {
    plan_batches_with_margin(
        routing,
        groups,
        nprobe,
        max_calls,
        min_lists_per_call,
        CALL_SHARE_MARGIN,
    )
}

/// How many times its share of `nprobe` a call may scan. 1: a call's share of the query's best
/// lists is not its share of the lists, so the union scanned is not exactly the reader's best
/// `nprobe`, yet each call reranks its own `k · rerank` candidates, which gains more than the
/// lists a call misses lose. Measured on the 10M set (`clipedge search --edge-calls 6
/// --min-lists-per-call 4`, 1,000 queries, rerank 50): recall@10 0.9397 with 36.9 lists a
/// query at nprobe 32 (in-process reader 0.9406 with 32), 0.952 with 66 at nprobe 64 (reader
/// 0.9435); a margin of 2 scanned 68.8 and 132 lists for 0.9492 and 0.9548. At rerank 10 the
/// margin changed nothing but the lists scanned (README "Scale and cost").
pub const CALL_SHARE_MARGIN: f64 = 1.0;

/// [`plan_batches`] with another share margin than [`CALL_SHARE_MARGIN`] (for measuring what
/// the margin costs in recall: `clipedge search --edge-calls`).
pub fn plan_batches_with_margin(
    routing: &RoutingTable,
    groups: &[u32],
    nprobe: usize,
    max_calls: usize,
    min_lists_per_call: usize,
    margin: f64,
) -> Vec<Batch> {
    if groups.is_empty() {
        return Vec::new();
    }
    let total_lists = lists_of(routing, groups).max(1);
    let calls = call_count(
        total_lists,
        groups.len(),
        nprobe,
        max_calls,
        min_lists_per_call,
    );
    split_into_calls(routing, groups, nprobe, total_lists, calls, margin)
}

fn lists_of(routing: &RoutingTable, groups: &[u32]) -> usize {
    groups
        .iter()
        .map(|group| group_lists(routing, *group).len())
        .sum()
}

/// One call per `min_lists_per_call` scanned lists, at most `max_calls` and one per group.
fn call_count(
    total_lists: usize,
    groups: usize,
    nprobe: usize,
    max_calls: usize,
    min_lists_per_call: usize,
) -> usize {
    let scanned_lists = nprobe.min(total_lists).max(1);
    scanned_lists
        .div_ceil(min_lists_per_call.max(1))
        .clamp(1, max_calls.max(1))
        .min(groups.max(1))
}

/// [`plan_batches`]'s split of `groups` into `calls` batches; `total_lists` counts the lists of
/// every group the query probes (which may be more than `groups`), so each call's share of
/// `nprobe` is its share of the whole query.
fn split_into_calls(
    routing: &RoutingTable,
    groups: &[u32],
    nprobe: usize,
    total_lists: usize,
    calls: usize,
    margin: f64,
) -> Vec<Batch> {
    let sizes: Vec<usize> = groups
        .iter()
        .map(|group| group_lists(routing, *group).len())
        .collect();
    let calls = calls.clamp(1, groups.len().max(1));
    let mut order: Vec<usize> = (0..groups.len()).collect();
    // Stable: equal sizes keep their rank order.
    order.sort_by_key(|&index| std::cmp::Reverse(sizes[index]));
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); calls];
    let mut loads = vec![0usize; calls];
    for index in order {
        let lightest = (0..calls)
            .min_by_key(|&call| (loads[call], call))
            .unwrap_or(0);
        members[lightest].push(index);
        loads[lightest] += sizes[index];
    }

    members
        .into_iter()
        .zip(loads)
        .filter(|(indices, _)| !indices.is_empty())
        .map(|(mut indices, load)| {
            indices.sort_unstable();
            let group_ids: Vec<u32> = indices.iter().map(|&index| groups[index]).collect();
            let lists: Vec<u32> = group_ids
                .iter()
                .flat_map(|group| group_lists(routing, *group))
                .collect();
            let share = (margin * (nprobe * load) as f64 / total_lists as f64).ceil() as usize;
            let nprobe = load.min(nprobe).min(share).max(1);
            Batch {
                group_ids,
                nprobe: nprobe as u32,
                lists,
            }
        })
        .collect()
}

/// A scanner call: its batch, the scanner function it goes to and the one a retry goes to
/// (indices into `CLIPEDGE_SCANNER_URLS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub batch: Batch,
    pub scanner: usize,
    pub retry_scanner: usize,
}

/// A stable 64-bit hash of a scanner URL (FNV-1a): the same on every isolate and every target.
fn url_hash(url: &str) -> u64 {
    url.bytes().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
        (hash ^ byte as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The rendezvous (highest random weight) score of `group` on a scanner: a splitmix64 finish
/// of the pair, so adding or removing one function moves only the groups that it wins or held.
fn rendezvous_score(group: u32, scanner_hash: u64) -> u64 {
    let mut z = scanner_hash ^ (group as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `candidates` (scanner indices) ordered by their rendezvous score for `group`, best first.
fn rendezvous_order(group: u32, hashes: &[u64], candidates: &[usize]) -> Vec<usize> {
    let mut order = candidates.to_vec();
    order.sort_by_key(|&scanner| {
        (
            std::cmp::Reverse(rendezvous_score(group, hashes[scanner])),
            scanner,
        )
    });
    order
}

/// [`plan_batches`] with cache affinity over several scanner functions: each routing group goes
/// to the function that wins it by rendezvous hashing of (group, URL), so each function's warm
/// cache holds its own share of the lists instead of every function caching everything, and
/// its retry goes to the group's second choice.
///
/// A query whose groups prefer more functions than it has calls (small queries, or more than
/// six functions) keeps the functions that win the most lists; its other groups go to their
/// best function among those. Calls are shared among the functions in proportion to their
/// lists, at least one each, and each call scans its share of `nprobe` as in [`plan_batches`].
pub fn plan_calls(
    routing: &RoutingTable,
    groups: &[u32],
    nprobe: usize,
    max_calls: usize,
    min_lists_per_call: usize,
    scanner_urls: &[String],
) -> Vec<Call> {
    plan_calls_with_margin(
        routing,
        groups,
        nprobe,
        max_calls,
        min_lists_per_call,
        scanner_urls,
        CALL_SHARE_MARGIN,
    )
}

/// [`plan_calls`] with another share margin than [`CALL_SHARE_MARGIN`].
pub fn plan_calls_with_margin(
    routing: &RoutingTable,
    groups: &[u32],
    nprobe: usize,
    max_calls: usize,
    min_lists_per_call: usize,
    scanner_urls: &[String],
    margin: f64,
) -> Vec<Call> {
    if scanner_urls.len() <= 1 {
        return plan_batches_with_margin(
            routing,
            groups,
            nprobe,
            max_calls,
            min_lists_per_call,
            margin,
        )
        .into_iter()
        .map(|batch| Call {
            batch,
            scanner: 0,
            retry_scanner: 0,
        })
        .collect();
    }
    if groups.is_empty() {
        return Vec::new();
    }
    let hashes: Vec<u64> = scanner_urls.iter().map(|url| url_hash(url)).collect();
    let everyone: Vec<usize> = (0..scanner_urls.len()).collect();
    let total_lists = lists_of(routing, groups).max(1);
    let calls = call_count(
        total_lists,
        groups.len(),
        nprobe,
        max_calls,
        min_lists_per_call,
    );

    // Lists each function would win, to choose which functions this query calls.
    let mut won = vec![0usize; scanner_urls.len()];
    for &group in groups {
        won[rendezvous_order(group, &hashes, &everyone)[0]] += group_lists(routing, group).len();
    }
    let mut called: Vec<usize> = everyone.iter().copied().filter(|&s| won[s] > 0).collect();
    called.sort_by_key(|&scanner| (std::cmp::Reverse(won[scanner]), scanner));
    called.truncate(calls);
    called.sort_unstable();

    // Each group (in rank order) to its best called function.
    let mut parts: Vec<Vec<u32>> = vec![Vec::new(); scanner_urls.len()];
    for &group in groups {
        parts[rendezvous_order(group, &hashes, &called)[0]].push(group);
    }
    let part_lists: Vec<usize> = called
        .iter()
        .map(|&scanner| lists_of(routing, &parts[scanner]))
        .collect();

    // Calls per function: one each, the rest by largest share of lists.
    let mut part_calls = vec![1usize; called.len()];
    for _ in called.len()..calls {
        let neediest = (0..called.len())
            .max_by_key(|&part| {
                // Its lists per call so far (integer, scaled), the most loaded first.
                (
                    part_lists[part] * 1_000 / part_calls[part],
                    std::cmp::Reverse(part),
                )
            })
            .unwrap_or(0);
        part_calls[neediest] += 1;
    }

    called
        .iter()
        .zip(part_calls)
        .flat_map(|(&scanner, part_calls)| {
            let part = &parts[scanner];
            let retry_scanner = rendezvous_order(part[0], &hashes, &everyone)
                .into_iter()
                .find(|&other| other != scanner)
                .unwrap_or(scanner);
            split_into_calls(routing, part, nprobe, total_lists, part_calls, margin)
                .into_iter()
                .map(move |batch| Call {
                    batch,
                    scanner,
                    retry_scanner,
                })
        })
        .collect()
}

/// Whether a failed list is worth sending again: storage trouble and deadlines pass, missing
/// or corrupt objects do not.
pub fn is_retryable(status: ScanStatus) -> bool {
    matches!(status, ScanStatus::TimedOut | ScanStatus::Unavailable)
}

/// What a second call should scan after a first answer with failures: groups whose blob could
/// not be read, and lists that failed for a retryable reason.
pub fn retry_targets(batch: &Batch, response: &ScanResponse) -> Vec<ScanTargets> {
    let mut targets = Vec::new();
    let failed_groups: Vec<u32> = response
        .groups
        .iter()
        .filter(|group| is_retryable(group.status))
        .map(|group| group.group_id)
        .collect();
    if !failed_groups.is_empty() {
        targets.push(ScanTargets::Groups {
            group_ids: failed_groups,
            nprobe: batch.nprobe,
        });
    }
    let failed_lists: Vec<u32> = response
        .lists
        .iter()
        .filter(|list| is_retryable(list.status))
        .map(|list| list.list_id)
        .collect();
    if !failed_lists.is_empty() {
        targets.push(ScanTargets::Lists {
            list_ids: failed_lists,
        });
    }
    targets
}

/// Everything the scanner calls of one query brought back.
#[derive(Debug, Default)]
pub struct FanOut {
    pub candidates: Vec<Hit>,
    /// Catalog records (JSON) the scanners returned with their candidates, by metadata
    /// reference: the root reads from the catalog only the records missing here.
    pub records: HashMap<u64, String>,
    failed_groups: BTreeSet<u32>,
    scanned_groups: BTreeSet<u32>,
    failed_lists: BTreeSet<u32>,
    scanned_lists: BTreeSet<u32>,
    pub gets: u64,
    pub bytes_read: u64,
    pub calls: u32,
    /// Milliseconds the answering scanners report spending (arrival to encoded answer): the
    /// Lambda compute a query is metered by.
    pub scanner_ms: f64,
    /// Lists the answering scanners scanned, and those they found in their list caches (summed
    /// over calls: a list retried elsewhere counts twice, as it is read twice).
    pub lists_scanned_by_calls: u64,
    pub list_cache_hits: u64,
    /// One line per failed call, group or list, for the error message and the logs.
    pub errors: Vec<String>,
}

impl FanOut {
    /// Folds in one scanner answer.
    pub fn add_response(&mut self, response: &ScanResponse) {
        self.calls += 1;
        self.gets += response.stats.gets;
        self.bytes_read += response.stats.bytes_read;
        self.scanner_ms += f64::from(response.stats.total_ms);
        self.lists_scanned_by_calls += u64::from(response.stats.lists_scanned);
        self.list_cache_hits += u64::from(response.stats.list_cache_hits);
        self.candidates.extend_from_slice(&response.candidates);
        if response.records.len() == response.candidates.len() {
            for (hit, record) in response.candidates.iter().zip(&response.records) {
                if !record.is_empty() {
                    self.records.insert(hit.metadata_ref, record.clone());
                }
            }
        }
        for group in &response.groups {
            if group.status.is_ok() {
                self.scanned_groups.insert(group.group_id);
            } else {
                self.errors.push(format!(
                    "group {}: {:?} {}",
                    group.group_id, group.status, group.detail
                ));
                self.failed_groups.insert(group.group_id);
            }
        }
        for list in &response.lists {
            if list.status.is_ok() {
                self.scanned_lists.insert(list.list_id);
            } else {
                self.errors.push(format!(
                    "list {}: {:?} {}",
                    list.list_id, list.status, list.detail
                ));
                self.failed_lists.insert(list.list_id);
            }
        }
    }

    /// Records a call that brought nothing back; `lists` are the lists it leaves unscanned
    /// (empty when a retry will decide).
    pub fn add_failed_call(&mut self, lists: &[u32], error: String) {
        self.calls += 1;
        self.errors.push(error);
        self.failed_lists.extend(lists.iter().copied());
    }

    /// Lists scanned by some call.
    pub fn lists_scanned(&self) -> usize {
        self.scanned_lists.len()
    }

    /// Lists that failed and were not scanned by a retry, ascending: the lists of groups no
    /// call could open, and lists no call could scan.
    pub fn failed_lists(&self, routing: &RoutingTable) -> Vec<u32> {
        let mut failed: BTreeSet<u32> = self
            .failed_groups
            .difference(&self.scanned_groups)
            .flat_map(|group| group_lists(routing, *group))
            .collect();
        failed.extend(self.failed_lists.difference(&self.scanned_lists));
        failed.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clipedge_format::GroupEntry;
    use clipedge_protocol::{GroupResult, ListResult, ScanStats};

    fn routing(group_sizes: &[u32]) -> RoutingTable {
        let mut first = 0;
        let groups = group_sizes
            .iter()
            .map(|&count| {
                let entry = GroupEntry {
                    first_list: first,
                    list_count: count,
                    offset: 0,
                    length: 0,
                    crc32: 0,
                    radius: 0.0,
                };
                first += count;
                entry
            })
            .collect::<Vec<_>>();
        RoutingTable {
            dim: 1,
            nlist: first,
            centroids: vec![0.0; group_sizes.len()],
            groups,
        }
    }

    #[test]
    fn a_flat_index_spreads_its_probed_lists_over_at_most_six_calls() {
        let table = routing(&[1; 64]);
        let groups: Vec<u32> = (0..16).rev().collect();
        let batches = plan_batches(&table, &groups, 16, 6, 2);
        assert_eq!(batches.len(), 6);
        let mut scanned: Vec<u32> = batches.iter().flat_map(|b| b.lists.clone()).collect();
        scanned.sort_unstable();
        assert_eq!(
            scanned,
            (0..16).collect::<Vec<_>>(),
            "every chosen list exactly once"
        );
        for batch in &batches {
            assert_eq!(
                batch.nprobe as usize,
                batch.lists.len(),
                "flat: a call scans all its lists"
            );
            assert!((2..=3).contains(&batch.lists.len()), "balanced: {batch:?}");
        }
    }

    #[test]
    fn small_queries_use_fewer_calls() {
        let table = routing(&[1; 64]);
        assert_eq!(plan_batches(&table, &[3, 1], 2, 6, 4).len(), 1);
        assert_eq!(plan_batches(&table, &[3, 1, 2, 4, 5], 5, 6, 1).len(), 5);
        assert!(plan_batches(&table, &[], 5, 6, 1).is_empty());
    }

    #[test]
    fn two_level_groups_are_balanced_by_list_count() {
        let table = routing(&[40, 10, 10, 10, 10, 20]);
        let batches = plan_batches(&table, &[0, 1, 2, 3, 4, 5], 8, 2, 1);
        assert_eq!(batches.len(), 2);
        let loads: Vec<usize> = batches.iter().map(|b| b.lists.len()).collect();
        assert_eq!(loads.iter().sum::<usize>(), 100);
        assert!(loads.iter().all(|load| *load == 50), "{loads:?}");
        for batch in &batches {
            assert_eq!(
                batch.nprobe, 4,
                "⌈8 · 50/100⌉ lists: the calls together scan nprobe"
            );
        }
        let wider = plan_batches_with_margin(&table, &[0, 1, 2, 3, 4, 5], 8, 2, 1, 2.0);
        for batch in &wider {
            assert_eq!(batch.nprobe, 8, "2 · 8 · 50/100 lists, capped by nprobe");
        }
    }

    fn urls(count: usize) -> Vec<String> {
        (0..count)
            .map(|index| format!("https://scanner-{index}.lambda-url.us-east-1.on.aws/scan"))
            .collect()
    }

    /// Where each group of `calls` went.
    fn scanner_of_groups(calls: &[Call]) -> std::collections::BTreeMap<u32, usize> {
        let mut placed = std::collections::BTreeMap::new();
        for call in calls {
            for &group in &call.batch.group_ids {
                assert!(
                    placed.insert(group, call.scanner).is_none(),
                    "group {group} twice"
                );
            }
        }
        placed
    }

    #[test]
    fn one_scanner_url_plans_exactly_like_plan_batches() {
        let table = routing(&[40, 10, 10, 10, 10, 20]);
        let calls = plan_calls(&table, &[0, 1, 2, 3, 4, 5], 8, 2, 1, &urls(1));
        let batches = plan_batches(&table, &[0, 1, 2, 3, 4, 5], 8, 2, 1);
        assert_eq!(
            calls
                .iter()
                .map(|call| call.batch.clone())
                .collect::<Vec<_>>(),
            batches
        );
        assert!(calls
            .iter()
            .all(|call| call.scanner == 0 && call.retry_scanner == 0));
    }

    #[test]
    fn each_group_goes_to_the_same_scanner_whatever_else_the_query_probes() {
        let table = routing(&[4; 64]);
        let scanners = urls(3);
        // Every group alone (one call) fixes its home scanner.
        let home: Vec<usize> = (0..64u32)
            .map(|group| plan_calls(&table, &[group], 4, 6, 4, &scanners)[0].scanner)
            .collect();
        // Queries of 3 to 6 groups with calls to spare: each group still goes home.
        for start in 0..40u32 {
            let groups: Vec<u32> = (0..3 + start % 4)
                .map(|i| (start * 7 + i * 13) % 64)
                .collect();
            let calls = plan_calls(&table, &groups, 64, 6, 1, &scanners);
            assert!(calls.len() <= 6);
            for (group, scanner) in scanner_of_groups(&calls) {
                assert_eq!(scanner, home[group as usize], "group {group} in {groups:?}");
            }
            for call in &calls {
                assert_ne!(call.retry_scanner, call.scanner, "a retry goes elsewhere");
            }
        }
        // The shares are disjoint and roughly even.
        for scanner in 0..3 {
            let share = home.iter().filter(|&&home| home == scanner).count();
            assert!(
                (10..=35).contains(&share),
                "scanner {scanner} holds {share} of 64"
            );
        }
    }

    #[test]
    fn adding_a_scanner_moves_only_the_groups_it_wins() {
        let table = routing(&[2; 200]);
        let home = |scanners: &[String], group: u32| {
            plan_calls(&table, &[group], 2, 6, 2, scanners)[0].scanner
        };
        let (three, four) = (urls(3), urls(4));
        let mut moved = 0;
        for group in 0..200 {
            let after = home(&four, group);
            if after == 3 {
                moved += 1;
            } else {
                assert_eq!(
                    after,
                    home(&three, group),
                    "group {group} moved between old scanners"
                );
            }
        }
        assert!(
            (25..=80).contains(&moved),
            "{moved} of 200 moved to the new scanner"
        );
    }

    #[test]
    fn a_small_query_stays_one_call_and_every_group_is_scanned_once() {
        let table = routing(&[3; 32]);
        let scanners = urls(6);
        let groups: Vec<u32> = (0..8).collect();
        // 4 lists at 4 lists per call: one call, even though the groups prefer several scanners.
        let calls = plan_calls(&table, &groups, 4, 6, 4, &scanners);
        assert_eq!(calls.len(), 1);
        assert_eq!(scanner_of_groups(&calls).len(), 8);
        // A wide query: at most 6 calls, every group once, each call's lists its groups'.
        let calls = plan_calls(&table, &(0..32).collect::<Vec<_>>(), 96, 6, 4, &scanners);
        assert!(calls.len() <= 6 && calls.len() >= 2, "{}", calls.len());
        assert_eq!(scanner_of_groups(&calls).len(), 32);
        let lists: usize = calls.iter().map(|call| call.batch.lists.len()).sum();
        assert_eq!(lists, 96);
        for call in &calls {
            assert!(call.batch.nprobe as usize <= call.batch.lists.len());
        }
    }

    fn response(groups: Vec<GroupResult>, lists: Vec<ListResult>) -> ScanResponse {
        ScanResponse {
            request_id: "r".to_string(),
            generation: "g".to_string(),
            groups,
            lists,
            candidates: vec![],
            records: vec![],
            stats: ScanStats {
                gets: 2,
                bytes_read: 100,
                ..ScanStats::default()
            },
        }
    }

    fn list(list_id: u32, status: ScanStatus) -> ListResult {
        ListResult {
            list_id,
            status,
            cached: false,
            detail: String::new(),
        }
    }

    #[test]
    fn failures_are_retried_only_when_a_retry_can_help_and_recovered_lists_are_not_failed() {
        let table = routing(&[2, 2, 2]);
        let batch = Batch {
            group_ids: vec![0, 1, 2],
            nprobe: 4,
            lists: (0..6).collect(),
        };
        let first = response(
            vec![
                GroupResult {
                    group_id: 0,
                    status: ScanStatus::Ok,
                    detail: String::new(),
                },
                GroupResult {
                    group_id: 2,
                    status: ScanStatus::Unavailable,
                    detail: "s3 down".to_string(),
                },
            ],
            vec![
                list(0, ScanStatus::Ok),
                list(1, ScanStatus::TimedOut),
                list(2, ScanStatus::Missing),
            ],
        );
        let retry = retry_targets(&batch, &first);
        assert_eq!(
            retry,
            vec![
                ScanTargets::Groups {
                    group_ids: vec![2],
                    nprobe: 4
                },
                ScanTargets::Lists { list_ids: vec![1] }
            ]
        );
        let mut fan_out = FanOut::default();
        fan_out.add_response(&first);
        assert_eq!(fan_out.failed_lists(&table), vec![1, 2, 4, 5]);
        fan_out.add_response(&response(vec![], vec![list(1, ScanStatus::Ok)]));
        assert_eq!(fan_out.failed_lists(&table), vec![2, 4, 5]);
        // The group retry opens group 2 and scans one of its lists: the other was not chosen,
        // which is not a failure.
        fan_out.add_response(&response(
            vec![GroupResult {
                group_id: 2,
                status: ScanStatus::Ok,
                detail: String::new(),
            }],
            vec![list(5, ScanStatus::Ok)],
        ));
        assert_eq!(fan_out.failed_lists(&table), vec![2]);
        fan_out.add_failed_call(&[7, 8], "scanner timed out".to_string());
        assert_eq!(fan_out.failed_lists(&table), vec![2, 7, 8]);
        assert_eq!(
            (fan_out.calls, fan_out.gets, fan_out.lists_scanned()),
            (4, 6, 3)
        );
    }
}
