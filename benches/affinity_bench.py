#!/usr/bin/env python3
"""Scanner cache affinity and scanner calls per query, measured through the real local stack.

`clipedge-dev local-stack up` (s3s-fs as S3, `cargo lambda watch` with N scanner functions
attached, `wrangler dev` running worker/build) serves a seeded synthetic index (`clipedge
datagen` + `clipedge build`, two-level routing). A seeded Zipf(1.0) stream over `--distinct`
out-of-distribution query vectors (datagen's text-like queries) goes to the Worker's
`POST /v1/search` as `{"vector": …}`, one query at a time; each answer's `stats` carries what
the query cost (GETs, bytes, scanner calls and ms, lists scanned and list-cache hits).

- Affinity (README "Scale and cost"): 1, 3 and 6 scanner functions (`--functions`), each
  scanner's list cache sized to `--cache-fraction` of the index's bytes, so that one function
  cannot hold the index but the functions together can hold most of it. A fresh stack per
  configuration; `--warmup` stream queries, then `--queries` measured ones (the stream goes on).
- Calls per query: the Worker's CLIPEDGE_MAX_SCANNER_CALLS at each of `--calls`, on
  `--calls-functions` functions whose caches hold the whole index (warm: the distinct queries of
  the measured part of the stream are run once first), `--calls-queries` measured queries. Each
  configuration's counts go to benches/cost.py (`--measured`), which prices them at 1B.

Prints a markdown table per part and, last on stdout, one JSON line (also `--json-out`).
Stdlib only. `bash benches/affinity_bench.sh` builds everything and runs this.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchlib import (BenchError, check_clipedge, die, dir_bytes, int_list, machine_info,
                      markdown_table, write_json)
from stacklib import REPO, Stack, Worker, percentile, read_fvecs, run, zipf_stream


def int_list_or_none(text: str) -> list[int]:
    """`--functions ''` or `--calls ''` skips that part."""
    return int_list(text) if text.strip() else []

def measure(worker: Worker, vectors, stream: list[int], args) -> dict:
    totals = {"gets": 0, "bytes": 0, "scanner_calls": 0, "scanner_ms": 0.0, "lists_scanned": 0,
              "list_cache_hits": 0, "partial": 0}
    walls = []
    for query in stream:
        body, wall_ms = worker.search({"vector": vectors[query], "k": args.k,
                                       "nprobe": args.nprobe, "dedup": False})
        walls.append(wall_ms)
        stats = body["stats"]
        for key in totals:
            totals[key] += int(body["partial"]) if key == "partial" else stats.get(key, 0)
    count = len(stream)
    lists = max(totals["lists_scanned"], 1)
    return {
        "queries": count,
        "distinct": len(set(stream)),
        "hit_ratio": round(totals["list_cache_hits"] / lists, 4),
        "gets_per_query": round(totals["gets"] / count, 3),
        "list_misses_per_query": round((totals["lists_scanned"] - totals["list_cache_hits"]) / count, 3),
        "lists_per_query": round(totals["lists_scanned"] / count, 2),
        "kib_per_query": round(totals["bytes"] / count / 1024, 1),
        "calls_per_query": round(totals["scanner_calls"] / count, 3),
        "scanner_ms_per_query": round(totals["scanner_ms"] / count, 2),
        "p50_ms": round(percentile(walls, 0.5), 1),
        "p90_ms": round(percentile(walls, 0.9), 1),
        "partial": totals["partial"],
    }


def calls_by_function(stack: Stack, before: list[int]) -> list[int]:
    """Scan calls each function answered since `before` (its log's `scanned` lines)."""
    counts = [log.read_text(errors="replace").count(" scanned") for log in stack.scanner_logs()]
    return [now - then for now, then in zip(counts, before)]


def prepare(args, clipedge: str) -> tuple[Path, list]:
    work = args.work
    data, queries_dir = work / "data", work / f"queries-{args.distinct}"
    if not (data / "base.fvecs").exists():
        print(f"datagen {args.n} x {args.dim} …", file=sys.stderr)
        run([clipedge, "datagen", "--n", str(args.n), "--dim", str(args.dim), "--queries", "10",
             "--k", "10", "--seed", str(args.seed), "--out", str(data)])
    if not (queries_dir / "queries.fvecs").exists():
        # Queries depend on the seed only, not on n: a tiny base keeps the ground truth cheap.
        run([clipedge, "datagen", "--n", "100", "--dim", str(args.dim), "--queries",
             str(args.distinct), "--k", "1", "--seed", str(args.seed), "--out", str(queries_dir)])
    index = work / f"index-n{args.n}-l{args.nlist}-g{args.groups}-m{args.pq_m}"
    if not (index / "CURRENT").exists():
        print(f"build nlist {args.nlist}, {args.groups} groups …", file=sys.stderr)
        started = time.perf_counter()
        run([clipedge, "build", "--vectors", str(data / "base.fvecs"), "--out", str(index),
             "--nlist", str(args.nlist), "--groups", str(args.groups), "--pq-m", str(args.pq_m),
             "--pq-bits", "4", "--rerank-vectors", "int8", "--iterations", str(args.iterations)])
        print(f"  built in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return index, read_fvecs(queries_dir / "queries.fvecs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clipedge", required=True,
                        help="the clipedge binary (clipedge-dev and clipedge-scanner beside it)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/aff"), help="data and indexes")
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--nlist", type=int, default=2048)
    parser.add_argument("--groups", type=int, default=128)
    parser.add_argument("--pq-m", type=int, default=128)
    parser.add_argument("--iterations", type=int, default=10, help="k-means iterations")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--distinct", type=int, default=4000, help="distinct query vectors")
    parser.add_argument("--nprobe", type=int, default=32)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--functions", type=int_list_or_none, default=[1, 3, 6])
    parser.add_argument("--cache-fraction", type=float, default=0.17,
                        help="each scanner's list cache, as a share of the index's bytes")
    parser.add_argument("--warmup", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--calls", type=int_list_or_none, default=[1, 2, 4, 6],
                        help="CLIPEDGE_MAX_SCANNER_CALLS values (empty part: --calls '')")
    parser.add_argument("--calls-functions", type=int, default=6)
    parser.add_argument("--min-lists-per-call", type=int, default=4,
                        help="the Worker's CLIPEDGE_MIN_LISTS_PER_CALL in both parts (4: the fan-out "
                             "these measurements chose the default 32 against; each call then "
                             "carries few lists, so --calls sets the count)")
    parser.add_argument("--calls-queries", type=int, default=2000)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    try:
        clipedge = check_clipedge(args.clipedge)
        clipedge_dev = check_clipedge(str(Path(clipedge).with_name("clipedge-dev")))
        args.work.mkdir(parents=True, exist_ok=True)
        index, vectors = prepare(args, clipedge)
        index_bytes = dir_bytes(str(index))
        cache_bytes = int(index_bytes * args.cache_fraction)
        stream = zipf_stream(args.distinct, args.warmup + args.queries, args.seed)
        result = {"machine": machine_info(), "index_bytes": index_bytes, "cache_bytes": cache_bytes,
                  "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                  "affinity": [], "calls": []}
        print(f"index {index.name}: {index_bytes / 2**20:.0f} MiB; scanner list cache "
              f"{cache_bytes / 2**20:.1f} MiB each; Zipf(1.0) over {args.distinct} distinct "
              f"queries, {args.warmup} warm-up + {args.queries} measured; nprobe {args.nprobe}, "
              f"k {args.k}", flush=True)

        for functions in args.functions:
            stack = Stack(clipedge_dev, index, args.work / f"stack-f{functions}",
                          ["--scanner-functions", str(functions),
                           "--scanner-list-cache-bytes", str(cache_bytes),
                           "--min-lists-per-call", str(args.min_lists_per_call)])
            try:
                worker = Worker(stack.info["worker_url"])
                measure(worker, vectors, stream[:args.warmup], args)
                before = calls_by_function(stack, [0] * functions)
                row = measure(worker, vectors, stream[args.warmup:], args)
                row["functions"] = functions
                row["calls_by_function"] = calls_by_function(stack, before)
            finally:
                stack.down()
            result["affinity"].append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)

        measured = stream[args.warmup:args.warmup + args.calls_queries]
        warm_set = list(dict.fromkeys(measured))
        for calls in args.calls:
            stack = Stack(clipedge_dev, index, args.work / f"stack-c{calls}",
                          ["--scanner-functions", str(args.calls_functions),
                           "--max-scanner-calls", str(calls),
                           "--min-lists-per-call", str(args.min_lists_per_call)])
            try:
                worker = Worker(stack.info["worker_url"])
                measure(worker, vectors, warm_set, args)
                row = measure(worker, vectors, measured, args)
                row["max_calls"] = calls
            finally:
                stack.down()
            # The measured counts, priced by the cost model at 10M, 100M and 1B.
            counts = {"nprobe": args.nprobe, "calls": row["calls_per_query"],
                      "warm_hit": min(1.0, row["hit_ratio"])}
            counts_path = args.work / f"measured-calls-{calls}.json"
            write_json(str(counts_path), counts)
            cost = json.loads(run([sys.executable, str(REPO / "benches/cost.py"), "--json",
                                   "--measured", str(counts_path)]))
            row["dollars_per_m"] = {scale: round(q["total_per_m"], 2)
                                    for scale, q in cost["scales"].items()}
            result["calls"].append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)

        if result["affinity"]:
            print(f"\naffinity: each function's list cache {cache_bytes / 2**20:.1f} MiB "
                  f"({args.cache_fraction:.0%} of the index), {args.queries} queries after "
                  f"{args.warmup} warm-up")
            print(markdown_table(
                ["functions", "list-cache hit ratio", "list GETs / query", "GETs / query",
                 "KiB read / query", "calls / query", "p50 ms", "p90 ms", "calls by function"],
                [[r["functions"], r["hit_ratio"], r["list_misses_per_query"], r["gets_per_query"],
                  r["kib_per_query"], r["calls_per_query"], r["p50_ms"], r["p90_ms"],
                  " / ".join(map(str, r["calls_by_function"]))] for r in result["affinity"]]))
        if result["calls"]:
            print(f"\ncalls per query: {args.calls_functions} functions, caches hold the index "
                  f"(warm), {args.calls_queries} queries")
            print(markdown_table(
                ["max calls", "calls / query", "lists / query", "scanner ms / query", "p50 ms",
                 "p90 ms", "$ / 1M at 10M", "$ / 1M at 1B"],
                [[r["max_calls"], r["calls_per_query"], r["lists_per_query"], r["scanner_ms_per_query"],
                  r["p50_ms"], r["p90_ms"], r["dollars_per_m"]["10M"], r["dollars_per_m"]["1B"]]
                 for r in result["calls"]]))
        if args.json_out:
            write_json(str(args.json_out), result)
        print(json.dumps(result))
    except BenchError as err:
        die(str(err))


if __name__ == "__main__":
    main()
