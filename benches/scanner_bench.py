#!/usr/bin/env python3
"""Scanner Lambda on loopback: cold vs warm invocation latency, scan throughput, GETs and bytes
per query at several nprobe.

Everything runs on 127.0.0.1: s3s-fs (S3 with SigV4), `clipedge build` writing the index to
s3://, and `cargo lambda watch --only-lambda-apis` with the release `clipedge-scanner` attached,
called through its function URL with HMAC-signed JSON requests. The index is flat (one list a
group), so a request names every group and the scanner ranks the fine lists itself.

    cargo build --release -p clipedge -p clipedge-lambda
    python benches/scanner_bench.py --data /tmp/bench-200k --nprobe 8,32,128

Three passes per nprobe over the same queries:
- cold start: a fresh scanner process, first invocation (generation open + every list);
- cold lists: list cache off (CLIPEDGE_LIST_CACHE_BYTES=0), generation open: every list a GET;
- warm: lists cached from an earlier pass: no GET.
Stdlib only. Tools default to the paths scripts/test.sh installs.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from benchlib import BenchError, check_clipedge, default_clipedge, die, int_list

SECRET = b"bench-secret"
ACCESS_KEY = "clipedge-bench"
SECRET_KEY = "clipedge-bench-secret"
BUCKET = "bench"
REPO = Path(__file__).resolve().parent.parent
TOOLS = Path.home() / ".cache" / "clipedge" / "tools"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, process: subprocess.Popen, what: str) -> None:
    deadline = time.time() + 60
    while time.time() < deadline:
        if process.poll() is not None:
            raise BenchError(f"{what} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"{what} did not listen on port {port}")


def read_fvecs(path: Path, limit: int) -> list[list[float]]:
    data = path.read_bytes()
    (dim,) = struct.unpack_from("<i", data, 0)
    row_bytes = 4 + 4 * dim
    rows = []
    for offset in range(0, min(len(data), limit * row_bytes), row_bytes):
        rows.append(list(struct.unpack_from(f"<{dim}f", data, offset + 4)))
    return rows


def stop(process: subprocess.Popen | None) -> None:
    if process is not None and process.poll() is None:
        process.kill()
        process.wait()


class Scanner:
    """The emulator plus one scanner process that can be restarted with other settings."""

    def __init__(self, cargo_lambda: str, scanner: str, env: dict[str, str], log_dir: Path):
        self.scanner = scanner
        self.env = env
        self.log_dir = log_dir
        self.port = free_port()
        self.emulator = subprocess.Popen(
            [cargo_lambda, "lambda", "watch", "--only-lambda-apis", "--ignore-changes",
             "-A", "127.0.0.1", "-P", str(self.port)],
            cwd=REPO / "lambda", stdout=subprocess.DEVNULL,
            stderr=open(log_dir / "emulator.log", "w"))
        wait_port(self.port, self.emulator, "cargo lambda watch")
        self.function: subprocess.Popen | None = None
        self.url = f"http://127.0.0.1:{self.port}/lambda-url/clipedge-scanner/scan"

    def restart(self, extra_env: dict[str, str]) -> None:
        stop(self.function)
        env = dict(os.environ, **self.env, **extra_env)
        env.update({
            "AWS_LAMBDA_RUNTIME_API": f"http://127.0.0.1:{self.port}/.rt/clipedge-scanner",
            "AWS_LAMBDA_FUNCTION_NAME": "clipedge-scanner",
            "AWS_LAMBDA_FUNCTION_VERSION": "1",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "2048",
            "CLIPEDGE_LOG": "warn",
        })
        self.function = subprocess.Popen(
            [self.scanner], env=env, stdout=subprocess.DEVNULL,
            stderr=open(self.log_dir / "function.log", "a"))

    def call(self, request: dict) -> tuple[float, dict]:
        body = json.dumps(request).encode()
        timestamp = str(int(time.time() * 1000))
        digest = hmac.new(SECRET, b"clipedge-scan-v1\n" + timestamp.encode() + b"\n" + body,
                          hashlib.sha256).hexdigest()
        http_request = urllib.request.Request(self.url, data=body, method="POST", headers={
            "content-type": "application/json",
            "x-clipedge-timestamp": timestamp,
            "x-clipedge-signature": "v1=" + digest,
        })
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(http_request, timeout=120) as answer:
                payload = answer.read()
        except urllib.error.HTTPError as error:
            raise BenchError(f"scanner answered {error.code}: {error.read()[:300]!r}") from error
        elapsed_ms = (time.perf_counter() - started) * 1000
        response = json.loads(payload)
        failed = [entry for entry in response["lists"] if entry["status"] != "Ok"]
        if failed:
            raise BenchError(f"lists failed: {failed[:3]}")
        return elapsed_ms, response

    def close(self) -> None:
        stop(self.function)
        stop(self.emulator)


def summarize(samples: list[tuple[float, dict]]) -> dict:
    latencies = sorted(ms for ms, _ in samples)
    stats = [response["stats"] for _, response in samples]
    count = len(samples)

    def mean(key: str) -> float:
        return sum(entry[key] for entry in stats) / count

    scan_s = sum(entry["scan_ms"] + entry["rerank_ms"] for entry in stats) / 1000
    codes = sum(entry["codes_scanned"] for entry in stats)
    return {
        "invocations": count,
        "latency_ms_p50": round(statistics.median(latencies), 2),
        "latency_ms_mean": round(sum(latencies) / count, 2),
        "scanner_total_ms_mean": round(mean("total_ms"), 2),
        "fetch_ms_mean": round(mean("fetch_ms"), 2),
        "scan_ms_mean": round(mean("scan_ms"), 3),
        "rerank_ms_mean": round(mean("rerank_ms"), 3),
        "gets_per_query": round(mean("gets"), 1),
        "bytes_per_query": int(mean("bytes_read")),
        "lists_per_query": round(mean("lists_scanned"), 1),
        "codes_per_query": int(mean("codes_scanned")),
        "m_codes_per_s": round(codes / scan_s / 1e6, 1) if scan_s > 0 else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("/tmp/bench-200k"),
                        help="clipedge datagen output (generated here when missing)")
    parser.add_argument("--n", type=int, default=200_000, help="vectors when generating")
    parser.add_argument("--nlist", type=int, default=1024)
    parser.add_argument("--pq-m", type=int, default=128)
    parser.add_argument("--pq-bits", type=int, default=4)
    parser.add_argument("--nprobe", type=int_list, default=[8, 32, 128])
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--rerank", type=int, default=20)
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--cold-starts", type=int, default=3)
    parser.add_argument("--clipedge", default=default_clipedge())
    parser.add_argument("--scanner", default=str(Path(os.environ.get(
        "CARGO_TARGET_DIR", Path.home() / ".cache/clipedge/target")) / "release/clipedge-scanner"))
    parser.add_argument("--s3s-fs", default=str(TOOLS / "bin/s3s-fs"))
    parser.add_argument("--cargo-lambda", default=str(TOOLS / "cargo-lambda/bin/cargo-lambda"))
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()

    clipedge = check_clipedge(args.clipedge)
    for tool in (args.scanner, args.s3s_fs, args.cargo_lambda):
        if not os.access(tool, os.X_OK):
            die(f"{tool} not found: run scripts/test.sh and "
                "`cargo build --release -p clipedge -p clipedge-lambda`")
    if not (args.data / "queries.fvecs").exists():
        subprocess.run([clipedge, "datagen", "--out", str(args.data), "--n", str(args.n),
                        "--dim", "512", "--queries", "200", "--k", "10", "--seed", "42"],
                       check=True, stdout=subprocess.DEVNULL)
    work = args.work or Path(tempfile.mkdtemp(prefix="scanner-bench-"))
    (work / "s3" / BUCKET).mkdir(parents=True, exist_ok=True)
    s3_port = free_port()
    s3 = subprocess.Popen([args.s3s_fs, "--host", "127.0.0.1", "--port", str(s3_port),
                           "--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY,
                           str(work / "s3")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    scanner = None
    try:
        wait_port(s3_port, s3, "s3s-fs")
        aws = {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}", "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": "us-east-1",
        }
        index = f"s3://{BUCKET}/index"
        built = subprocess.run(
            [clipedge, "build", "--vectors", str(args.data / "base.fvecs"), "--out", index,
             "--nlist", str(args.nlist), "--pq-m", str(args.pq_m), "--pq-bits",
             str(args.pq_bits), "--seed", "42"],
            env=dict(os.environ, **aws), check=True, capture_output=True, text=True)
        report = json.loads(built.stdout.strip().splitlines()[-1])
        print(f"index: {report['n']} x {report['d']}, nlist {report['nlist']}, "
              f"{report['index_bytes'] / 2**20:.0f} MiB, built in {report['build_s']:.0f} s",
              file=sys.stderr)
        queries = read_fvecs(args.data / "queries.fvecs", args.queries)
        scanner = Scanner(args.cargo_lambda, args.scanner,
                          dict(aws, CLIPEDGE_SCANNER_SECRET=SECRET.decode()), work)

        def request(query: list[float], nprobe: int, number: int) -> dict:
            return {
                "request_id": f"bench-{nprobe}-{number}", "index": index,
                "generation": report["generation"], "query": query,
                "targets": {"Groups": {"group_ids": list(range(report["ngroups"])),
                                       "nprobe": nprobe}},
                "k": args.k, "rerank": args.rerank, "deadline_ms": 60_000,
            }

        results = {"index": {key: report[key] for key in
                             ("n", "d", "nlist", "pq_m", "pq_bits", "rerank", "index_bytes")},
                   "k": args.k, "rerank": args.rerank, "queries": len(queries), "nprobe": {}}
        for nprobe in args.nprobe:
            cold_starts = []
            for number in range(args.cold_starts):
                scanner.restart({})
                cold_starts.append(scanner.call(request(queries[number], nprobe, number)))
            scanner.restart({"CLIPEDGE_LIST_CACHE_BYTES": "0"})
            scanner.call(request(queries[0], nprobe, -1))  # opens the generation
            cold = [scanner.call(request(q, nprobe, i)) for i, q in enumerate(queries)]
            scanner.restart({})
            for i, q in enumerate(queries):
                scanner.call(request(q, nprobe, i))  # fills the list cache
            warm = [scanner.call(request(q, nprobe, i)) for i, q in enumerate(queries)]
            entry = {
                "cold_start": summarize(cold_starts),
                "cold_lists": summarize(cold),
                "warm": summarize(warm),
            }
            # Bytes of the lists a query touches, over the warm in-scanner time.
            list_bytes = entry["cold_lists"]["bytes_per_query"]
            warm_compute_ms = entry["warm"]["scan_ms_mean"] + entry["warm"]["rerank_ms_mean"]
            entry["warm_list_gb_per_s"] = round(list_bytes / (warm_compute_ms / 1000) / 1e9, 2)
            results["nprobe"][nprobe] = entry
            print(f"nprobe {nprobe}: {json.dumps(entry)}", file=sys.stderr)

        print("| nprobe | cold start p50 | cold lists p50 (fetch) | warm p50 (scan + rerank) "
              "| GETs / bytes per query (cold) | warm M codes/s | list GB/s (warm) |")
        print("|---|---|---|---|---|---|---|")
        for nprobe, entry in results["nprobe"].items():
            cold_start, cold, warm = entry["cold_start"], entry["cold_lists"], entry["warm"]
            print(f"| {nprobe} | {cold_start['latency_ms_p50']} ms "
                  f"| {cold['latency_ms_p50']} ms ({cold['fetch_ms_mean']} ms) "
                  f"| {warm['latency_ms_p50']} ms ({warm['scan_ms_mean']} + "
                  f"{warm['rerank_ms_mean']} ms) "
                  f"| {cold['gets_per_query']} / {cold['bytes_per_query'] / 2**20:.1f} MiB "
                  f"| {warm['m_codes_per_s']} | {entry['warm_list_gb_per_s']} |")
        print(json.dumps(results))
    except BenchError as error:
        die(str(error))
    finally:
        if scanner is not None:
            scanner.close()
        stop(s3)


if __name__ == "__main__":
    main()
