#!/usr/bin/env python3
"""The edge Worker inside workerd: the text tower's encode time by token count, the cold start
(model fetch, model build, first query), per-stage timings, isolate memory and the .wasm size.

The stack is the developers' one: `clipedge-dev local-stack up` (s3s-fs + `cargo lambda watch` with
the scanner + `wrangler dev` running worker/build), on loopback. The index is synthetic
(`clipedge datagen` + `clipedge build`), stamped with the model's fingerprint so the Worker
accepts text queries; the model is a B/32-architecture text tower for the int8 engine
(`clipedge model synth`: seeded weights, the real CLIP tokenizer), fetched from S3 by the Worker
on its first text query. `bash benches/edge_bench.sh` builds everything and runs this.

Cold = the first text query of a fresh isolate (model fetch + build, generation load, then the
query); each cold start is a fresh `local-stack up`. Warm = later queries with distinct texts of
exactly 4, 10, 32 and 77 tokens (the Worker reports the count it ran), p50 and p90. Timings are the Worker's own (Server-Timing, `performance.now()`, which
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
TOKEN_COUNTS = [4, 10, 32, 77]
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
        name, _, rest = part.strip().partition(";")
        for field in rest.split(";"):
            key, _, number = field.partition("=")
            if key in ("dur", "desc"):
                try:
                    stages[name] = float(number)
                except ValueError:
                    stages[name] = stages.get(name, 0.0)
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


def single_token_words(model: Path) -> list[str]:
    """Lowercase words the CLIP vocabulary holds whole (each one token after BPE)."""
    vocab = json.loads((model / "tokenizer.json").read_text())["model"]["vocab"]
    words = [key[:-4] for key in vocab if key.endswith("</w>") and key[:-4].isascii()
             and key[:-4].isalpha() and key[:-4].islower() and 3 <= len(key) - 4 <= 8]
    return sorted(words)


def text_of_tokens(words: list[str], tokens: int, serial: int) -> str:
    """A distinct text of `tokens` positions (start and end tokens included): no cache hits."""
    count = max(1, tokens - 2) if tokens < 77 else 90  # 77: over-long, truncated by the model
    step = 7919  # a prime: the serial walks the word list without repeats
    return " ".join(words[(serial * step + i * 104729) % len(words)] for i in range(count))


def summary(values: list[float]) -> dict:
    return {"p50": round(percentile(values, 0.5), 2), "p90": round(percentile(values, 0.9), 2),
            "n": len(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clipedge", required=True,
                        help="the clipedge binary (clipedge-dev and clipedge-scanner beside it)")
    parser.add_argument("--model", type=Path, required=True, help="a CLIP-family int8 model package")
    parser.add_argument("--n", type=int, default=100_000, help="index vectors")
    parser.add_argument("--nlist", type=int, default=512)
    parser.add_argument("--pq-m", type=int, default=64)
    parser.add_argument("--nprobe", type=int, default=32)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--colds", type=int, default=2, help="fresh stacks (cold isolates)")
    parser.add_argument("--warm", type=int, default=20, help="warm queries per token count")
    parser.add_argument("--work", type=Path, help="keep data here (default: a temporary directory)")
    args = parser.parse_args()
    try:
        clipedge = check_clipedge(args.clipedge)
        # The local stack is a developer tool, built into the same directory as clipedge.
        clipedge_dev = check_clipedge(str(Path(clipedge).with_name("clipedge-dev")))
        card = card_of(args.model)
        words = single_token_words(args.model)
        work = args.work or Path(tempfile.mkdtemp(prefix="clipedge-edge-bench-"))
        work.mkdir(parents=True, exist_ok=True)
        dim = int(card["dim"])
        index = work / f"index-{card['fingerprint']}"
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
        print(f"worker wasm: {len(wasm_bytes) / 2**20:.2f} MiB raw, "
              f"{len(gzip.compress(wasm_bytes, 9)) / 2**20:.2f} MiB gzip -9")
        print(f"index: {args.n} x {dim}, nlist {args.nlist}, PQ m {args.pq_m} 4-bit; "
              f"query k {args.k} nprobe {args.nprobe}; model {card['name']}")

        colds, warm_stages, encode_by_tokens, memory, rss = [], {}, {}, [], []
        text_kernel = "unknown"
        # The encode stage split: the tower alone (tokenize + forward) and the edge Cache API.
        tower_by_tokens, edge_cache_by_tokens, tokenize_by_tokens = {}, {}, {}
        cache_hits = 0
        serial = 0
        for cold_round in range(args.colds):
            state = work / f"stack-{cold_round}"
            subprocess.run([clipedge_dev, "local-stack", "down", "--state", str(state)],
                           capture_output=True, cwd=REPO)
            stack = json.loads(run([clipedge_dev, "local-stack", "up", "--port", "0", "--index", str(index),
                                    "--model", str(args.model), "--state", str(state)],
                                   cwd=REPO).strip().splitlines()[-1])
            try:
                url = stack["worker_url"] + "/v1/search"
                wrangler_pid = next(p["pid"] for p in stack["processes"] if p["name"] == "wrangler dev")
                status, body, headers, wall = post(url, {"text": QUERIES[1] + f" {cold_round}",
                                                         "k": args.k, "nprobe": args.nprobe})
                if status != 200:
                    raise BenchError(f"cold query failed: HTTP {status} {body}")
                colds.append({**server_timing(headers), "client": wall})
                health = get(stack["worker_url"] + "/v1/health")
                memory.append(health.get("memory_bytes", 0) / 2**20)
                text_kernel = health.get("text_kernel", "unknown")
                for tokens in TOKEN_COUNTS:
                    for _ in range(args.warm):
                        serial += 1
                        text = text_of_tokens(words, tokens, serial)
                        status, body, headers, wall = post(url, {"text": text, "k": args.k, "nprobe": args.nprobe})
                        if status != 200:
                            raise BenchError(f"warm query failed: HTTP {status} {body}")
                        stages = {**server_timing(headers), "client": wall}
                        ran = int(stages.get("tokens", 0)) or tokens
                        encode_by_tokens.setdefault(ran, []).append(stages.get("encode", 0.0))
                        tower_by_tokens.setdefault(ran, []).append(stages.get("tower", 0.0))
                        tokenize_by_tokens.setdefault(ran, []).append(stages.get("tokenize", 0.0))
                        edge_cache_by_tokens.setdefault(ran, []).append(stages.get("edge-cache", 0.0))
                        for stage, ms in stages.items():
                            warm_stages.setdefault(stage, []).append(ms)
                # The same text again: the isolate's embedding cache answers, no encode.
                status, body, headers, wall = post(url, {"text": text, "k": args.k, "nprobe": args.nprobe})
                if "encode-cache" in (headers.get("server-timing") or headers.get("Server-Timing") or ""):
                    cache_hits += 1
                memory.append(get(stack["worker_url"] + "/v1/health").get("memory_bytes", 0) / 2**20)
                peak = workerd_peak_rss_mib(wrangler_pid)
                if peak:
                    rss.append(peak)
            finally:
                subprocess.run([clipedge_dev, "local-stack", "down", "--state", str(state)],
                               capture_output=True, cwd=REPO)

        stages = ["load", "encode", "probe", "scan", "merge", "total", "client"]
        print("\ncold start: model package fetch / model build, ms:")
        for cold in colds:
            print(f"  {cold.get('model-fetch', 0.0):8.1f} / {cold.get('model-build', 0.0):8.1f}")
        print("\ncold (first text query of a fresh isolate), ms:")
        print("  " + " ".join(f"{s:>8}" for s in stages))
        for cold in colds:
            print("  " + " ".join(f"{cold.get(s, 0.0):8.1f}" for s in stages))
        print("\nwarm encode in workerd by token count, ms (encode = tower + edge cache + the rest;"
              " first = the first three of each cold round's series, in order):")
        print(f"  {'tokens':>6} {'p50':>8} {'p90':>8} {'n':>5} {'tower50':>8} {'tower90':>8}"
              f" {'cache50':>8}  first towers")
        encode_summary, tower_summary, edge_cache_summary = {}, {}, {}
        for tokens in sorted(encode_by_tokens):
            figures = summary(encode_by_tokens[tokens])
            tower = summary(tower_by_tokens[tokens])
            cache = summary(edge_cache_by_tokens[tokens])
            encode_summary[str(tokens)] = figures
            tower_summary[str(tokens)] = tower
            edge_cache_summary[str(tokens)] = cache
            series = tower_by_tokens[tokens]
            firsts = [series[i * args.warm:i * args.warm + 3] for i in range(args.colds)]
            print(f"  {tokens:>6} {figures['p50']:8.2f} {figures['p90']:8.2f} {figures['n']:>5}"
                  f" {tower['p50']:8.2f} {tower['p90']:8.2f} {cache['p50']:8.2f}  {firsts}")
        print(f"\nwarm, all token counts ({len(warm_stages.get('client', []))} queries), ms:")
        print("  " + " ".join(f"{s:>8}" for s in stages[1:]))
        for name, q in (("p50", 0.5), ("p90", 0.9)):
            print("  " + " ".join(f"{percentile(warm_stages.get(s, [0.0]), q):8.1f}" for s in stages[1:])
                  + f"  {name}")
        print(f"\nrepeated text answered from the isolate's embedding cache: {cache_hits} of {len(colds)}")
        print(f"wasm linear memory: {memory[0]:.1f} MiB after the first text query, "
              f"{max(memory):.1f} MiB at the end")
        if rss:
            print(f"workerd peak RSS (runtime included): {max(rss):.0f} MiB")
        print(f"text tower GEMM kernel: {text_kernel}")
        result = {
            "model": card["name"],
            "wasm_bytes": len(wasm_bytes),
            "wasm_memory_peak_mib": round(max(memory), 2),
            "model_fetch_ms": [round(cold.get("model-fetch", 0.0), 2) for cold in colds],
            "model_build_ms": round(max(cold.get("model-build", 0.0) for cold in colds), 2),
            "cold_first_query_ms": round(max(cold.get("total", 0.0) for cold in colds), 2),
            "cold_first_query_without_fetch_ms": round(
                max(cold.get("total", 0.0) - cold.get("model-fetch", 0.0) for cold in colds), 2),
            "encode_p50_ms": {tokens: figures["p50"] for tokens, figures in encode_summary.items()},
            "encode_p90_ms": {tokens: figures["p90"] for tokens, figures in encode_summary.items()},
            "tower_p50_ms": {tokens: figures["p50"] for tokens, figures in tower_summary.items()},
            "tower_p90_ms": {tokens: figures["p90"] for tokens, figures in tower_summary.items()},
            "edge_cache_p50_ms": {tokens: f["p50"] for tokens, f in edge_cache_summary.items()},
            "tokenize_p50_ms": {str(tokens): summary(values)["p50"]
                                for tokens, values in sorted(tokenize_by_tokens.items())},
            "embedding_cache_hits": cache_hits,
            "workerd_peak_rss_mib": round(max(rss), 1) if rss else None,
            "text_kernel": text_kernel,
        }
        print(json.dumps(result))
    except BenchError as err:
        die(str(err))


if __name__ == "__main__":
    main()
