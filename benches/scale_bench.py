#!/usr/bin/env python3
"""10M vectors through the serverless stack (README "Scale and cost", issue 14 item 1).

1. Data: `clipedge datagen --format clip-retrieval` (seeded CLIP-like float16 shards, 10 GB at
   10M × 512, with exact ground truth for out-of-distribution text-like queries) and
   `clipedge-index-builder synth --metadata-only` (seeded captions and URLs as clip-retrieval's
   `metadata_N.parquet`, so the index has a catalog whose reads count), unless `--work`/data
   already holds them.
2. Build: `clipedge-index-builder run` on the CPU (two-level routing, 4-bit fast-scan codes,
   int8 rerank copies), timed, with its peak RSS, unless `--work`/index already has `CURRENT`.
3. Serve: `clipedge-dev local-stack up --index` (s3s-fs as S3, the scanner under the Lambda
   emulator, the Worker in `wrangler dev`); the index is uploaded once into the stack's state
   directory and reused by later runs.
4. Measure, with `{"vector": …}` queries to the Worker's `POST /v1/search` one at a time:
   - cold: the scanner's list cache off, so every list is a GET (the first query of the stack
     also pays the Worker's and the scanner's cold load, reported apart);
   - warm: a cache that holds what the queries touch, each query run once to fill it, then
     measured; at the API's defaults and at each `--nprobe`;
   per query: GETs, bytes, scanner calls, scanner ms, lists scanned, Worker ms (Server-Timing
   `probe` + `merge`: the Worker's own work; `encode` is 0 for vector queries, see
   `benches/edge_bench.sh` for text), end-to-end p50/p90 at the client; recall@10 against the
   exact ground truth.

Prints markdown tables and, last on stdout, one JSON line (also `--json-out`). Stdlib only.
`bash benches/scale_bench.sh` builds everything and runs this; the data stays under `--work`
(about 10 GB of source + 6 GB of index + 6 GB in the stack's S3 at 10M).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchlib import (BenchError, check_clipedge, die, dir_bytes, int_list, machine_info,
                      markdown_table, write_json)
from stacklib import (REPO, Stack, Worker, percentile, read_fvecs, read_ivecs, run,
                      server_timing)

STAT_KEYS = ("gets", "bytes", "scanner_calls", "scanner_ms", "lists_scanned", "list_cache_hits")


def prepare_data(args, clipedge: str, builder: str) -> Path:
    data = args.work / "data"
    if not (data / "gt.ivecs").exists():
        print(f"datagen {args.n} × {args.dim} (clip-retrieval, float16) …", file=sys.stderr,
              flush=True)
        started = time.perf_counter()
        run([clipedge, "datagen", "--format", "clip-retrieval", "--n", str(args.n), "--dim",
             str(args.dim), "--queries", str(args.queries), "--k", "100", "--seed",
             str(args.seed), "--out", str(data)])
        print(f"  {time.perf_counter() - started:.0f} s", file=sys.stderr)
    if not (data / "metadata").is_dir():
        # Captions and URLs, so the index has a catalog and its reads are counted.
        run([builder, "synth", "--out", str(data), "--n", "0", "--metadata-only", "--seed",
             str(args.seed)])
    return data


def prepare_index(args, builder: str, data: Path) -> tuple[Path, dict]:
    index = args.work / "index"
    record = args.work / "build.json"
    if (index / "CURRENT").exists():
        # Built by an earlier run (its figures in build.json when this script built it).
        return index, json.loads(record.read_text()) if record.exists() else {"report": {}}
    print(f"build nlist {args.nlist}, {args.groups} groups, 4-bit m {args.pq_m}, int8 rerank …",
          file=sys.stderr, flush=True)
    started = time.perf_counter()
    output = run([builder, "run", "--source", str(data), "--out", str(index), "--device", "cpu",
                  "--nlist", str(args.nlist), "--groups", str(args.groups), "--pq-m",
                  str(args.pq_m), "--pq-bits", "4", "--rerank-vectors", "int8",
                  "--gate-sample", "200", "--min-recall", str(args.gate_min_recall),
                  "--spill-dir", str(args.work)])
    wall_s = time.perf_counter() - started
    report = json.loads(output.strip().splitlines()[-1])
    # ru_maxrss of the children: the builder is the only large child this process waited for.
    peak_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    build = {"wall_s": round(wall_s, 1), "peak_rss_bytes": peak_rss, "report": report}
    write_json(str(record), build)
    if args.drop_source:
        # The stack's S3 copy needs the room: the truth, queries and metadata stay.
        shutil.rmtree(data / "embeddings", ignore_errors=True)
    return index, build


def query_once(worker: Worker, vector: list[float], nprobe: int | None, k: int,
               rerank: int | None = None) -> dict:
    body = {"vector": vector, "k": k, "dedup": False}
    if nprobe is not None:
        body["nprobe"] = nprobe
    if rerank is not None:
        body["rerank"] = rerank
    answer, wall_ms = worker.search(body)
    timing = server_timing(worker.last_headers.get("server-timing", ""))
    sample = {key: answer["stats"].get(key, 0) for key in STAT_KEYS}
    sample.update(wall_ms=wall_ms, worker_ms=timing.get("probe", 0.0) + timing.get("merge", 0.0),
                  load_ms=timing.get("load", 0.0), partial=bool(answer.get("partial")),
                  ids=[item["id"] for item in answer["results"]])
    return sample


def summarize(samples: list[dict], truth: list[list[int]], k: int) -> dict:
    count = len(samples)
    found = sum(len(set(s["ids"][:k]) & set(t[:k])) for s, t in zip(samples, truth))
    row = {"queries": count, "recall_at_10": round(found / (k * count), 4),
           "partial": sum(s["partial"] for s in samples)}
    for key in STAT_KEYS:
        row[f"{key}_per_query"] = round(sum(s[key] for s in samples) / count, 2)
    for key in ("wall_ms", "worker_ms"):
        values = [s[key] for s in samples]
        row[f"{key}_p50"] = round(percentile(values, 0.5), 1)
        row[f"{key}_p90"] = round(percentile(values, 0.9), 1)
    return row


def measure_pass(worker: Worker, vectors, truth, nprobe: int | None, args,
                 rerank: int | None = None) -> dict:
    samples = [query_once(worker, vector, nprobe, args.k, rerank) for vector in vectors]
    row = summarize(samples, truth, args.k)
    row["nprobe"] = nprobe if nprobe is not None else "default"
    row["rerank"] = rerank if rerank is not None else "default"
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clipedge", required=True,
                        help="the clipedge binary (clipedge-dev, clipedge-index-builder and "
                             "clipedge-scanner beside it)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/scale10m"),
                        help="data, index and stack state (outside the repository)")
    parser.add_argument("--n", type=int, default=10_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--nlist", type=int, default=4096)
    parser.add_argument("--groups", type=int, default=64)
    parser.add_argument("--pq-m", type=int, default=128)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--queries", type=int, default=1000,
                        help="queries datagen writes (with exact ground truth)")
    parser.add_argument("--measure", type=int, default=200, help="queries measured per pass")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--nprobe", type=int_list, default=[8, 32, 64],
                        help="warm passes beside the API's defaults")
    parser.add_argument("--rerank", type=int_list, default=[10, 50],
                        help="rerank factors tried at each --nprobe")
    parser.add_argument("--drop-source", action="store_true",
                        help="delete the float16 source after the build (the stack's S3 copy of "
                             "the index needs its room at 10M on a small disk)")
    parser.add_argument("--warm-cache-bytes", type=int, default=6 << 30,
                        help="the scanner's list cache in the warm stack")
    parser.add_argument("--gate-min-recall", type=float, default=0.5,
                        help="the builder's gate (the recall measured here is the report)")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    try:
        clipedge = check_clipedge(args.clipedge)
        clipedge_dev = check_clipedge(str(Path(clipedge).with_name("clipedge-dev")))
        builder = check_clipedge(str(Path(clipedge).with_name("clipedge-index-builder")))
        args.work.mkdir(parents=True, exist_ok=True)
        data = prepare_data(args, clipedge, builder)
        index, build = prepare_index(args, builder, data)
        vectors = read_fvecs(data / "queries.fvecs")[:args.measure]
        truth = read_ivecs(data / "gt.ivecs")[:args.measure]
        result = {"machine": machine_info(), "index_bytes": dir_bytes(str(index)), "build": build,
                  "config": {k: (str(v) if isinstance(v, Path) else v)
                             for k, v in vars(args).items()},
                  "cold": None, "warm": []}
        state = args.work / "stack"

        started = time.perf_counter()
        stack = Stack(clipedge_dev, index, state, ["--scanner-list-cache-bytes", "0"])
        result["stack_up_s"] = round(time.perf_counter() - started, 1)
        try:
            worker = Worker(stack.info["worker_url"])
            first = query_once(worker, vectors[0], None, args.k)
            result["first_query"] = {key: first[key] for key in (*STAT_KEYS, "wall_ms", "load_ms")}
            result["cold"] = measure_pass(worker, vectors, truth, None, args)
        finally:
            stack.down()
        print(json.dumps({"cold": result["cold"]}), file=sys.stderr, flush=True)

        stack = Stack(clipedge_dev, index, state,
                      ["--scanner-list-cache-bytes", str(args.warm_cache_bytes)])
        try:
            worker = Worker(stack.info["worker_url"])
            points = [(None, None)] + [(nprobe, rerank) for nprobe in args.nprobe
                                       for rerank in args.rerank]
            for nprobe, rerank in points:
                # The first pass fills the list cache, the second is measured.
                measure_pass(worker, vectors, truth, nprobe, args, rerank)
                row = measure_pass(worker, vectors, truth, nprobe, args, rerank)
                result["warm"].append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
        finally:
            stack.down()

        report = build["report"]
        print(f"\n{args.n:,} × {args.dim}, nlist {args.nlist} in {args.groups} groups, 4-bit "
              f"m {args.pq_m}, int8 rerank: index {result['index_bytes'] / 2**30:.2f} GiB; build "
              f"{build.get('wall_s')} s on the CPU, peak RSS "
              f"{build.get('peak_rss_bytes', 0) / 2**30:.2f} GiB, gate recall@10 "
              f"{report.get('recall_at_10')}")
        print(f"first query of a fresh stack: {result['first_query']['wall_ms']:.0f} ms "
              f"(Worker load {result['first_query']['load_ms']:.0f} ms)")
        rows = [("cold (list cache off)", result["cold"])] + [("warm", r) for r in result["warm"]]
        print(markdown_table(
            ["pass", "nprobe", "rerank", "recall@10", "GETs / query", "KiB / query", "scanner calls",
             "scanner ms", "lists scanned", "Worker ms p50 / p90", "p50 ms", "p90 ms"],
            [[name, r["nprobe"], r["rerank"], r["recall_at_10"], r["gets_per_query"],
              round(r["bytes_per_query"] / 1024), r["scanner_calls_per_query"],
              r["scanner_ms_per_query"], r["lists_scanned_per_query"],
              f"{r['worker_ms_p50']} / {r['worker_ms_p90']}", r["wall_ms_p50"], r["wall_ms_p90"]]
             for name, r in rows]))
        if args.json_out:
            write_json(str(args.json_out), result)
        print(json.dumps(result))
    except (BenchError, subprocess.SubprocessError, OSError, KeyError, ValueError) as err:
        die(str(err))


if __name__ == "__main__":
    main()
