#!/usr/bin/env python3
"""Recall / latency sweep of clipedge alone: nprobe x rerank, flat vs two-level routing.

Builds the same base vectors twice with the clipedge CLI,

  flat       default routing (one routing entry per list, for nlist <= 4096)
  two-level  `--groups G` (default nlist/16): a query first ranks G group centroids, opens
             the best groups (by default enough of them to hold 4*nprobe lists) and picks
             its nprobe lists among the lists of those groups only

then runs `clipedge search` for every nprobe x rerank on both, and prints

  * one table per routing: recall@k, latency, lists/codes scanned per query;
  * a flat-vs-two-level table at equal lists scanned (lists_per_query, normally = nprobe):
    the recall the two-level routing loses (or not) by only looking inside the groups it
    opened;
  * optionally (--group-probe) the two-level index with an explicit number of groups
    opened, to show the routing-width trade-off.

Only the stdlib is needed (recall is computed by `clipedge search --truth`).
Run `python sweep.py --help` for the options; see benches/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402
from benchlib import BenchError, markdown_table  # noqa: E402

QUERY_SETS = {
    "ood": ("queries.fvecs", "gt.ivecs", "out-of-distribution, text-like"),
    "in": ("queries_in.fvecs", "gt_in.ivecs", "in-distribution"),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Example: sweep.py --data /tmp/bench-1m --nlist 1024 --nprobe 4,8,16,32,64,128 "
               "--rerank 0,5,10,20 --work /tmp/bench-out/sweep-work --json-out /tmp/bench-out/sweep.json",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--data", required=True, help="directory written by `clipedge datagen`")
    parser.add_argument("--nlist", type=int, required=True, help="inverted lists")
    parser.add_argument("--groups", type=int, default=0,
                        help="routing groups of the two-level build (0 = nlist/16)")
    parser.add_argument("--pq-m", type=int, default=64, help="PQ sub-quantizers")
    parser.add_argument("--pq-bits", type=int, default=8, choices=(4, 8), help="bits per PQ code")
    parser.add_argument("--rerank-vectors", default="fp16", choices=("fp16", "int8", "none"),
                        help="exact-rerank copy stored with each vector")
    parser.add_argument("--k", type=int, default=10, help="results per query; recall@k")
    parser.add_argument("--nprobe", type=benchlib.int_list, default=[4, 8, 16, 32, 64, 128],
                        help="comma-separated nprobe values")
    parser.add_argument("--rerank", type=benchlib.int_list, default=[0, 5, 10, 20],
                        help="comma-separated rerank factors (0 = PQ scores only)")
    parser.add_argument("--group-probe", type=benchlib.int_list, default=None,
                        help="also sweep the two-level index with these explicit --group-probe values "
                             "(at every nprobe <= the lists they hold, rerank --group-probe-rerank)")
    parser.add_argument("--group-probe-rerank", type=int, default=10,
                        help="rerank used for the --group-probe runs")
    parser.add_argument("--queries", default="ood", choices=sorted(QUERY_SETS),
                        help="query set: ood = queries.fvecs/gt.ivecs, in = queries_in.fvecs/gt_in.ivecs")
    parser.add_argument("--max-queries", type=int, default=0, help="use only the first N queries (0 = all)")
    parser.add_argument("--threads", type=int, default=1, help="search threads (1 = single-threaded)")
    parser.add_argument("--build-threads", type=int, default=0, help="build threads (0 = all cores)")
    parser.add_argument("--seed", type=int, default=1234, help="build seed (same for both builds)")
    parser.add_argument("--train-size", type=int, default=None, help="training sample (default: clipedge's)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed passes before timing (fills the list cache: timed runs are in-memory)")
    parser.add_argument("--repeats", type=int, default=1, help="timed passes")
    parser.add_argument("--cache-mb", type=int, default=8192, help="clipedge list cache in MiB")
    parser.add_argument("--flat-index", default=None,
                        help="reuse this existing clipedge index as the flat build (it must have been built "
                             "from the same base with the same nlist / PQ / rerank settings)")
    parser.add_argument("--clipedge", default=benchlib.default_clipedge(), help="clipedge binary")
    parser.add_argument("--work", required=True, help="scratch dir for the indexes and logs")
    parser.add_argument("--json-out", default=None, help="raw results (default WORK/sweep.json)")
    parser.add_argument("--reuse", action="store_true", help="reuse indexes a previous run built in WORK")
    args = parser.parse_args(argv)
    problems = []
    if args.nlist < 2:
        problems.append("--nlist must be >= 2")
    if args.groups == 0:
        args.groups = max(2, args.nlist // 16)
    if not 1 <= args.groups < args.nlist:
        problems.append("--groups must be in 1..nlist-1 (nlist itself is flat routing)")
    if any(p < 1 or p > args.nlist for p in args.nprobe):
        problems.append(f"--nprobe values must be in 1..{args.nlist}")
    if any(r < 0 for r in args.rerank):
        problems.append("--rerank values must be >= 0")
    if args.group_probe and any(g < 1 or g > args.groups for g in args.group_probe):
        problems.append(f"--group-probe values must be in 1..groups ({args.groups})")
    if args.k < 1 or args.threads < 1:
        problems.append("--k and --threads must be >= 1")
    if problems:
        parser.error("; ".join(problems))
    if args.json_out is None:
        args.json_out = os.path.join(args.work, "sweep.json")
    return args


def build(args, name: str, base: str, groups: int | None, log_path: str) -> dict:
    out_dir = os.path.join(args.work, f"clipedge-{name}")
    marker = out_dir + ".build.json"
    if args.reuse and os.path.isfile(marker):
        with open(marker) as handle:
            print(f"  reusing {out_dir}")
            return json.load(handle)
    if os.path.exists(out_dir) and os.listdir(out_dir):
        raise BenchError(f"{out_dir} already holds an index (a second build would publish a new "
                         "generation); remove it, choose another --work, or pass --reuse")
    os.makedirs(out_dir, exist_ok=True)
    command = ["build", "--vectors", base, "--out", out_dir, "--nlist", str(args.nlist),
               "--pq-m", str(args.pq_m), "--pq-bits", str(args.pq_bits),
               "--rerank-vectors", args.rerank_vectors, "--seed", str(args.seed),
               "--threads", str(args.build_threads)]
    if groups:
        command += ["--groups", str(groups)]
    if args.train_size:
        command += ["--train-size", str(args.train_size)]
    print(f"  clipedge {' '.join(command)}", flush=True)
    return benchlib.clipedge_build(args.clipedge, command, out_dir, log_path, marker, f"build {name}")


def search(args, index_dir: str, queries: str, truth: str, nprobe: int, rerank: int, log_path: str,
           group_probe: int | None = None) -> dict:
    command = ["search", "--index", index_dir, "--queries", queries, "--truth", truth,
               "--k", str(args.k), "--nprobe", str(nprobe), "--rerank", str(rerank),
               "--threads", str(args.threads), "--warmup", str(args.warmup),
               "--repeats", str(args.repeats), "--cache-mb", str(args.cache_mb)]
    if group_probe is not None:
        command += ["--group-probe", str(group_probe)]
    what = f"search {os.path.basename(index_dir)} nprobe={nprobe} rerank={rerank}"
    if group_probe is not None:
        what += f" group_probe={group_probe}"
    return benchlib.run_clipedge(args.clipedge, command, log_path, what)


def routing_group_sizes(index_dir: str) -> dict | None:
    """Best effort: lists per routing group and group-centroid norms, read from the published
    generation's routing.bin (format v1: 32-byte header, ngroups*dim f32 centroids, then
    24-byte entries whose 2nd u32 is the group's list count). None if it cannot be read."""
    import math
    import struct

    try:
        with open(os.path.join(index_dir, "CURRENT")) as handle:
            generation = json.load(handle)["generation"]
        with open(os.path.join(index_dir, "generations", generation, "routing.bin"), "rb") as handle:
            blob = handle.read()
        if blob[:8] != b"CEROUTE\0":
            return None
        dim, ngroups, nlist = struct.unpack_from("<III", blob, 12)
        centroids = struct.unpack_from(f"<{ngroups * dim}f", blob, 32)
        entries = 32 + 4 * ngroups * dim
        counts = [struct.unpack_from("<I", blob, entries + 24 * g + 4)[0] for g in range(ngroups)]
        norms = [math.sqrt(sum(v * v for v in centroids[g * dim:(g + 1) * dim])) for g in range(ngroups)]
    except (OSError, KeyError, ValueError, struct.error):
        return None
    if sum(counts) != nlist:
        return None
    ordered = sorted(counts)
    return {"ngroups": ngroups, "nlist": nlist, "lists_per_group_min": ordered[0],
            "lists_per_group_median": ordered[len(ordered) // 2], "lists_per_group_max": ordered[-1],
            "singleton_groups": sum(1 for c in counts if c == 1),
            "largest_group_share": ordered[-1] / nlist,
            "counts": counts, "centroid_norms": [round(x, 4) for x in norms]}


def point_row(run: dict) -> dict:
    lat = run["latency_ms"]
    return {"nprobe": run["nprobe"], "rerank": run["rerank"], "group_probe": run.get("group_probe"),
            "recall": run["recall_at_k"], "p50_ms": lat["p50"], "mean_ms": lat["mean"], "p99_ms": lat["p99"],
            "qps": run["qps"], "lists_per_query": run["lists_per_query"],
            "codes_per_query": run["codes_per_query"], "gets_per_query": run["gets_per_query"]}


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except BenchError as err:
        benchlib.die(str(err))
    return 1


def run(args) -> int:
    args.clipedge = benchlib.check_clipedge(args.clipedge)
    qname, tname, qdesc = QUERY_SETS[args.queries]
    paths = benchlib.check_data_dir(args.data, ["base.fvecs", qname, tname])
    os.makedirs(args.work, exist_ok=True)
    log_path = os.path.join(args.work, "sweep.clipedge.log")
    n, d = benchlib.vecs_shape(paths["base.fvecs"])
    nq, _ = benchlib.vecs_shape(paths[qname])
    truth_rows, truth_k = benchlib.vecs_shape(paths[tname])
    if truth_rows != nq or truth_k < args.k:
        raise BenchError(f"{tname} has {truth_rows}x{truth_k} entries for {nq} queries and k={args.k}")
    if d % args.pq_m:
        raise BenchError(f"--pq-m {args.pq_m} does not divide the dimension {d}")
    queries, truth = paths[qname], paths[tname]
    if args.max_queries and args.max_queries < nq:
        queries = os.path.join(args.work, f"{args.queries}-first{args.max_queries}.fvecs")
        truth = os.path.join(args.work, f"{args.queries}-gt-first{args.max_queries}.ivecs")
        benchlib.write_prefix(paths[qname], queries, args.max_queries)
        benchlib.write_prefix(paths[tname], truth, args.max_queries)
        nq = args.max_queries

    results = {
        "tool": "benches/sweep.py",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "args": vars(args),
        "machine": benchlib.machine_info(),
        "clipedge": {"binary": args.clipedge, "binary_sha256": benchlib.file_sha256(args.clipedge)},
        "data": {"dir": os.path.abspath(args.data), "n": n, "d": d, "queries": nq, "query_set": qdesc},
        "builds": {},
        "sweeps": {},
    }
    print(f"n={n} d={d} queries={nq} ({qdesc}) nlist={args.nlist} groups={args.groups} "
          f"PQ m={args.pq_m} bits={args.pq_bits} rerank-vectors={args.rerank_vectors}", flush=True)

    if args.flat_index:
        if not os.path.isdir(args.flat_index):
            raise BenchError(f"--flat-index {args.flat_index} is not a directory")
        results["builds"]["flat"] = {"dir": os.path.abspath(args.flat_index), "reused": True}
        marker = args.flat_index.rstrip("/") + ".build.json"
        if os.path.isfile(marker):
            with open(marker) as handle:
                results["builds"]["flat"].update(json.load(handle))
    else:
        results["builds"]["flat"] = build(args, "flat", paths["base.fvecs"], None, log_path)
    results["builds"]["two-level"] = build(args, f"groups{args.groups}", paths["base.fvecs"],
                                           args.groups, log_path)
    results["routing_groups"] = routing_group_sizes(results["builds"]["two-level"]["dir"])

    for routing in ("flat", "two-level"):
        index_dir = results["builds"][routing]["dir"]
        points = []
        for nprobe in args.nprobe:
            for rerank in args.rerank:
                run_ = search(args, index_dir, queries, truth, nprobe, rerank, log_path)
                points.append(point_row(run_) | {"raw": run_, "loadavg_1m": os.getloadavg()[0]})
                if routing == "flat" and run_["index"]["ngroups"] != args.nlist:
                    raise BenchError(f"{index_dir} is not flat-routed (ngroups {run_['index']['ngroups']})")
                print(f"  {routing:9s} nprobe={nprobe:4d} rerank={rerank:3d} R@{args.k}={run_['recall_at_k']:.4f} "
                      f"p50={run_['latency_ms']['p50']:.3f}ms lists={run_['lists_per_query']:.1f} "
                      f"codes={run_['codes_per_query']:.0f} gets={run_['gets_per_query']:.2f}", flush=True)
                benchlib.write_json(args.json_out + ".partial", results)
        results["sweeps"][routing] = points
        results["ngroups_" + routing] = points[0]["raw"]["index"]["ngroups"] if points else None

    if args.group_probe:
        index_dir = results["builds"]["two-level"]["dir"]
        lists_per_group = args.nlist / results["ngroups_two-level"]
        gp_points = []
        for group_probe in args.group_probe:
            for nprobe in args.nprobe:
                if nprobe > group_probe * lists_per_group * 1.5:
                    continue  # too few lists in the opened groups; the run would scan fewer than nprobe
                run_ = search(args, index_dir, queries, truth, nprobe, args.group_probe_rerank, log_path,
                              group_probe=group_probe)
                gp_points.append(point_row(run_) | {"raw": run_})
                print(f"  two-level group_probe={group_probe:3d} nprobe={nprobe:4d} "
                      f"R@{args.k}={run_['recall_at_k']:.4f} p50={run_['latency_ms']['p50']:.3f}ms "
                      f"lists={run_['lists_per_query']:.1f}", flush=True)
                benchlib.write_json(args.json_out + ".partial", results)
        results["sweeps"]["two-level-group-probe"] = gp_points

    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    report(args, results)
    benchlib.write_json(args.json_out, results)
    partial = args.json_out + ".partial"
    if os.path.exists(partial):
        os.remove(partial)
    print(f"\nraw results: {args.json_out}")
    return 0


def report(args, results) -> None:
    k = args.k
    data = results["data"]
    for routing in ("flat", "two-level"):
        ngroups = results.get("ngroups_" + routing)
        build_report = results["builds"][routing]
        print(f"\n### {routing} routing ({ngroups} routing groups, nlist {args.nlist}; "
              f"{data['n']} vectors, {data['queries']} {data['query_set']} queries, k {k}, "
              f"{args.threads} thread(s))\n")
        if "build_s" in build_report:
            print(f"build {build_report['build_s']:.1f}s (train {build_report['train_s']:.1f}s), "
                  f"index {build_report['index_bytes'] / 2**20:.1f} MiB\n")
        rows = [[p["nprobe"], p["rerank"], p["recall"], p["p50_ms"], p["mean_ms"], p["p99_ms"], p["qps"],
                 p["lists_per_query"], p["codes_per_query"]] for p in results["sweeps"][routing]]
        print(markdown_table(["nprobe", "rerank", f"R@{k}", "p50 ms", "mean ms", "p99 ms", "QPS",
                              "lists/q", "codes/q"], rows))

    groups = results.get("routing_groups")
    if groups:
        print(f"\ntwo-level routing groups: {groups['ngroups']} groups over {groups['nlist']} lists; lists per "
              f"group min/median/max {groups['lists_per_group_min']}/{groups['lists_per_group_median']}/"
              f"{groups['lists_per_group_max']}, {groups['singleton_groups']} single-list groups, largest "
              f"group {100 * groups['largest_group_share']:.0f}% of the lists")
    print(f"\n### flat vs two-level ({results.get('ngroups_two-level')} groups, automatic group probe) "
          f"at equal lists scanned\n")
    flat = {(p["nprobe"], p["rerank"]): p for p in results["sweeps"]["flat"]}
    rows, comparison = [], []
    for p in results["sweeps"]["two-level"]:
        f = flat.get((p["nprobe"], p["rerank"]))
        if f is None:
            continue
        entry = {"nprobe": p["nprobe"], "rerank": p["rerank"],
                 "lists_flat": f["lists_per_query"], "lists_two_level": p["lists_per_query"],
                 "recall_flat": f["recall"], "recall_two_level": p["recall"],
                 "recall_delta": p["recall"] - f["recall"],
                 "p50_flat_ms": f["p50_ms"], "p50_two_level_ms": p["p50_ms"],
                 "codes_flat": f["codes_per_query"], "codes_two_level": p["codes_per_query"]}
        comparison.append(entry)
        rows.append([p["nprobe"], p["rerank"], f["lists_per_query"], p["lists_per_query"], f["recall"],
                     p["recall"], entry["recall_delta"], f["p50_ms"], p["p50_ms"],
                     f["codes_per_query"], p["codes_per_query"]])
    results["flat_vs_two_level"] = comparison
    print(markdown_table(["nprobe", "rerank", "lists/q flat", "lists/q 2-level", f"R@{k} flat",
                          f"R@{k} 2-level", "delta", "p50 flat", "p50 2-level", "codes/q flat",
                          "codes/q 2-level"], rows))

    gp = results["sweeps"].get("two-level-group-probe")
    if gp:
        print(f"\n### two-level with explicit --group-probe (rerank {args.group_probe_rerank})\n")
        rows = [[p["group_probe"], p["nprobe"], p["lists_per_query"], p["recall"], p["p50_ms"],
                 p["codes_per_query"]] for p in gp]
        print(markdown_table(["group_probe", "nprobe", "lists/q", f"R@{k}", "p50 ms", "codes/q"], rows))


if __name__ == "__main__":
    sys.exit(main())
