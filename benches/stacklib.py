"""What the benchmarks that drive the local serverless stack share: starting and stopping
`clipedge-dev local-stack`, one keep-alive client of the Worker's `/v1/search`, seeded Zipf
streams, `.fvecs`/`.ivecs` reading and percentiles. Stdlib only."""

from __future__ import annotations

import bisect
import http.client
import json
import random
import struct
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

from benchlib import BenchError

REPO = Path(__file__).resolve().parent.parent


def run(command: list[str], **kwargs) -> str:
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise BenchError(f"{' '.join(map(str, command[:3]))} failed:\n{result.stderr[-3000:]}")
    return result.stdout


def read_vecs(path: Path, kind: str) -> list[list]:
    """`.fvecs` (`kind` "f") or `.ivecs` ("i"): each row a little-endian i32 width, then the row."""
    data = path.read_bytes()
    (width,) = struct.unpack_from("<i", data, 0)
    row = 4 + 4 * width
    return [list(struct.unpack_from(f"<{width}{kind}", data, offset + 4))
            for offset in range(0, len(data), row)]


def read_fvecs(path: Path) -> list[list[float]]:
    return read_vecs(path, "f")


def zipf_stream(distinct: int, length: int, seed: int) -> list[int]:
    """`length` draws of Zipf(1.0) over `distinct` queries; popularity ranks are shuffled onto
    query indices so the popular queries are not the first rows of the file."""
    rng = random.Random(seed)
    cumulative, total = [], 0.0
    for rank in range(1, distinct + 1):
        total += 1.0 / rank
        cumulative.append(total)
    by_rank = list(range(distinct))
    rng.shuffle(by_rank)
    return [by_rank[min(bisect.bisect_left(cumulative, rng.random() * total), distinct - 1)]
            for _ in range(length)]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


class Worker:
    """One keep-alive connection to the Worker's /v1/search."""

    def __init__(self, url: str):
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port
        self.connection = http.client.HTTPConnection(self.host, self.port, timeout=120)
        self.last_headers: dict[str, str] = {}

    def search(self, body: dict) -> tuple[dict, float]:
        payload = json.dumps(body)
        for attempt in range(2):
            started = time.perf_counter()
            try:
                self.connection.request("POST", "/v1/search", payload,
                                        {"content-type": "application/json"})
                response = self.connection.getresponse()
                data = response.read()
            except (http.client.HTTPException, OSError):
                # wrangler dev may close an idle keep-alive connection: reconnect once.
                self.connection.close()
                self.connection = http.client.HTTPConnection(self.host, self.port, timeout=120)
                if attempt:
                    raise
                continue
            wall_ms = (time.perf_counter() - started) * 1e3
            if response.status != 200:
                raise BenchError(f"HTTP {response.status}: {data[:500]!r}")
            self.last_headers = {name.lower(): value for name, value in response.getheaders()}
            return json.loads(data), wall_ms
        raise AssertionError("unreachable")


class Stack:
    def __init__(self, clipedge_dev: str, index: Path, state: Path, options: list[str]):
        self.clipedge_dev, self.state = clipedge_dev, state
        subprocess.run([clipedge_dev, "local-stack", "down", "--state", str(state)],
                       capture_output=True, cwd=REPO)
        self.info = json.loads(run([clipedge_dev, "local-stack", "up", "--port", "0", "--index",
                                    str(index), "--state", str(state), *options],
                                   cwd=REPO).strip().splitlines()[-1])

    def scanner_logs(self) -> list[Path]:
        return [Path(p["log"]) for p in self.info["processes"] if p["command_word"] == "clipedge-scanner"]

    def down(self) -> None:
        subprocess.run([self.clipedge_dev, "local-stack", "down", "--state", str(self.state)],
                       capture_output=True, cwd=REPO)


def read_ivecs(path: Path) -> list[list[int]]:
    return read_vecs(path, "i")


def server_timing(header: str) -> dict[str, float]:
    """`name;dur=1.5, other;desc=x` → {"name": 1.5} (entries without a duration are left out)."""
    timings = {}
    for entry in header.split(","):
        name, _, params = entry.strip().partition(";")
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip() == "dur":
                try:
                    timings[name.strip()] = float(value)
                except ValueError:
                    pass
    return timings
