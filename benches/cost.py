#!/usr/bin/env python3
"""What a query costs: dollars per 1M queries and per month for storage, from per-query counts.

The model (every figure it prints is one of these lines, with its arithmetic):

- Worker: one request ($/M beyond the plan's included 10M) and its CPU milliseconds
  (the encode when no embedding cache answers, plus a fixed overhead for routing, merge, JSON).
- Scanner Lambdas: `calls` invocations ($/M requests) and their GB-seconds (function memory ×
  billed duration, rounded up to 1 ms; a call lasts its share of the scan plus a fixed per-call
  cost and, when it has cold lists, one object GET's latency plus the transfer).
- Object reads: one GET per list a scanner does not hold warm, plus the Worker's catalog reads
  (`--catalog-gets`: 0 since lists carry their records and the scanner returns them with the
  candidates; before, one range GET per result: 10 a query at k 10, measured at 10M by
  benches/scale_bench.py). S3 or R2 prices.
- Storage: the generation's bytes (codes + ids/hashes/refs + rerank copies + catalog) per month.
- Idle: $0 beyond storage (the Workers paid plan's $5 base is listed apart).

Per-query counts come from flags (defaults: the figures measured on this project's benches,
named below) or from a JSON file of a bench's last line (`--measured FILE`, keys as the flags).
Scale projections keep the measured per-list work and change what grows with n: vectors per
list (n / nlist), so codes scanned and bytes a cold list weighs. Stdlib only.

  python3 benches/cost.py                       # the default table (10M, 100M, 1B; warm and cold)
  python3 benches/cost.py --nprobe 64 --calls 2 --warm-hit 0.9 --store r2
"""

from __future__ import annotations

import argparse
import json
import math
import sys

# List prices, read 2026-11 (../shared/FACTS.md has the sources; re-check before relying on them).
PRICES = {
    "workers_request_per_m": 0.30,  # beyond 10M included (paid plan, $5/month base)
    "workers_cpu_per_m_ms": 0.02,  # beyond 30M ms included
    "workers_base_month": 5.00,
    "lambda_request_per_m": 0.20,
    "lambda_gb_s": {"x86_64": 0.0000166667, "arm64": 0.0000133334},
    "s3_get_per_m": 0.40,
    "s3_gb_month": 0.023,
    "r2_read_per_m": 0.36,  # class B
    "r2_gb_month": 0.015,
    "s3_vectors_query_per_m": 2.50,  # plus a per-TB-processed charge, not modelled here
}
PRICES_READ = "2026-11"

# Scales: nlist as docs/format.md's edge budget table (about 64 lists a routing group).
SCALES = {"10M": (10_000_000, 16_384), "100M": (100_000_000, 65_536), "1B": (1_000_000_000, 262_144)}


def list_bytes_per_vector(args) -> float:
    """A vector's share of its list blob: code, refs and rerank copy (docs/format.md)."""
    codes = args.pq_m * args.pq_bits / 8
    refs = 24  # id, content hash, metadata reference: u64 each
    rerank = {"none": 0, "int8": args.dim + 4, "fp16": 2 * args.dim}[args.rerank_vectors]
    records = 4 + args.record_bytes  # the list's records column: an offset and the record
    return codes + refs + rerank + records


def bytes_per_vector(args) -> float:
    catalog = 16 + args.record_bytes  # id-table entry + caption/URL record
    return list_bytes_per_vector(args) + catalog


def per_query(args, n: int, nlist: int) -> dict:
    vectors_per_list = n / nlist
    list_bytes = vectors_per_list * list_bytes_per_vector(args)
    codes = args.nprobe * vectors_per_list
    # Each call scans its share of the codes and pays the fixed per-call work.
    compute_ms = codes / max(args.calls, 1) / (args.codes_per_s / 1e3) + args.call_overhead_ms
    cold_lists = args.nprobe * (1 - args.warm_hit)
    # A call with any cold list waits one GET latency plus the transfer of its cold lists (they
    # are fetched in parallel); the chance that a call has one is 1 - warm_hit^(its lists).
    lists_per_call = args.nprobe / max(args.calls, 1)
    cold_call_chance = 1 - args.warm_hit ** lists_per_call if args.warm_hit < 1 else 0.0
    cold_wait_ms = args.get_latency_ms + list_bytes * max(1.0, (1 - args.warm_hit) * lists_per_call / max(cold_call_chance, 1e-9)) / (args.call_mb_s * 1e3)
    # Lambda bills each invocation's duration rounded up to the millisecond.
    call_ms = (cold_call_chance * math.ceil(compute_ms + cold_wait_ms)
               + (1 - cold_call_chance) * math.ceil(compute_ms))
    gb_s = args.calls * (args.lambda_mb / 1024) * (call_ms / 1e3)
    worker_cpu_ms = args.worker_overhead_ms + (1 - args.embed_hit) * args.encode_ms
    object_gets = cold_lists + args.catalog_gets
    read_price = PRICES["r2_read_per_m"] if args.store == "r2" else PRICES["s3_get_per_m"]
    dollars = {
        "worker_requests": PRICES["workers_request_per_m"],
        "worker_cpu": worker_cpu_ms * PRICES["workers_cpu_per_m_ms"],
        "lambda_requests": args.calls * PRICES["lambda_request_per_m"],
        "lambda_compute": gb_s * 1e6 * PRICES["lambda_gb_s"][args.arch],
        "object_reads": object_gets * read_price,
    }
    return {
        "vectors_per_list": vectors_per_list,
        "codes_scanned": codes,
        "cold_lists": cold_lists,
        "list_kib": list_bytes / 1024,
        "call_ms": call_ms,
        "gb_s": gb_s,
        "worker_cpu_ms": worker_cpu_ms,
        "object_gets": object_gets,
        "dollars_per_m": dollars,
        "total_per_m": sum(dollars.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--measured", help="JSON with any of the keys below (a bench's last line)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--pq-m", type=int, default=128)
    parser.add_argument("--pq-bits", type=int, default=4)
    parser.add_argument("--rerank-vectors", choices=["none", "int8", "fp16"], default="int8")
    parser.add_argument("--record-bytes", type=int, default=160, help="catalog record (caption + URL) per vector")
    parser.add_argument("--nprobe", type=int, default=32)
    parser.add_argument("--calls", type=int, default=1,
                        help="scanner calls per query (one per 32 lists, the Worker's default)")
    parser.add_argument("--warm-hit", type=float, default=1.0, help="share of probed lists a scanner holds warm")
    parser.add_argument("--embed-hit", type=float, default=0.0, help="share of queries an embedding cache answers")
    # Measured defaults: scanner_bench (README "The scanner Lambda": ~90M codes/s warm scan;
    # ~1 ms in-scanner fixed work), edge_bench (README "The edge Worker": encode at 10 tokens),
    # S3 first byte ~60 ms (FACTS.md).
    parser.add_argument("--codes-per-s", type=float, default=90e6, help="scanner scan throughput, one core")
    parser.add_argument("--call-overhead-ms", type=float, default=1.0, help="scanner fixed work per call")
    parser.add_argument("--get-latency-ms", type=float, default=60.0)
    parser.add_argument("--call-mb-s", type=float, default=300.0, help="one call's object read bandwidth, MB/s")
    parser.add_argument("--encode-ms", type=float, default=30.0, help="Worker CPU for the text tower")
    parser.add_argument("--worker-overhead-ms", type=float, default=3.0)
    parser.add_argument("--catalog-gets", type=float, default=0.0,
                        help="Worker record GETs per query (0: lists carry the records; k before)")
    parser.add_argument("--lambda-mb", type=int, default=2048)
    parser.add_argument("--arch", choices=["x86_64", "arm64"], default="x86_64")
    parser.add_argument("--store", choices=["s3", "r2"], default="s3")
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    args = parser.parse_args()
    if args.measured:
        with open(args.measured) as file:
            for key, value in json.load(file).items():
                attribute = key.replace("-", "_")
                if hasattr(args, attribute):
                    setattr(args, attribute, value)
    for name in ("warm_hit", "embed_hit"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            sys.exit(f"--{name.replace('_', '-')} must be within 0..1")

    storage_price = PRICES["r2_gb_month"] if args.store == "r2" else PRICES["s3_gb_month"]
    result = {"prices_read": PRICES_READ, "assumptions": {k: v for k, v in vars(args).items() if k not in ("measured", "json")}, "scales": {}}
    for scale, (n, nlist) in SCALES.items():
        query = per_query(args, n, nlist)
        storage_gb = n * bytes_per_vector(args) / 1e9
        query["storage_gb"] = storage_gb
        query["storage_per_month"] = storage_gb * storage_price
        result["scales"][scale] = query
    if args.json:
        print(json.dumps(result))
        return

    print(f"prices read {PRICES_READ}; {args.store.upper()} storage and reads, Lambda {args.arch} "
          f"{args.lambda_mb} MB; nprobe {args.nprobe}, {args.calls} scanner calls, warm-hit {args.warm_hit}, "
          f"embedding-cache hit {args.embed_hit}; {args.pq_m}×{args.pq_bits}-bit codes, {args.rerank_vectors} rerank")
    header = ["scale", "lists scanned", "codes", "call ms", "Worker req", "Worker CPU", "Lambda req",
              "Lambda GB-s", "reads", "$ / 1M queries", "storage GB", "$ / month idle"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for scale, query in result["scales"].items():
        d = query["dollars_per_m"]
        print(f"| {scale} | {args.nprobe} | {query['codes_scanned']:,.0f} | {query['call_ms']:.1f} | "
              f"{d['worker_requests']:.2f} | {d['worker_cpu']:.2f} | {d['lambda_requests']:.2f} | "
              f"{d['lambda_compute']:.2f} | {d['object_reads']:.2f} | **{query['total_per_m']:.2f}** | "
              f"{query['storage_gb']:,.0f} | {query['storage_per_month']:,.2f} |")
    print(f"\nfor comparison: S3 Vectors ${PRICES['s3_vectors_query_per_m']:.2f} per 1M queries plus per-TB "
          f"processed; Workers paid plan ${PRICES['workers_base_month']:.2f}/month base (not in the idle column).")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
