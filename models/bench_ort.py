#!/usr/bin/env python3
"""onnxruntime latency of text towers at several query lengths (1 thread): a reference point.

Why: the Rust crate runs the same graphs in tract; onnxruntime's single-thread
numbers on the same machine tell whether tract is in a sane range and what
each quantization variant costs or saves. Each package runs in its own
process so the peak RSS figure belongs to that model alone.

    python models/bench_ort.py models/clip-b32-random models/clip-b32-random-int8-dynamic \\
        models/clip-b32-random-int8-weights --tokens 4,10,32,77

Prints a Markdown table (ms = median of --runs after --warmup runs).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def ids_of_length(n: int, inputs: list[str], family: str) -> dict:
    """A BOS .. EOS-like id row of length n (content does not matter for latency)."""
    bos, eos = (49406, 49407) if family == "clip" else (101, 102)
    row = [bos] + [1000 + i for i in range(n - 2)] + [eos]
    feed = {"input_ids": np.array([row], dtype=np.int64),
            "attention_mask": np.ones((1, n), dtype=np.int64),
            "token_type_ids": np.zeros((1, n), dtype=np.int64)}
    return {k: feed[k] for k in inputs}


def bench_one(pkg: Path, tokens: list[int], runs: int, warmup: int, threads: int) -> dict:
    import tomllib

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import common

    card = tomllib.loads((pkg / "model.toml").read_text())
    t0 = time.perf_counter()
    sess = common.ort_session(pkg / "text.onnx", threads)
    load_ms = (time.perf_counter() - t0) * 1e3
    out = {"model": pkg.name, "quantization": card["quantization"],
           "size_mb": round(common.file_mb(pkg / "text.onnx"), 1), "load_ms": round(load_ms), "ms": {}}
    for n in tokens:
        feed = ids_of_length(n, card["inputs"], card["family"])
        for _ in range(warmup):
            sess.run(None, feed)
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            sess.run(None, feed)
            times.append((time.perf_counter() - t) * 1e3)
        out["ms"][n] = round(statistics.median(times), 2)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("packages", nargs="+", type=Path)
    ap.add_argument("--tokens", default="4,10,32,77")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    tokens = [int(t) for t in args.tokens.split(",")]

    if args.child:
        print(json.dumps(bench_one(args.packages[0], tokens, args.runs, args.warmup, args.threads)))
        return 0
    rows = []
    for pkg in args.packages:
        cmd = [sys.executable, __file__, str(pkg), "--child", "--tokens", args.tokens,
               "--runs", str(args.runs), "--warmup", str(args.warmup), "--threads", str(args.threads)]
        rows.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout))
    head = "| model | quantization | text.onnx MB | load ms | " + " | ".join(f"{n} tok ms" for n in tokens) + " | peak RSS MB |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        print(f"| {r['model']} | {r['quantization']} | {r['size_mb']} | {r['load_ms']} | "
              + " | ".join(str(r["ms"][str(n)] if str(n) in r["ms"] else r["ms"][n]) for n in tokens)
              + f" | {r['peak_rss_mb']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
