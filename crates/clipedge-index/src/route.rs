//! Routing: from a query to the fine lists worth scanning. No I/O.

use std::sync::Arc;

use clipedge_format::{GroupBlob, ListLocation, RoutingTable};
use clipedge_linalg::dot::{dot, dots_with_rows, top_rows_by_dot, top_rows_by_dot_plus};
use clipedge_linalg::screen::Fp16Screen;
use clipedge_linalg::TopK;

/// How many lists' worth of groups the automatic group probe gathers per list scanned:
/// a group's best lists are not always the globally best, so look a little wider.
pub const GROUP_OVERFETCH: usize = 4;

/// Groups opened per probed list by the automatic group probe. Opening a group costs ranking
/// its list centroids (a cached blob, a few µs); scanning a list costs a list's codes and, cold,
/// a GET. On 1M CLIP-like vectors (4,096 lists in 64 size-capped groups, text-like queries,
/// rerank 50) one group per probed list reached recall@10 0.693 / 0.848 at nprobe 8 / 16, two
/// 0.843 / 0.972, four 0.966 / 0.979 (flat routing at nprobe 8: 0.973): the best lists of a
/// text query sit in many groups, and it is cheaper to rank more groups than to scan more lists
/// (nprobe 32 with one group a list: 0.972, four times the lists read). With 256 groups of 16
/// lists on the same data, four a probed list gave 0.955 / 0.974 / 0.979 at nprobe 8 / 16 / 32
/// (flat: 0.973 / 0.979 / 0.979) while opening an eighth to a half of the groups.
pub const GROUPS_PER_PROBED_LIST: usize = 4;

/// The groups to open for `nprobe` lists when the caller did not say: the best
/// `GROUPS_PER_PROBED_LIST * nprobe` groups by [`rank_groups`], and more if those hold fewer
/// than `GROUP_OVERFETCH * nprobe` lists. For a flat index (one list per group) this is exactly
/// `nprobe` groups.
///
/// On the 1M synthetic benchmark (64 plain k-means groups over 1024 lists, 4-bit codes,
/// text-like queries, rerank 50) one group a probed list matched flat routing at equal lists
/// scanned (recall@10 0.881 / 0.902 / 0.919 at nprobe 4 / 8 / 16), but plain groups are very
/// unequal and the giant ones were opened every time; with size-capped groups it fell far
/// behind (see [`GROUPS_PER_PROBED_LIST`], [`RADIUS_WEIGHT`]). Ranking groups by centroid score
/// alone instead of the radius bound gave 0.17 / 0.82 / 0.92 even with four groups a probed
/// list.
///
/// `screen`, when given, must be the fp16 screen of `routing.centroids` (see
/// [`crate::Generation::group_screen`]); the groups are the same with or without it.
pub fn auto_group_probe(
    routing: &RoutingTable,
    screen: Option<&Fp16Screen>,
    query: &[f32],
    nprobe: usize,
) -> Vec<u32> {
    if routing.ngroups() as u32 == routing.nlist {
        return rank_groups(routing, screen, query, nprobe);
    }
    let wanted_lists = nprobe.saturating_mul(GROUP_OVERFETCH);
    let ranked = rank_groups(routing, screen, query, routing.ngroups());
    let mut chosen = Vec::new();
    let mut gathered_lists = 0usize;
    for group in ranked {
        chosen.push(group);
        gathered_lists += routing.groups[group as usize].list_count as usize;
        if chosen.len() >= GROUPS_PER_PROBED_LIST * nprobe && gathered_lists >= wanted_lists {
            break;
        }
    }
    chosen
}

/// The `count` groups most likely to hold `query`'s best lists, best first.
///
/// Groups are ranked by `<q, centroid> + RADIUS_WEIGHT · |q| · radius` (for a flat index every
/// radius is 0 and this is the plain inner product): a group's centroid is the mean of its
/// lists, and by the mean alone small tight groups outrank wide ones that hold better lists;
/// the full radius (a true upper bound) over-credits wide groups ([`RADIUS_WEIGHT`]).
/// `screen` as in [`auto_group_probe`].
pub fn rank_groups(
    routing: &RoutingTable,
    screen: Option<&Fp16Screen>,
    query: &[f32],
    count: usize,
) -> Vec<u32> {
    let count = count.min(routing.ngroups());
    let query_norm = dot(query, query).sqrt();
    let offset = |group: usize| RADIUS_WEIGHT * query_norm * routing.groups[group].radius;
    let ranked = match screen.filter(|screen| screen.rows() == routing.ngroups()) {
        Some(screen) => screen.top_rows(query, &routing.centroids, count, offset),
        None if routing.groups.iter().all(|group| group.radius == 0.0) => {
            top_rows_by_dot(query, &routing.centroids, routing.dim, count)
        }
        None => top_rows_by_dot_plus(query, &routing.centroids, routing.dim, count, offset),
    };
    ranked.into_iter().map(|(group, _)| group).collect()
}

/// The share of a group's radius the ranking credits: `<q, centroid> + w · |q| · radius`.
///
/// `w = 1` is a true upper bound on the group's best list, but in 512 dimensions a loose one:
/// a list's offset from its group's centroid projects onto the query with a fraction of its
/// length (about `√(2 ln L / d_eff)` for the best of `L` lists in `d_eff` effective
/// dimensions), so the full radius over-credits wide groups. On 200k CLIP-like vectors (1,024
/// lists, 64 groups, text-like queries, rerank 50, the automatic probe) `w = 0.25` raised
/// recall@10 at nprobe 4 / 16 from 0.636 / 0.880 to 0.767 / 0.903 with size-capped groups and
/// from 0.859 / 0.919 to 0.887 / 0.919 with plain k-means groups (flat routing: 0.887 / 0.919);
/// `w = 0` (the centroid alone) was far worse on 1M (0.17 at nprobe 4, see
/// [`auto_group_probe`]).
pub const RADIUS_WEIGHT: f32 = 0.25;

/// A fine list chosen for scanning, with the query's inner product with its centroid
/// (the by-residual bias added to every PQ score of the list).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbedList {
    pub list_id: u32,
    pub location: ListLocation,
    pub bias: f32,
}

/// The `nprobe` best fine lists among the lists of `groups`, best first.
pub fn rank_lists(query: &[f32], groups: &[Arc<GroupBlob>], nprobe: usize) -> Vec<ProbedList> {
    let mut top = TopK::new(nprobe);
    let mut flat: Vec<(u32, ListLocation)> = Vec::new();
    let mut biases = Vec::new();
    for group in groups {
        biases.clear();
        dots_with_rows(query, &group.centroids, group.dim, &mut biases);
        for (local, (location, bias)) in group.lists.iter().zip(&biases).enumerate() {
            top.push(*bias, flat.len() as u64);
            flat.push((group.first_list + local as u32, *location));
        }
    }
    top.into_sorted()
        .into_iter()
        .map(|scored| {
            let (list_id, location) = flat[scored.key as usize];
            ProbedList {
                list_id,
                location,
                bias: scored.score,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clipedge_format::GroupEntry;

    fn entry(first_list: u32, list_count: u32, radius: f32) -> GroupEntry {
        GroupEntry {
            first_list,
            list_count,
            offset: 0,
            length: 0,
            crc32: 0,
            radius,
        }
    }

    #[test]
    fn a_wide_group_outranks_a_tight_group_whose_centroid_scores_higher() {
        // Group 0: one tight list right next to the query direction's neighbour. Group 1: a
        // wide group whose mean scores lower but whose radius allows a much better list
        // (0.3 + RADIUS_WEIGHT × 1.6 = 0.7 > 0.6).
        let routing = RoutingTable {
            dim: 2,
            nlist: 5,
            centroids: vec![0.6, 0.0, 0.3, 0.0],
            groups: vec![entry(0, 1, 0.0), entry(1, 4, 1.6)],
        };
        let query = [1.0, 0.0];
        assert_eq!(rank_groups(&routing, None, &query, 2), vec![1, 0]);
        // GROUPS_PER_PROBED_LIST groups a probed list, best bound first.
        assert_eq!(auto_group_probe(&routing, None, &query, 1), vec![1, 0]);
    }

    #[test]
    fn zero_radii_rank_by_inner_product() {
        let routing = RoutingTable {
            dim: 2,
            nlist: 3,
            centroids: vec![0.1, 0.0, 0.9, 0.0, 0.5, 0.0],
            groups: vec![entry(0, 1, 0.0), entry(1, 1, 0.0), entry(2, 1, 0.0)],
        };
        assert_eq!(rank_groups(&routing, None, &[1.0, 0.0], 3), vec![1, 2, 0]);
        assert_eq!(auto_group_probe(&routing, None, &[1.0, 0.0], 2), vec![1, 2]);
    }
}
