//! Spreading a query's routing groups over at most six scanner calls, and folding the answers
//! (with their failures) back into one candidate set. No I/O: `scanners.rs` does the calls.

use std::collections::BTreeSet;

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
/// - Each call scans the best `min(its lists, nprobe, 2 · nprobe · its share of the lists)`
///   lists of its groups. The in-process reader scans the best `nprobe` lists over all chosen
///   groups; a call's share of those is rarely above twice its share of the lists, so the
///   union scanned contains them in practice, and exactly for a flat index (one list per
///   group), where every call scans all of its lists.
pub fn plan_batches(
    routing: &RoutingTable,
    groups: &[u32],
    nprobe: usize,
    max_calls: usize,
    min_lists_per_call: usize,
) -> Vec<Batch> {
    if groups.is_empty() {
        return Vec::new();
    }
    let sizes: Vec<usize> = groups
        .iter()
        .map(|group| group_lists(routing, *group).len())
        .collect();
    let total_lists: usize = sizes.iter().sum::<usize>().max(1);
    let scanned_lists = nprobe.min(total_lists).max(1);
    let calls = scanned_lists
        .div_ceil(min_lists_per_call.max(1))
        .clamp(1, max_calls.max(1))
        .min(groups.len());

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
            let share = (2 * nprobe * load).div_ceil(total_lists);
            let nprobe = load.min(nprobe).min(share).max(1);
            Batch {
                group_ids,
                nprobe: nprobe as u32,
                lists,
            }
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
        self.candidates.extend_from_slice(&response.candidates);
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
            assert_eq!(batch.nprobe, 8, "2 · 8 · 50/100 lists, capped by nprobe");
        }
    }

    fn response(groups: Vec<GroupResult>, lists: Vec<ListResult>) -> ScanResponse {
        ScanResponse {
            request_id: "r".to_string(),
            generation: "g".to_string(),
            groups,
            lists,
            candidates: vec![],
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
