"""Shared helpers for the Python benchmark drivers (faiss_compare.py, sweep.py).

Stdlib + numpy only (numpy is imported lazily so that sweep.py runs without it).
Nothing here touches the network.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path


class BenchError(RuntimeError):
    """A failure worth a one-line message rather than a traceback."""


def die(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _number_list(text: str, convert, noun: str) -> list:
    try:
        values = [convert(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError as err:
        raise ValueError(f"expected a comma-separated list of {noun}s, got {text!r}") from err
    if not values:
        raise ValueError(f"expected at least one {noun}")
    return values


def int_list(text: str) -> list[int]:
    return _number_list(text, int, "integer")


def float_list(text: str) -> list[float]:
    return _number_list(text, float, "number")


def default_clipedge() -> str:
    """target/release/clipedge of this repository, else `clipedge` on PATH."""
    repo_binary = Path(__file__).resolve().parent.parent / "target" / "release" / "clipedge"
    if repo_binary.exists():
        return str(repo_binary)
    return shutil.which("clipedge") or str(repo_binary)


def check_clipedge(path: str) -> str:
    resolved = shutil.which(path) if os.sep not in path else path
    if not resolved or not os.path.isfile(resolved) or not os.access(resolved, os.X_OK):
        raise BenchError(
            f"clipedge binary {path!r} not found or not executable; build it with "
            "`cargo build --release -p clipedge` or pass --clipedge PATH"
        )
    return os.path.abspath(resolved)


def file_sha256(path: str, limit: int = 1 << 30) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        remaining = limit
        while remaining > 0:
            chunk = handle.read(min(1 << 20, remaining))
            if not chunk:
                break
            digest.update(chunk)
            remaining -= len(chunk)
    return digest.hexdigest()


def check_data_dir(data: str, names: list[str]) -> dict[str, str]:
    if not os.path.isdir(data):
        raise BenchError(
            f"data dir {data!r} does not exist; create it with "
            "`clipedge datagen --out DIR --n N --dim 512 --queries Q --k 100 --seed 42`"
        )
    paths = {}
    for name in names:
        path = os.path.join(data, name)
        if not os.path.isfile(path):
            raise BenchError(f"{path} is missing (expected output of `clipedge datagen`)")
        paths[name] = path
    return paths


def vecs_shape(path: str, itemsize: int = 4) -> tuple[int, int]:
    """(rows, dim) of an .fvecs/.ivecs file from its first header and its size."""
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        header = handle.read(4)
    if len(header) != 4:
        raise BenchError(f"{path} is empty")
    dim = int.from_bytes(header, "little", signed=True)
    row = 4 + dim * itemsize
    if dim <= 0 or size % row:
        raise BenchError(f"{path}: size {size} is not a multiple of the row size {row} (dim {dim})")
    return size // row, dim


def write_prefix(src: str, dst: str, rows: int) -> int:
    """Copy the first `rows` rows of an .fvecs/.ivecs file (fixed-size rows) to dst."""
    total, dim = vecs_shape(src)
    rows = min(rows, total)
    with open(src, "rb") as inp, open(dst, "wb") as out:
        out.write(inp.read(rows * (4 + 4 * dim)))
    return rows


def read_vecs(path: str, dtype: str):
    """Read an .fvecs ('float32') or .ivecs ('int32') file into a C-contiguous (n, d) array."""
    import numpy as np

    rows, dim = vecs_shape(path)
    raw = np.memmap(path, dtype="<i4", mode="r", shape=(rows, dim + 1))
    if not np.all(raw[:, 0] == dim):
        raise BenchError(f"{path}: rows do not all have dimension {dim}")
    body = raw[:, 1:]
    if dtype == "float32":
        out = np.ascontiguousarray(body).view("<f4")
    else:
        out = np.ascontiguousarray(body)
    del raw
    return out


def last_json_line(text: str, what: str) -> dict:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                break
    raise BenchError(f"{what}: no JSON summary on the last stdout line:\n{text[-2000:]}")


def run_clipedge(binary: str, args: list[str], log_path: str | None, what: str,
                 retries: int = 3) -> dict:
    """Run the clipedge CLI, tee its output into log_path, return its last-line JSON.

    ETXTBSY / a missing binary (the binary is being rebuilt) is retried a few times.
    """
    command = [binary] + args
    for attempt in range(retries + 1):
        started = time.perf_counter()
        try:
            proc = subprocess.run(command, capture_output=True, text=True,
                                  env=dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn")))
        except OSError as err:  # text file busy / missing while the lead rebuilds it
            if attempt < retries:
                print(f"  ({what}: {err}; retrying in 30 s)", file=sys.stderr)
                time.sleep(30)
                continue
            raise BenchError(f"{what}: cannot run {binary}: {err}") from err
        wall = time.perf_counter() - started
        if log_path:
            with open(log_path, "a") as log:
                log.write(f"$ {' '.join(command)}\n# exit {proc.returncode}, wall {wall:.2f}s\n")
                log.write(proc.stdout)
                if proc.stderr:
                    log.write("# stderr\n" + proc.stderr[-20000:])
                log.write("\n")
        if proc.returncode != 0:
            raise BenchError(
                f"{what} failed (exit {proc.returncode}): {' '.join(command)}\n"
                f"{(proc.stderr or proc.stdout)[-3000:]}"
            )
        summary = last_json_line(proc.stdout, what)
        summary["_wall_s"] = wall
        return summary
    raise AssertionError("unreachable")


def clipedge_build(binary: str, command: list[str], out_dir: str, log_path: str, marker: str,
                   what: str) -> dict:
    """Run a `clipedge build`, add where the index went and its size, and save the report at
    `marker` (its presence lets --reuse skip the build next time)."""
    report = run_clipedge(binary, command, log_path, what)
    report["dir"] = out_dir
    report["dir_bytes"] = dir_bytes(out_dir)
    write_json(marker, report)
    return report


def dir_bytes(path: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            total += os.path.getsize(os.path.join(root, name))
    return total


def machine_info() -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    flags = ""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = line
                    break
    except OSError:
        pass
    simd = [f for f in ("avx2", "fma", "avx512f", "avx512bw", "avx512vnni") if f" {f}" in flags]
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "simd": simd,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def markdown_table(headers: list[str], rows: list[list]) -> str:
    def cell(value) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            if value != value:  # NaN
                return "-"
            if abs(value) >= 100:
                return f"{value:.0f}"
            if abs(value) >= 10:
                return f"{value:.1f}"
            return f"{value:.3f}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(cell(value) for value in row) + " |")
    return "\n".join(lines)


def write_json(path: str, payload: dict) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(payload, handle, indent=2, sort_keys=False)
        handle.write("\n")
    os.replace(tmp, path)


def cheapest_reaching(points: list[dict], target: float, cost_key: str = "p50_ms") -> dict | None:
    """The point with recall >= target and the lowest cost, or None."""
    eligible = [p for p in points if p.get("recall") is not None and p["recall"] >= target]
    if not eligible:
        return None
    return min(eligible, key=lambda p: p[cost_key])


def pareto_frontier(points: list[dict], cost_key: str = "p50_ms") -> list[dict]:
    """Points not dominated in (lower cost, higher recall), cheapest first."""
    frontier = []
    for point in sorted(points, key=lambda p: (p[cost_key], -p["recall"])):
        if point.get("recall") is None:
            continue
        if not frontier or point["recall"] > frontier[-1]["recall"]:
            frontier.append(point)
    return frontier


def interpolated_cost(points: list[dict], target: float, cost_key: str = "p50_ms") -> float | None:
    """Cost at recall `target` on the Pareto frontier, interpolating log(cost) linearly in
    recall between the two frontier points around the target. Damps the grid artifacts of
    "cheapest configuration reaching the target". None if no point reaches the target."""
    import math

    frontier = pareto_frontier(points, cost_key)
    if not frontier or frontier[-1]["recall"] < target:
        return None
    if frontier[0]["recall"] >= target:
        return frontier[0][cost_key]
    for low, high in zip(frontier, frontier[1:]):
        if low["recall"] < target <= high["recall"]:
            weight = (target - low["recall"]) / (high["recall"] - low["recall"])
            return math.exp((1 - weight) * math.log(low[cost_key]) + weight * math.log(high[cost_key]))
    return None
