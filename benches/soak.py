#!/usr/bin/env python3
"""Load and fault soak of the local serverless stack: wrk against the Worker while the scanner,
the Lambda emulator and the S3 server are killed and restarted, or frozen; every answer checked.

`benches/soak.sh` builds everything and runs this. The stack is the developers' one
(`clipedge-dev local-stack up`: s3s-fs, `cargo lambda watch` with the scanner attached, `wrangler
dev` running worker/build in workerd) on the demo index, in its own state directory; `clipedge
serve` on the same index is the reference. One wrk run (one connection per thread) goes through
three phases by the clock:

- warm-up: no faults; every answer must be complete and equal to the reference;
- faults: the scanner, the S3 server and the emulator are each killed (SIGKILL) and, after a
  while, started again with the same command line, environment and port; then the S3 server
  (for longer than the Worker's request deadline) and the scanner are frozen (SIGSTOP: their
  sockets accept, nothing answers) and thawed, and the S3 server stutters (two freezes 0.4 s
  apart). Every answer must be complete and equal to the
  reference, or `partial` with its failed lists and consistent with the reference, or a
  documented 5xx (`{"error": {"code", "message"}}` with the code's status);
- quiet: no faults, after the last thaw has had time to recover; as in warm-up.

Anything else is a wrong answer and fails the run (exit 1), as does any error outside the fault
phase, an answer later than the Worker's deadline (20 s) + 2 s, any wrk socket error, or memory
growth: a process's resident set at the end of the quiet phase over 1.2 × its value at the end
of warm-up + 20 MiB (per component and program, restarted processes included), the Worker's wasm
linear memory (from /v1/health) likewise. workerd is judged against a control: `wrangler dev`
runs two workerd processes, the entry proxy (wrangler's own code, on the Worker's URL) and the
one running the Worker, and both grow under load in this dev runtime — on /v1/health alone,
which allocates nothing that outlives the request, each went from ~100 MiB to ~600 MiB over
40k requests before levelling off — so the Worker's may grow at most 1.5 × the proxy's growth
+ 50 MiB. Prints a table per phase, the faults with the time to the first complete answer
after each restart, the 5xx messages by kind, the memory table and, last on stdout, one JSON
line. Stdlib only.

The requests alternate between two kinds, both with `dedup: false`:

- `vector`: the text's embedding from `clipedge embed` (native). The Worker and `clipedge serve`
  scan identically, so the reference is `clipedge serve`'s answer and scores must agree to 1e-6.
- `text`: the Worker encodes it (the int8 tower in wasm), which differs from the native encoder
  by up to ~1e-2 in score, so ids near the cut may change. The reference is the Worker's own
  answer taken before the load starts (the encoder is deterministic), itself checked against
  `clipedge serve`'s: ≥ 80 % of the ids shared, shared ids' scores within 1e-2.

With `dedup: false` a partial answer is exactly the best hits of the lists that answered, so every
hit it shares with the reference has the reference's score and none it adds can score above the
reference's last hit (with de-duplication on, a hit whose better duplicate sat in a failed list
may rightly appear); its ids must be items of the index with the reference's captions and URLs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

from benchlib import BenchError, check_clipedge, die, machine_info, markdown_table

REPO = Path(__file__).resolve().parent.parent
# Scores of the same scan on both fronts (JSON of the same f32 values).
SCORE_TOLERANCE = 1e-6
# The Worker's text answers against clipedge serve's (int8 tower in wasm vs the native encoder).
TEXT_SCORE_TOLERANCE = 1e-2
TEXT_MIN_OVERLAP = 0.8
MIB = 1024 * 1024
# A process "grew" when its resident set at the end exceeds this many times its warm value plus
# the slack below (allocators keep some freed memory; a leak at this load shows as steady growth).
GROWTH_FACTOR = 1.2
GROWTH_SLACK_MIB = 20.0
# The Worker's request deadline (CLIPEDGE_REQUEST_DEADLINE_MS, default 20 s) plus slack for the
# answer's way back: an answer later than this broke the documented bound.
LATE_MS = 22_000
# wrangler dev's two workerd processes, and how much more the Worker's may grow than the proxy's.
ENTRY_PROXY = "(entry proxy)"
WORKER_RUNTIME = "(Worker)"
WORKERD_GROWTH_FACTOR = 1.5
WORKERD_SLACK_MIB = 50.0
# The API's 5xx answers (README "API"): the code and the status it is sent with.
DOCUMENTED_5XX = {"internal": 500, "scanners_failed": 502, "storage_unavailable": 503,
                  "overloaded": 503, "timeout": 504}

QUERIES = [
    "a horse", "a red apple", "an electric guitar", "a butterfly", "riding a bike", "a penguin",
    "a house with a garden", "a world map", "a smiling face", "a cup of coffee", "a dog on a beach",
    "a cat sleeping on a sofa", "a bowl of fruit", "a sailing boat", "a mountain lake",
    "a city at night", "a plate of pasta", "a birthday cake", "a red car", "a train station",
    "an old castle", "a snowy forest", "a child playing football", "a wooden chair",
    "a vase of flowers", "a hot air balloon", "a lighthouse", "a bridge over a river",
    "a desert with cactus", "an airplane in the sky", "a bicycle against a wall", "a pizza",
    "a laptop on a desk", "a group of people dancing", "a tiger", "an elephant", "a violin",
    "a stack of books", "a cartoon character", "a black and white photo", "a wedding dress",
    "a pair of shoes", "a clock tower", "a fish in an aquarium", "a tree in autumn",
    "a bottle of wine", "a soldier", "a kitchen", "a logo", "fireworks",
]


def now() -> float:
    return time.time()


def http(method: str, url: str, body: dict | None = None, timeout: float = 60) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def read_proc(pid: int, name: str) -> bytes | None:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as handle:
            return handle.read()
    except OSError:
        return None


def has_exited(pid: int) -> bool:
    """Gone, or a zombie (PID 1 of a container may never reap what it inherits)."""
    stat = read_proc(pid, "stat")
    if stat is None:
        return True
    return stat.rsplit(b")", 1)[-1].split()[0] == b"Z"


def wait_for_port(port: int, seconds: float) -> bool:
    deadline = now() + seconds
    while now() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            time.sleep(0.1)
    return False


class Component:
    """A process of the stack, with what it takes to start it again exactly as `up` did."""

    def __init__(self, name: str, pid: int, log: str):
        self.name = name
        self.pid = pid
        self.log = log
        cmdline = read_proc(pid, "cmdline")
        environ = read_proc(pid, "environ")
        if not cmdline or environ is None:
            raise BenchError(f"{name} (pid {pid}) is not running")
        self.argv = [part.decode() for part in cmdline.rstrip(b"\0").split(b"\0")]
        self.env = dict(entry.decode().split("=", 1) for entry in environ.split(b"\0")
                        if b"=" in entry)
        self.cwd = os.readlink(f"/proc/{pid}/cwd")
        self.child: subprocess.Popen | None = None
        self.restarts = 0

    def port(self) -> int | None:
        """The port the command line names (`--port N` or `-P N`)."""
        for flag, value in zip(self.argv, self.argv[1:]):
            if flag in ("--port", "-P"):
                return int(value)
        return None

    def kill(self) -> None:
        # Its own process group (`up` and restart both start one): children go too.
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        deadline = now() + 10
        while not has_exited(self.pid) and now() < deadline:
            time.sleep(0.05)
        if self.child is not None:
            self.child.wait(timeout=10)

    def signal(self, number: int) -> None:
        try:
            os.killpg(self.pid, number)
        except ProcessLookupError:
            pass

    def start(self) -> None:
        with open(self.log, "ab") as log:
            log.write(f"\n--- soak.py: restarted at {datetime.now(timezone.utc).isoformat()}\n"
                      .encode())
            self.child = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd,
                                          stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                          start_new_session=True)
        self.pid = self.child.pid
        self.restarts += 1
        port = self.port()
        if port is not None and not wait_for_port(port, 30):
            raise BenchError(f"restarted {self.name} does not listen on port {port}")


class Stack:
    """`clipedge-dev local-stack up`/`down` in a state directory of its own."""

    def __init__(self, clipedge_dev: str, state: Path):
        self.clipedge_dev = clipedge_dev
        self.state = state
        self.info: dict = {}
        self.components: dict[str, Component] = {}

    def up(self) -> None:
        if (self.state / "stack.json").exists():
            self.down()
        result = subprocess.run([self.clipedge_dev, "local-stack", "up", "--port", "0",
                                 "--state", str(self.state)],
                                cwd=REPO, capture_output=True, text=True)
        if result.returncode != 0:
            raise BenchError(f"local-stack up failed:\n{result.stderr[-4000:]}")
        self.info = json.loads(result.stdout.strip().splitlines()[-1])
        for process in self.info["processes"]:
            self.components[process["name"]] = Component(process["name"], process["pid"],
                                                         process["log"])

    def record_pids(self) -> None:
        """Writes restarted processes' PIDs into stack.json, so `down` stops them."""
        path = self.state / "stack.json"
        stack = json.loads(path.read_text())
        for process in stack["processes"]:
            component = self.components.get(process["name"])
            if component is not None:
                process["pid"] = component.pid
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(stack, indent=2))
        temporary.replace(path)

    def down(self) -> None:
        for component in self.components.values():
            component.signal(signal.SIGCONT)  # a frozen process cannot act on `down`'s SIGTERM
        subprocess.run([self.clipedge_dev, "local-stack", "down", "--state", str(self.state)],
                       cwd=REPO, capture_output=True, text=True)
        for component in self.components.values():
            if component.child is not None and component.child.poll() is None:
                try:
                    component.child.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass


def listening_pid(port: int) -> int | None:
    """The process holding the listening socket of a loopback TCP port."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{entry}/fd"):
                if os.readlink(f"/proc/{entry}/fd/{fd}") in inodes:
                    return int(entry)
        except OSError:
            continue
    return None


class MemorySampler(threading.Thread):
    """Resident set of every process of the stack's process groups and of `clipedge serve`,
    once a second: {key: [(time, bytes)]}, keyed `component/program`."""

    def __init__(self, groups, health_url: str, entry_pid: int | None):
        super().__init__(daemon=True)
        self.groups = groups  # callable: {pgid: component name}
        # wrangler dev runs two workerd: the entry proxy (wrangler's own code, on the Worker's
        # URL) and the one running the Worker. The proxy is the control: it serves the same
        # requests with none of clipedge's code.
        self.entry_pid = entry_pid
        # The Worker reports its wasm linear memory: growth there is the Rust code's, growth of
        # workerd outside it is the runtime's (V8 heap, connections, caches).
        self.health_url = health_url
        self.ticks = 0
        self.samples: dict[str, list[tuple[float, int]]] = {}
        self.stopping = threading.Event()
        self.page = os.sysconf("SC_PAGE_SIZE")

    def sample_once(self) -> None:
        groups = self.groups()
        totals: dict[str, int] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            stat = read_proc(int(entry), "stat")
            if stat is None:
                continue
            head, _, rest = stat.rpartition(b")")
            fields = rest.split()
            if len(fields) < 4 or fields[0] == b"Z":
                continue
            pgid = int(fields[2])
            component = groups.get(pgid)
            if component is None:
                continue
            program = head.split(b"(", 1)[1].decode(errors="replace")
            statm = read_proc(int(entry), "statm")
            if statm is None:
                continue
            key = f"{component}/{program}"
            if program == "workerd":
                key += f" {ENTRY_PROXY}" if int(entry) == self.entry_pid else f" {WORKER_RUNTIME}"
            totals[key] = totals.get(key, 0) + int(statm.split()[1]) * self.page
        stamp = now()
        for key, value in totals.items():
            self.samples.setdefault(key, []).append((stamp, value))

    def sample_health(self) -> None:
        try:
            status, payload = http("GET", self.health_url, timeout=5)
            memory = json.loads(payload).get("memory_bytes") if status == 200 else None
        except (OSError, ValueError):
            memory = None
        if memory:
            self.samples.setdefault("wrangler dev/wasm memory", []).append((now(), memory))

    def run(self) -> None:
        while not self.stopping.wait(1.0):
            self.sample_once()
            self.ticks += 1
            if self.ticks % 5 == 0:
                self.sample_health()

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=5)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


class Checker:
    """Classifies answers against `clipedge serve`'s."""

    def __init__(self, reference_url: str, bodies: list[dict], labels: list[str],
                 references: list[list[dict]]):
        self.reference_url = reference_url
        self.bodies = bodies
        self.labels = labels
        self.references = references
        self.items: dict[int, dict | None] = {}
        for results in references:
            for item in results:
                self.items[item["id"]] = {"caption": item["caption"], "url": item["url"]}

    def item(self, item_id: int) -> dict | None:
        """The reference's record of an id (`GET /v1/items/{id}`), None if it has none."""
        if item_id not in self.items:
            status, payload = http("GET", f"{self.reference_url}/v1/items/{item_id}")
            self.items[item_id] = json.loads(payload) if status == 200 else None
        return self.items[item_id]

    def same_results(self, got: list[dict], reference: list[dict]) -> str | None:
        if len(got) != len(reference):
            return f"{len(got)} results, the reference has {len(reference)}"
        if len({item["id"] for item in got}) != len(got):
            return "an id repeats"
        reference_scores = {item["id"]: item["score"] for item in reference}
        floor = min(reference_scores.values())
        for position, (a, b) in enumerate(zip(got, reference)):
            if abs(a["score"] - b["score"]) > SCORE_TOLERANCE:
                return f"position {position}: score {a['score']} vs {b['score']}"
            if a["id"] in reference_scores:
                if abs(a["score"] - reference_scores[a["id"]]) > SCORE_TOLERANCE:
                    return f"id {a['id']}: score {a['score']} vs {reference_scores[a['id']]}"
            elif a["score"] > floor + SCORE_TOLERANCE:
                # Only a tie at the cut may bring in an id the reference does not have.
                return f"id {a['id']} (score {a['score']}) is not in the reference"
            record = self.items.get(a["id"]) or self.item(a["id"])
            if record is None or (a["caption"], a["url"]) != (record["caption"], record["url"]):
                return f"id {a['id']}: caption or url differs from the reference's"
        return None

    def partial_consistent(self, got: list[dict], failed: list, reference: list[dict],
                           k: int) -> str | None:
        if not failed or not all(isinstance(x, int) and x >= 0 for x in failed):
            return f"partial with failed_lists {failed!r}"
        if len(failed) != len(set(failed)):
            return "failed_lists repeats a list"
        if len(got) > k:
            return f"{len(got)} results for k {k}"
        ids = [item["id"] for item in got]
        if len(ids) != len(set(ids)):
            return "an id repeats"
        scores = [item["score"] for item in got]
        if any(a < b for a, b in zip(scores, scores[1:])):
            return "results are not in score order"
        reference_scores = {item["id"]: item["score"] for item in reference}
        floor = min(reference_scores.values()) if len(reference) == k else float("-inf")
        for item in got:
            if item["id"] in reference_scores:
                if abs(item["score"] - reference_scores[item["id"]]) > SCORE_TOLERANCE:
                    return f"id {item['id']}: score {item['score']} vs {reference_scores[item['id']]}"
            elif item["score"] > floor + SCORE_TOLERANCE:
                return (f"id {item['id']} scores {item['score']}, above the reference's last hit "
                        f"({floor}), yet the reference does not have it")
            record = self.item(item["id"])
            if record is None:
                return f"id {item['id']} is not an item of the index"
            if (item["caption"], item["url"]) != (record["caption"], record["url"]):
                return f"id {item['id']}: caption or url differs from the reference's"
        return None

    def classify(self, index: int, status: int, body: str) -> tuple[str, str | None]:
        """(class, detail): `complete`, `partial`, `5xx:<code>` or `wrong`."""
        if not 0 <= index < len(self.bodies):
            return "wrong", f"an answer wrk could not pair with a request ({index})"
        try:
            answer = json.loads(body)
        except json.JSONDecodeError:
            return "wrong", f"HTTP {status}, not JSON: {body[:200]!r}"
        if status >= 500:
            error = answer.get("error") if isinstance(answer, dict) else None
            code = error.get("code") if isinstance(error, dict) else None
            if code in DOCUMENTED_5XX and DOCUMENTED_5XX[code] == status \
                    and isinstance(error.get("message"), str):
                return f"5xx:{code}", error["message"]
            return "wrong", f"undocumented HTTP {status}: {body[:300]}"
        if status != 200:
            return "wrong", f"HTTP {status}: {body[:300]}"
        results = answer.get("results")
        if not isinstance(results, list):
            return "wrong", f"200 without results: {body[:300]}"
        reference = self.references[index]
        k = self.bodies[index]["k"]
        if answer.get("partial") is True:
            problem = self.partial_consistent(results, answer.get("failed_lists"), reference, k)
            return ("wrong", problem) if problem else ("partial", None)
        if answer.get("partial") is not False or answer.get("failed_lists") != []:
            return "wrong", f"not partial, yet failed_lists {answer.get('failed_lists')!r}"
        problem = self.same_results(results, reference)
        return ("wrong", f"{self.labels[index]}: {problem}") if problem else ("complete", None)


def loosely_same(edge: list[dict], embedded: list[dict]) -> str | None:
    """The Worker's text answer against clipedge serve's (different encoders)."""
    if not edge or len(edge) != len(embedded):
        return f"{len(edge)} results, clipedge serve has {len(embedded)}"
    scores = {item["id"]: item["score"] for item in embedded}
    shared = [item for item in edge if item["id"] in scores]
    if len(shared) < TEXT_MIN_OVERLAP * len(embedded):
        return f"only {len(shared)} of {len(embedded)} ids shared with clipedge serve"
    for item in shared:
        if abs(item["score"] - scores[item["id"]]) > TEXT_SCORE_TOLERANCE:
            return f"id {item['id']}: score {item['score']} vs {scores[item['id']]} natively"
    return None


def embeddings(clipedge: str, texts: list[str]) -> list[list[float]]:
    result = subprocess.run([clipedge, "embed", "--model", "models/minilm-l6-v2"] + texts,
                            cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        raise BenchError(f"clipedge embed failed: {result.stderr[-2000:]}")
    return [json.loads(line)["embedding"] for line in result.stdout.splitlines() if line.strip()]


def message_shape(message: str) -> str:
    """A 5xx message with its numbers, ports and request ids blanked, for counting kinds."""
    out, digits = [], False
    for char in message[:160]:
        if char.isdigit():
            if not digits:
                out.append("N")
            digits = True
        else:
            out.append(char)
            digits = False
    return "".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clipedge", required=True,
                        help="the clipedge binary (clipedge-dev and clipedge-scanner beside it)")
    parser.add_argument("--warm", type=float, default=20, help="warm-up seconds (no faults)")
    parser.add_argument("--fault", type=float, default=130, help="fault-phase seconds")
    parser.add_argument("--quiet", type=float, default=30, help="quiet seconds after the faults")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--no-faults", action="store_true",
                        help="kill nothing: the same load and checks, as a baseline")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--nprobe", type=int, default=16)
    parser.add_argument("--rerank", type=int, default=10)
    parser.add_argument("--state", type=Path, default=REPO / "data/soak/stack",
                        help="the stack's state directory (not the developers' data/local-stack)")
    parser.add_argument("--keep-logs", type=Path,
                        help="keep wrk's answer logs and the report JSON in this directory")
    args = parser.parse_args()
    try:
        clipedge = check_clipedge(args.clipedge)
        clipedge_dev = check_clipedge(str(Path(clipedge).with_name("clipedge-dev")))
        report = soak(args, clipedge, clipedge_dev)
    except BenchError as err:
        die(str(err))
    print(json.dumps(report["summary"]))
    sys.exit(0 if report["summary"]["pass"] else 1)


def start_serve(clipedge: str, work: Path) -> tuple[subprocess.Popen, str]:
    out = open(work / "serve.out", "w")
    err = open(work / "serve.err", "w")
    process = subprocess.Popen([clipedge, "serve", "--index", "data/demo-index",
                                "--bind", "127.0.0.1:0"], cwd=REPO, stdout=out, stderr=err,
                               stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = now() + 60
    while now() < deadline:
        text = (work / "serve.out").read_text()
        if '"listening"' in text:
            return process, json.loads(text.strip().splitlines()[0])["listening"]
        if process.poll() is not None:
            break
        time.sleep(0.1)
    process.kill()
    raise BenchError(f"clipedge serve did not start:\n{(work / 'serve.err').read_text()[-3000:]}")


def soak(args, clipedge: str, clipedge_dev: str) -> dict:
    work = Path(tempfile.mkdtemp(prefix="clipedge-soak-"))
    logs = args.keep_logs or work / "answers"
    logs.mkdir(parents=True, exist_ok=True)
    for old in logs.glob("thread-*.log"):
        old.unlink()
    stack = Stack(clipedge_dev, args.state.resolve())
    serve = None
    sampler = None
    wrk = None
    try:
        print("starting the local stack …", file=sys.stderr)
        stack.up()
        worker_url = stack.info["worker_url"]
        serve, serve_url = start_serve(clipedge, work)
        edge_health = json.loads(http("GET", f"{worker_url}/v1/health")[1])
        serve_health = json.loads(http("GET", f"{serve_url}/v1/health")[1])
        if edge_health["generation"] != serve_health["generation"]:
            raise BenchError(f"the Worker serves generation {edge_health['generation']}, "
                             f"clipedge serve {serve_health['generation']}")

        vectors = embeddings(clipedge, QUERIES)
        bodies, labels = [], []
        for text, vector in zip(QUERIES, vectors):
            common = {"k": args.k, "nprobe": args.nprobe, "rerank": args.rerank, "dedup": False}
            bodies += [{"vector": vector, **common}, {"text": text, **common}]
            labels += [f"vector of {text!r}", repr(text)]
        references = []
        for index, body in enumerate(bodies):
            status, payload = http("POST", f"{serve_url}/v1/search", body)
            if status != 200:
                raise BenchError(f"clipedge serve answered {status} to {labels[index]}: "
                                 f"{payload[:300]!r}")
            references.append(json.loads(payload)["results"])
        # Captions and URLs are always checked against clipedge serve's.
        checker = Checker(serve_url, bodies, labels, references)
        # Text: the Worker's own answer is the reference, once it agrees with clipedge serve's.
        for index, body in enumerate(bodies):
            if "text" not in body:
                continue
            status, payload = http("POST", f"{worker_url}/v1/search", body)
            answer = json.loads(payload)
            if status != 200 or answer.get("partial") is not False:
                raise BenchError(f"before the soak, the Worker answered {status} to "
                                 f"{labels[index]}: {payload[:300]!r}")
            problem = loosely_same(answer["results"], references[index])
            if problem:
                raise BenchError(f"before the soak, {labels[index]}: {problem}")
            problem = checker.same_results(answer["results"], answer["results"])
            if problem:
                raise BenchError(f"before the soak, {labels[index]}: {problem}")
            checker.references[index] = answer["results"]
        # One pass through the Worker before the clock starts: it loads the model and the
        # generation, and a stack that disagrees with the reference stops here.
        for index, body in enumerate(bodies):
            status, payload = http("POST", f"{worker_url}/v1/search", body)
            kind, detail = checker.classify(index, status, payload.decode())
            if kind != "complete":
                raise BenchError(f"before the soak, {labels[index]}: {kind}: {detail}")
        bodies_file = work / "bodies.jsonl"
        bodies_file.write_text("".join(json.dumps(body) + "\n" for body in bodies))

        def groups() -> dict[int, str]:
            tracked = {component.pid: name for name, component in stack.components.items()}
            tracked[serve.pid] = "clipedge serve"
            return tracked

        entry_pid = listening_pid(int(worker_url.rsplit(":", 1)[1]))
        sampler = MemorySampler(groups, f"{worker_url}/v1/health", entry_pid)
        sampler.sample_once()
        sampler.sample_health()
        sampler.start()

        total = args.warm + args.fault + args.quiet
        threads = args.connections
        wrk_command = ["wrk", "--threads", str(threads), "--connections", str(args.connections),
                       "--duration", f"{int(round(total))}s", "--timeout", "60s", "--latency",
                       "--script", str(REPO / "benches/soak.lua"), f"{worker_url}/v1/search",
                       "--", str(bodies_file), str(logs)]
        print(f"wrk for {total:.0f} s: warm-up {args.warm:.0f} s, faults {args.fault:.0f} s, "
              f"quiet {args.quiet:.0f} s …", file=sys.stderr)
        started = now()
        wrk = subprocess.Popen(wrk_command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
        fault_start = started + args.warm
        fault_end = fault_start + args.fault
        events = [] if args.no_faults else run_faults(stack, fault_start, args.fault)
        wrk_out, wrk_err = wrk.communicate(timeout=total + 120)
        sampler.stop()
        if wrk.returncode != 0:
            raise BenchError(f"wrk failed ({wrk.returncode}): {wrk_err[-2000:]}")
        wrk_summary = json.loads(wrk_out.strip().splitlines()[-1])
        return evaluate(args, checker, logs, started, fault_start, fault_end, events,
                        wrk_summary, sampler, edge_health)
    finally:
        if wrk is not None and wrk.poll() is None:
            wrk.kill()
            wrk.wait()
        if sampler is not None:
            sampler.stop()
        if stack.info and (stack.state / "stack.json").exists():
            stack.record_pids()
        stack.down()
        if serve is not None:
            serve.terminate()
            serve.wait(timeout=10)
        # The scratch directory goes; the answer logs stay only where --keep-logs put them.
        shutil.rmtree(work, ignore_errors=True)


def run_faults(stack: Stack, fault_start: float, length: float) -> list[dict]:
    """Kills and restarts, then freezes (SIGSTOP: connections accepted, never answered) and
    thaws, at fixed fractions of the fault phase; its last ninth is left for recovery. The first
    S3 freeze outlasts the Worker's request deadline. Returns what happened when (seconds from
    the phase's start)."""
    scanner = stack.components["clipedge-scanner"]
    emulator = stack.components["cargo lambda watch"]
    s3 = stack.components["s3s-fs"]
    # Seconds of a 130 s phase; other lengths scale.
    plan = [
        (5, "kill", scanner), (15, "restart", scanner),
        (22, "kill", s3), (30, "restart", s3),
        (37, "kill", emulator), (45, "restart", emulator),
        (52, "freeze", s3), (74, "thaw", s3),
        (78, "freeze", scanner), (86, "thaw", scanner),
        # A stutter: S3 answers for a moment between two freezes, so requests that waited out
        # the first one go on and meet the second one later in their life.
        (92, "freeze", s3), (104, "thaw", s3), (104.4, "freeze", s3), (116, "thaw", s3),
    ]
    events = []
    for at_reference, action, component in plan:
        delay = fault_start + at_reference / 130 * length - now()
        if delay > 0:
            time.sleep(delay)
        at = now() - fault_start
        if action == "kill":
            component.kill()
        elif action == "restart":
            component.start()
            stack.record_pids()
        else:
            component.signal(signal.SIGSTOP if action == "freeze" else signal.SIGCONT)
        events.append({"at_s": round(at, 1), "action": action, "component": component.name,
                       "pid": component.pid})
        print(f"  {at:5.1f} s  {action} {component.name} (pid {component.pid})", file=sys.stderr)
        if action == "restart" and component is emulator:
            # The scanner polls the emulator's runtime API; if the emulator's death ended it,
            # it is started again too.
            time.sleep(1.0)
            if has_exited(scanner.pid):
                scanner.start()
                stack.record_pids()
                events.append({"at_s": round(now() - fault_start, 1), "action": "restart",
                               "component": scanner.name, "pid": scanner.pid,
                               "why": "it had exited with the emulator"})
                print(f"  {now() - fault_start:5.1f} s  restart {scanner.name} (it had exited)",
                      file=sys.stderr)
    return events


def evaluate(args, checker, logs, started, fault_start, fault_end, events, wrk_summary,
             sampler, edge_health) -> dict:
    phases = {"warm-up": (started, fault_start), "faults": (fault_start, fault_end),
              "quiet": (fault_end, float("inf"))}
    counts = {name: {} for name in phases}
    latencies = {name: [] for name in phases}
    wrong: list[dict] = []
    late: dict[str, int] = {}
    late_examples: list[str] = []
    messages: dict[str, int] = {}
    recovery = {}  # event index -> first complete answer started after it
    restart_times = [(i, fault_start + e["at_s"]) for i, e in enumerate(events)
                     if e["action"] in ("restart", "thaw")]
    answers = 0
    for path in sorted(logs.glob("thread-*.log")):
        for line in path.read_text().splitlines():
            index, begin, end, status, body = line.split("\t", 4)
            begin_s, end_s = float(begin) / 1e3, float(end) / 1e3
            phase = next(name for name, (low, high) in phases.items() if begin_s < high)
            kind, detail = checker.classify(int(index), int(status), body)
            answers += 1
            counts[phase][kind] = counts[phase].get(kind, 0) + 1
            latency_ms = (end_s - begin_s) * 1e3
            latencies[phase].append(latency_ms)
            if latency_ms > LATE_MS:
                late[phase] = late.get(phase, 0) + 1
                if len(late_examples) < 10:
                    late_examples.append(f"{phase}, {begin_s - started:.1f} s: HTTP {status} "
                                         f"after {latency_ms / 1e3:.1f} s: {body[:200]}")
            if kind == "wrong":
                wrong.append({"phase": phase, "at_s": round(begin_s - started, 2),
                              "status": int(status), "detail": detail})
            elif kind.startswith("5xx") and detail:
                shape = f"{kind[4:]}: {message_shape(detail)}"
                messages[shape] = messages.get(shape, 0) + 1
            if kind == "complete":
                for event_index, restarted in restart_times:
                    if begin_s >= restarted:
                        best = recovery.get(event_index)
                        if best is None or begin_s < best:
                            recovery[event_index] = begin_s
    for event_index, restarted in restart_times:
        first = recovery.get(event_index)
        events[event_index]["first_complete_after_s"] = (
            round(first - restarted, 2) if first is not None else None)

    phase_rows, phase_report = [], {}
    codes = sorted({kind for phase in counts.values() for kind in phase if kind.startswith("5xx")})
    for name, (low, high) in phases.items():
        tally = counts[name]
        total = sum(tally.values())
        seconds = (min(high, started + args.warm + args.fault + args.quiet) - low)
        p50, p90, p99 = (percentile(latencies[name], q) for q in (0.5, 0.9, 0.99))
        errors = total - tally.get("complete", 0)
        phase_report[name] = {"seconds": round(seconds, 1), "answers": total,
                              "complete": tally.get("complete", 0),
                              "partial": tally.get("partial", 0),
                              **{code: tally.get(code, 0) for code in codes},
                              "wrong": tally.get("wrong", 0), "not_complete": errors,
                              "late": late.get(name, 0),
                              "qps": round(total / seconds, 1) if seconds > 0 else None,
                              "p50_ms": p50, "p90_ms": p90, "p99_ms": p99,
                              "max_ms": max(latencies[name], default=None)}
        phase_rows.append([name, f"{seconds:.0f} s", total, tally.get("complete", 0),
                           tally.get("partial", 0)] + [tally.get(code, 0) for code in codes]
                          + [tally.get("wrong", 0), late.get(name, 0), p50, p90, p99,
                             max(latencies[name], default=None)])

    memory_rows, memory_report, grown = [], {}, []
    warm_end = fault_start
    quiet_end = started + args.warm + args.fault + args.quiet
    levels = {}
    for key, series in sampler.samples.items():
        at_warm = [v for t, v in series if warm_end - 5 <= t <= warm_end]
        at_end = [v for t, v in series if quiet_end - 5 <= t <= quiet_end + 1]
        levels[key] = (statistics.median(at_warm) / MIB if at_warm else None,
                       statistics.median(at_end) / MIB if at_end else None)
    control = levels.get(f"wrangler dev/workerd {ENTRY_PROXY}", (None, None))
    control_growth = (control[1] - control[0]) if None not in control else None
    for key in sorted(sampler.samples):
        series = sampler.samples[key]
        warm_mib, end_mib = levels[key]
        peak_mib = max(v for _, v in series) / MIB
        first_mib = series[0][1] / MIB
        if warm_mib is None or end_mib is None:
            verdict = "-"
        elif key.endswith(ENTRY_PROXY):
            verdict = "control"
        elif key.endswith(WORKER_RUNTIME) and control_growth is not None:
            # The dev runtime grows under load by itself (see the module docstring): the Worker's
            # workerd may grow as much as the proxy's, not more.
            growth = end_mib - warm_mib
            allowed = WORKERD_GROWTH_FACTOR * max(control_growth, 0.0) + WORKERD_SLACK_MIB
            verdict = "GREW" if growth > allowed else "as control"
        else:
            verdict = "GREW" if end_mib > GROWTH_FACTOR * warm_mib + GROWTH_SLACK_MIB else "flat"
        if verdict == "GREW":
            grown.append(key)
        memory_report[key] = {"start_mib": round(first_mib, 1),
                              "warm_end_mib": round(warm_mib, 1) if warm_mib else None,
                              "end_mib": round(end_mib, 1) if end_mib else None,
                              "peak_mib": round(peak_mib, 1), "verdict": verdict}
        memory_rows.append([key, first_mib, warm_mib, end_mib, peak_mib, verdict])

    socket_errors = sum(wrk_summary[name] for name in
                        ("connect_errors", "read_errors", "write_errors", "timeouts"))
    quiet_errors = phase_report["warm-up"]["not_complete"] + phase_report["quiet"]["not_complete"]
    failures = []
    if wrong:
        failures.append(f"{len(wrong)} wrong answers")
    if quiet_errors:
        failures.append(f"{quiet_errors} answers outside the fault phase were not complete")
    if late:
        failures.append(f"{sum(late.values())} answers took over {LATE_MS / 1e3:.0f} s")
    if socket_errors:
        failures.append(f"{socket_errors} wrk socket errors or timeouts")
    if grown:
        failures.append(f"memory grew: {', '.join(grown)}")
    if not phase_report["quiet"]["complete"]:
        failures.append("no complete answer in the quiet phase")

    print("\n" + markdown_table(
        ["phase", "length", "answers", "complete", "partial"] + [c[4:] for c in codes]
        + ["wrong", f"over {LATE_MS // 1000} s", "p50 ms", "p90 ms", "p99 ms", "max ms"], phase_rows))
    print("\nfaults (seconds into the fault phase; recovery: first complete answer started after "
          "the restart):")
    for event in events:
        extra = ""
        if "first_complete_after_s" in event:
            extra = f", first complete answer {event['first_complete_after_s']} s later"
        print(f"  {event['at_s']:5.1f} s  {event['action']} {event['component']}{extra}")
    if messages:
        print("\n5xx messages (numbers blanked):")
        for shape, count in sorted(messages.items(), key=lambda item: -item[1])[:12]:
            print(f"  {count:6d}  {shape}")
    print("\n" + markdown_table(["process", "start MiB", "end of warm-up", "end of quiet",
                                 "peak", "verdict"], memory_rows))
    for example in late_examples:
        print(f"LATE ({example})")
    for item in wrong[:10]:
        print(f"WRONG ({item['phase']}, {item['at_s']} s, HTTP {item['status']}): {item['detail']}")
    print(f"\n{'PASS' if not failures else 'FAIL: ' + '; '.join(failures)}")

    summary = {
        "pass": not failures, "failures": failures, "answers": answers,
        "connections": args.connections, "k": args.k, "nprobe": args.nprobe,
        "rerank": args.rerank, "phases": phase_report,
        "wrk": wrk_summary, "memory_grew": grown, "generation": edge_health["generation"],
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average": os.getloadavg()[0],
    }
    series = {key: [[round(t - started, 1), round(v / MIB, 1)] for t, v in (values if "wasm" in key else values[::5])]
              for key, values in sampler.samples.items()}
    report = {"summary": summary, "events": events, "messages": messages,
              "memory": memory_report, "memory_series_mib": series, "wrong": wrong[:100], "machine": machine_info()}
    if args.keep_logs:
        (args.keep_logs / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
