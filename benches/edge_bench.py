#!/usr/bin/env python3
"""The edge Worker inside workerd: per-stage timings (encode, probe, scan fan-out, merge) cold
and warm, isolate memory, and the .wasm size raw and gzip.

The stack is the developers' one: `clipedge local-stack up` (s3s-fs + `cargo lambda watch` with
the scanner + `wrangler dev` running worker/build), on loopback. The index is synthetic
(`clipedge datagen` + `clipedge build`), stamped with the model's fingerprint so the Worker
accepts text queries; the model is a B/32-architecture text tower with int8 weights stored as
ONNX external data, fetched from S3 by the Worker on its first text query.

    bash scripts/build-worker.sh
    cargo build --release -p clipedge -p clipedge-lambda
    python benches/edge_bench.py --clipedge ~/.cache/clipedge/target/release/clipedge \\
        --model models/clip-b32-random-int8-dynamic-ext

Cold = the first text query of a fresh isolate (model fetch + parse + optimize, generation
load, then the query); each cold start is a fresh `local-stack up`. Warm = later queries, p50
and p90 over the runs. Timings are the Worker's own (Server-Timing, `performance.now()`, which
workerd coarsens to 1 ms locally) plus the client's wall time. Memory: the wasm linear memory
the Worker reports, and the workerd process's peak RSS (an upper bound for the isolate: it
includes the runtime). Stdlib only.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from benchlib import BenchError, check_clipedge, die

REPO = Path(__file__).resolve().parent.parent
QUERIES = [
    "a dog",
    "a dog running on the beach",
    "two people riding bicycles through a forest at sunset",
    "a close-up photograph of a red apple on a wooden kitchen table next to a glass of milk",
    "an aerial view of a crowded city street at night with neon signs, rain reflections, taxis and "
    "people with umbrellas crossing in every direction",
]


def post(url: str, body: dict) -> tuple[int, dict, dict, float]:
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            payload = response.read()
            status, headers = response.status, dict(response.headers)
    except urllib.error.HTTPError as err:
        payload, status, headers = err.read(), err.code, dict(err.headers)
    wall_ms = (time.perf_counter() - started) * 1e3
    return status, json.loads(payload or b"{}"), headers, wall_ms


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.loads(response.read())


def server_timing(headers: dict) -> dict[str, float]:
    value = headers.get("server-timing") or headers.get("Server-Timing") or ""
    stages = {}
    for part in value.split(","):
        name, _, duration = part.strip().partition(";dur=")
        if name and duration:
            stages[name] = float(duration)
    return stages


def workerd_peak_rss_mib(wrangler_pid: int) -> float | None:
    """Peak RSS (VmHWM) of the workerd processes under wrangler's process group."""
    peaks = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if "workerd" not in cmdline or " serve " not in cmdline:
                continue
            if os.getpgid(int(proc.name)) != wrangler_pid:
                continue
            for line in (proc / "status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks.append(int(line.split()[1]) / 1024)
        except (OSError, ProcessLookupError):
            continue
    return max(peaks) if peaks else None


def run(cmd: list[str], **kwargs) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise BenchError(f"{' '.join(cmd[:3])} failed:\n{result.stderr[-3000:]}")
    return result.stdout


def card_of(model: Path) -> dict:
    card = {}
    for line in (model / "model.toml").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            card[key.strip()] = value.split("#")[0].strip().strip('"')
    return card


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clipedge", required=True, help="the clipedge binary (its clipedge-scanner beside it)")
    parser.add_argument("--model", type=Path, default=REPO / "models/clip-b32-random-int8-dynamic-ext")
    parser.add_argument("--n", type=int, default=100_000, help="index vectors")
    parser.add_argument("--nlist", type=int, default=512)
    parser.add_argument("--pq-m", type=int, default=64)
    parser.add_argument("--nprobe", type=int, default=32)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--colds", type=int, default=2, help="fresh stacks (cold isolates)")
    parser.add_argument("--warm", type=int, default=6, help="warm passes over the query texts")
    parser.add_argument("--work", type=Path, help="keep data here (default: a temporary directory)")
    args = parser.parse_args()
    try:
        clipedge = check_clipedge(args.clipedge)
        card = card_of(args.model)
        if "external_data" not in card:
            print("note: the model has no external data; the Worker holds the whole graph at once")
        work = args.work or Path(tempfile.mkdtemp(prefix="clipedge-edge-bench-"))
        work.mkdir(parents=True, exist_ok=True)
        dim = int(card["dim"])
        index = work / "index"
        if not (index / "CURRENT").exists():
            data = work / "data"
            run([clipedge, "datagen", "--n", str(args.n), "--dim", str(dim), "--queries", "10",
                 "--k", "10", "--out", str(data)])
            vectors = sorted(data.glob("base*"))[0]
            run([clipedge, "build", "--vectors", str(vectors), "--out", str(index),
                 "--nlist", str(args.nlist), "--pq-m", str(args.pq_m), "--pq-bits", "4",
                 "--model-id", card["name"], "--model-fingerprint", card["fingerprint"]])
        wasm = REPO / "worker/build/index_bg.wasm"
        wasm_bytes = wasm.read_bytes()
        print(f"worker wasm: {len(wasm_bytes) / 2**20:.1f} MiB raw, "
              f"{len(gzip.compress(wasm_bytes, 9)) / 2**20:.2f} MiB gzip -9")
        print(f"index: {args.n} x {dim}, nlist {args.nlist}, PQ m {args.pq_m} 4-bit; "
              f"query k {args.k} nprobe {args.nprobe}; model {card['name']}")

        colds, warm_stages, memory, rss = [], {}, [], []
        for cold_round in range(args.colds):
            state = work / f"stack-{cold_round}"
            subprocess.run([clipedge, "local-stack", "down", "--state", str(state)],
                           capture_output=True, cwd=REPO)
            stack = json.loads(run([clipedge, "local-stack", "up", "--port", "0", "--index", str(index),
                                    "--model", str(args.model), "--state", str(state)],
                                   cwd=REPO).strip().splitlines()[-1])
            try:
                url = stack["worker_url"] + "/v1/search"
                wrangler_pid = next(p["pid"] for p in stack["processes"] if p["name"] == "wrangler dev")
                status, body, headers, wall = post(url, {"text": QUERIES[1], "k": args.k, "nprobe": args.nprobe})
                if status != 200:
                    raise BenchError(f"cold query failed: HTTP {status} {body}")
                colds.append({**server_timing(headers), "client": wall})
                for _ in range(args.warm):
                    for text in QUERIES:
                        status, body, headers, wall = post(url, {"text": text, "k": args.k, "nprobe": args.nprobe})
                        if status != 200:
                            raise BenchError(f"warm query failed: HTTP {status} {body}")
                        stages = {**server_timing(headers), "client": wall}
                        for stage, ms in stages.items():
                            warm_stages.setdefault(stage, []).append(ms)
                memory.append(get(stack["worker_url"] + "/v1/health").get("memory_bytes", 0) / 2**20)
                peak = workerd_peak_rss_mib(wrangler_pid)
                if peak:
                    rss.append(peak)
            finally:
                subprocess.run([clipedge, "local-stack", "down", "--state", str(state)],
                               capture_output=True, cwd=REPO)

        stages = ["load", "encode", "probe", "scan", "merge", "total", "client"]
        print("\ncold start: model package fetch / encoder build (parse + attach weights + optimize), ms:")
        for cold in colds:
            print(f"  {cold.get('model-fetch', 0.0):8.1f} / {cold.get('model-build', 0.0):8.1f}")
        print("\ncold (first text query of a fresh isolate), ms:")
        print("  " + " ".join(f"{s:>8}" for s in stages))
        for cold in colds:
            print("  " + " ".join(f"{cold.get(s, 0.0):8.1f}" for s in stages))
        print(f"\nwarm ({len(warm_stages.get('client', []))} queries of 2-70 tokens), ms:")
        print("  " + " ".join(f"{s:>8}" for s in stages[1:]))
        for name, q in (("p50", 0.5), ("p90", 0.9)):
            print("  " + " ".join(f"{percentile(warm_stages.get(s, [0.0]), q):8.1f}" for s in stages[1:])
                  + f"  {name}")
        print(f"\nwasm linear memory after the model loaded: {max(memory):.1f} MiB")
        if rss:
            print(f"workerd peak RSS (runtime included): {max(rss):.0f} MiB")
    except BenchError as err:
        die(str(err))


if __name__ == "__main__":
    main()
