#!/usr/bin/env python3
"""Head-to-head: clipedge vs faiss IVF-PQ (+ exact refine) on the same base vectors.

For each code type it builds, on DATA/base.fvecs,

  pq8  clipedge `--pq-m 64  --pq-bits 8 --rerank-vectors fp16`
       faiss     index_factory("IVF{nlist},PQ64x8np", METRIC_INNER_PRODUCT) + IndexRefineFlat
  pq4  clipedge `--pq-m 128 --pq-bits 4 --rerank-vectors fp16`
       faiss     index_factory("IVF{nlist},PQ128x4fs", METRIC_INNER_PRODUCT) + IndexRefineFlat

then sweeps nprobe x rerank on the out-of-distribution queries (DATA/queries.fvecs,
DATA/gt.ivecs), one query at a time, single-threaded, and reports recall@k, latency,
"latency at equal recall", build time / throughput, index sizes and raw scan throughput.

rerank R means: k*R PQ candidates are rescored exactly (clipedge: with the fp16 copies;
faiss: IndexRefineFlat with k_factor=R, i.e. with the float32 originals). rerank 0 means
PQ scores only (faiss: the IVF index searched directly, without the refine wrapper).

Run `python faiss_compare.py --help` for the options; see benches/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

# Must be set before faiss (OpenMP) is loaded: idle OpenMP threads must not spin on the
# shared 2-core box and steal time from the timed single-threaded queries.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402
from benchlib import BenchError, markdown_table  # noqa: E402

try:
    import numpy as np  # noqa: E402
except ImportError:  # pragma: no cover
    benchlib.die("numpy is required (e.g. /root/.cache/clipedge-venv/bin/python)")
try:
    import faiss  # noqa: E402
except ImportError:  # pragma: no cover
    benchlib.die("faiss is required: pip install faiss-cpu (or use /root/.cache/clipedge-venv/bin/python)")


CODE_TYPES = ("pq8", "pq4")


def code_specs(args) -> dict:
    return {
        "pq8": {
            "label": f"8-bit PQ, m={args.m8}",
            "clipedge_args": ["--pq-m", str(args.m8), "--pq-bits", "8"],
            "faiss_factory": f"IVF{args.nlist},PQ{args.m8}x8np",
            "m": args.m8,
            "bits": 8,
        },
        "pq4": {
            "label": f"4-bit fast-scan PQ, m={args.m4}",
            "clipedge_args": ["--pq-m", str(args.m4), "--pq-bits", "4"],
            # "fsr": fast-scan *by residual*, like clipedge (and like the 8-bit IVFPQ). Plain "fs"
            # (--faiss-pq4-plain) makes index_factory encode the raw vectors (by_residual=False).
            "faiss_factory": f"IVF{args.nlist},PQ{args.m4}x4{'fs' if args.faiss_pq4_plain else 'fsr'}",
            "m": args.m4,
            "bits": 4,
        },
    }


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Example: faiss_compare.py --data /tmp/bench-1m --nlist 1024 "
               "--nprobe 4,8,16,32,64,128 --rerank 0,5,10,20 --work /tmp/bench-out/work "
               "--json-out /tmp/bench-out/faiss_compare.json",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--data",
                        help="directory written by `clipedge datagen` (base.fvecs, queries.fvecs, gt.ivecs)")
    parser.add_argument("--nlist", type=int, help="inverted lists (both systems); required")
    parser.add_argument("--k", type=int, default=10, help="results per query; recall@k")
    parser.add_argument("--nprobe", type=benchlib.int_list, default=[4, 8, 16, 32, 64, 128],
                        help="comma-separated nprobe values to sweep")
    parser.add_argument("--rerank", type=benchlib.int_list, default=[0, 5, 10, 20],
                        help="comma-separated rerank factors (k*R candidates rescored exactly; 0 = PQ only)")
    parser.add_argument("--threads", type=int, default=1,
                        help="search threads for both systems (1 = single-threaded query latency)")
    parser.add_argument("--build-threads", type=int, default=0,
                        help="build threads for both systems (0 = all cores)")
    parser.add_argument("--codes", default="pq8,pq4",
                        help="which code types to compare: pq8 (8-bit), pq4 (4-bit fast scan)")
    parser.add_argument("--m8", type=int, default=64, help="PQ sub-quantizers for the 8-bit config")
    parser.add_argument("--m4", type=int, default=128, help="PQ sub-quantizers for the 4-bit config")
    parser.add_argument("--faiss-pq4-plain", action="store_true",
                        help="faiss 4-bit index as 'PQ{m}x4fs' (encodes raw vectors: index_factory sets "
                             "by_residual=False) instead of the default 'PQ{m}x4fsr' (by residual, like clipedge)")
    parser.add_argument("--seed", type=int, default=1234, help="build seed (clipedge --seed, faiss sampling/k-means seed)")
    parser.add_argument("--iterations", type=int, default=20,
                        help="coarse k-means iterations for faiss (clipedge's default is 20)")
    parser.add_argument("--train-size", type=int, default=None,
                        help="training sample; default min(n, max(100000, 64*nlist)) like clipedge")
    parser.add_argument("--clipedge", default=benchlib.default_clipedge(), help="clipedge binary")
    parser.add_argument("--work",
                        help="scratch dir for indexes and logs (a fresh clipedge index dir per config); required")
    parser.add_argument("--json-out", default=None, help="write all raw results here (default WORK/faiss_compare.json)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed passes over the queries before timing (clipedge: also fills its list cache)")
    parser.add_argument("--repeats", type=int, default=1, help="timed passes over the queries")
    parser.add_argument("--cache-mb", type=int, default=8192,
                        help="clipedge list cache; must hold the probed lists so timed runs are in-memory")
    parser.add_argument("--max-queries", type=int, default=0,
                        help="use only the first N OOD queries (0 = all)")
    parser.add_argument("--recall-targets", type=benchlib.float_list, default=[0.5, 0.6, 0.7, 0.8, 0.9, 0.95],
                        help="recall@k targets for the latency-at-equal-recall table")
    parser.add_argument("--scan-nprobe", type=int, default=0,
                        help="nprobe for the raw scan-throughput measurement (0 = nlist/4)")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse indexes already built in WORK by a previous run (same parameters!)")
    parser.add_argument("--keep-faiss-index", action="store_true",
                        help="keep faiss index files in WORK (needed for --reuse; they are large)")
    parser.add_argument("--summarize", metavar="JSON", default=None,
                        help="only re-print the report (tables, equal-recall, throughput) of an earlier run's "
                             "JSON; --recall-targets may be changed, other options are taken from the file")
    args = parser.parse_args(argv)
    if args.summarize:
        return args
    missing = [flag for flag in ("data", "nlist", "work") if getattr(args, flag) is None]
    if missing:
        parser.error("the following arguments are required: " + ", ".join("--" + m for m in missing))
    problems = []
    if args.nlist < 1:
        problems.append("--nlist must be >= 1")
    if args.k < 1:
        problems.append("--k must be >= 1")
    if args.threads < 1:
        problems.append("--threads must be >= 1")
    if any(p < 1 or p > args.nlist for p in args.nprobe):
        problems.append(f"--nprobe values must be in 1..nlist ({args.nlist})")
    if any(r < 0 for r in args.rerank):
        problems.append("--rerank values must be >= 0")
    args.codes = [c.strip() for c in args.codes.split(",") if c.strip()]
    if not args.codes or any(c not in CODE_TYPES for c in args.codes):
        problems.append(f"--codes must be a subset of {','.join(CODE_TYPES)}")
    if args.scan_nprobe == 0:
        args.scan_nprobe = max(1, args.nlist // 4)
    if not 1 <= args.scan_nprobe <= args.nlist:
        problems.append("--scan-nprobe must be in 1..nlist")
    if problems:
        parser.error("; ".join(problems))
    if args.json_out is None:
        args.json_out = os.path.join(args.work, "faiss_compare.json")
    return args


# ---------------------------------------------------------------------------------------
# recall / timing helpers


def recall_at_k(ids: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean over queries of |top-k result ∩ top-k truth| / k (same as clipedge's recall_at_k)."""
    found = ids[:, :k]
    gt = truth[:, :k]
    hits = (found[:, :, None] == gt[:, None, :]).any(axis=2).sum()
    return float(hits) / (found.shape[0] * k)


def latency_stats(seconds: np.ndarray) -> dict:
    ms = np.sort(np.asarray(seconds) * 1000.0)

    def pct(fraction):  # same nearest-rank rule as the clipedge CLI
        return float(ms[min(len(ms) - 1, int(round((len(ms) - 1) * fraction)))])

    return {"mean": float(ms.mean()), "p50": pct(0.5), "p95": pct(0.95), "p99": pct(0.99), "max": float(ms[-1])}


def time_faiss_queries(index, xq: np.ndarray, k: int, warmup: int, repeats: int):
    """Search one query at a time; returns (ids of the last pass, per-query seconds of all passes)."""
    nq = xq.shape[0]
    rows = [xq[i:i + 1] for i in range(nq)]  # 1-row C-contiguous views, sliced up front
    for _ in range(warmup):
        for row in rows:
            index.search(row, k)
    ids = np.empty((nq, k), dtype=np.int64)
    times = np.empty(nq * repeats)
    clock = time.perf_counter
    for rep in range(repeats):
        for i, row in enumerate(rows):
            started = clock()
            _, labels = index.search(row, k)
            times[rep * nq + i] = clock() - started
            ids[i] = labels[0]
    return ids, times


def python_call_overhead_us(d: int, k: int) -> float:
    """Median cost of a faiss search call from Python on a trivial index (1 vector):
    an estimate of the per-query Python/SWIG overhead included in the faiss latencies."""
    flat = faiss.IndexFlatIP(d)
    flat.add(np.zeros((1, d), dtype=np.float32))
    row = np.zeros((1, d), dtype=np.float32)
    times = []
    for _ in range(2000):
        started = time.perf_counter()
        flat.search(row, k)
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1e6)


# ---------------------------------------------------------------------------------------
# builds


def clipedge_build(args, spec: dict, name: str, base_path: str, log_path: str) -> dict:
    out_dir = os.path.join(args.work, f"clipedge-{name}")
    marker = out_dir + ".build.json"
    if args.reuse and os.path.isfile(marker):
        with open(marker) as handle:
            report = json.load(handle)
        print(f"  reusing clipedge {name} index in {out_dir}")
        return report
    if os.path.exists(out_dir) and os.listdir(out_dir):
        raise BenchError(
            f"{out_dir} already holds an index; a second build would publish a new generation. "
            "Remove it, choose another --work, or pass --reuse"
        )
    os.makedirs(out_dir, exist_ok=True)
    command = ["build", "--vectors", base_path, "--out", out_dir, "--nlist", str(args.nlist),
               *spec["clipedge_args"], "--rerank-vectors", "fp16", "--seed", str(args.seed),
               "--threads", str(args.build_threads)]
    if args.train_size:
        command += ["--train-size", str(args.train_size)]
    print(f"  clipedge build {name}: {' '.join(command)}", flush=True)
    return benchlib.clipedge_build(args.clipedge, command, out_dir, log_path, marker, f"clipedge build {name}")


def faiss_build(args, spec: dict, name: str, xb: np.ndarray, train_size: int):
    """Build IVF-PQ (+ IndexRefineFlat). Returns (refine_index, ivf_index, report)."""
    n, d = xb.shape
    tag = spec["faiss_factory"].split(",", 1)[1]
    path = os.path.join(args.work, f"faiss-{name}-{tag}.index")
    marker = path + ".json"
    faiss.omp_set_num_threads(args.build_threads or os.cpu_count() or 1)
    if args.reuse and os.path.isfile(path) and os.path.isfile(marker):
        with open(marker) as handle:
            report = json.load(handle)
        print(f"  reusing faiss {name} index {path}")
        # read_index returns the (owning, already downcast) IndexRefineFlat; the IVF
        # wrapper below does not own its C++ object, so `refine` must outlive it.
        refine = faiss.read_index(path)
        if not isinstance(refine, faiss.IndexRefineFlat):
            raise BenchError(f"{path} is not an IndexRefineFlat")
        ivf = faiss.downcast_index(refine.base_index)
        return refine, ivf, report

    factory = spec["faiss_factory"]
    print(f"  faiss build {name}: index_factory({d}, {factory!r}, METRIC_INNER_PRODUCT) "
          f"+ IndexRefineFlat, train on {train_size} vectors", flush=True)
    ivf = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    ivf_core = faiss.extract_index_ivf(ivf)
    ivf_core.cp.niter = args.iterations
    ivf_core.cp.seed = args.seed
    rng = np.random.default_rng(args.seed)
    if train_size < n:
        sample_ids = np.sort(rng.choice(n, size=train_size, replace=False))
        xt = np.ascontiguousarray(xb[sample_ids])
    else:
        xt = xb
    started = time.perf_counter()
    ivf.train(xt)
    train_s = time.perf_counter() - started
    del xt
    refine = faiss.IndexRefineFlat(ivf)
    started = time.perf_counter()
    refine.add(xb)  # adds to the IVF (assign + encode) and copies the floats into the refine store
    add_s = time.perf_counter() - started

    started = time.perf_counter()
    faiss.write_index(refine, path)
    write_s = time.perf_counter() - started
    refine_bytes = os.path.getsize(path)
    ivf_path = os.path.join(args.work, f"faiss-{name}.ivf-only.index")
    faiss.write_index(ivf, ivf_path)
    ivf_bytes = os.path.getsize(ivf_path)
    os.remove(ivf_path)

    report = {
        "factory": factory,
        "by_residual": bool(faiss.extract_index_ivf(ivf).by_residual),
        "refine": "IndexRefineFlat (float32 originals)",
        "n": n,
        "d": d,
        "nlist": args.nlist,
        "train_size": int(train_size),
        "coarse_kmeans_iterations": args.iterations,
        "build_threads": args.build_threads or os.cpu_count(),
        "train_s": train_s,
        "add_s": add_s,
        "build_s": train_s + add_s,
        "write_s": write_s,
        "train_vectors_per_s": train_size / max(train_s, 1e-9),
        "encode_vectors_per_s": n / max(add_s, 1e-9),
        "index_bytes_ivfpq": ivf_bytes,
        "index_bytes_with_refine_fp32": refine_bytes,
        # What the same index would take with an fp16 refine store (like clipedge's).
        "index_bytes_with_refine_fp16_equiv": ivf_bytes + n * d * 2,
    }
    benchlib.write_json(marker, report)
    if not args.keep_faiss_index:
        os.remove(path)
        os.remove(marker)
    return refine, faiss.downcast_index(ivf), report


# ---------------------------------------------------------------------------------------
# searches


def clipedge_search(args, name: str, index_dir: str, queries: str, truth: str, nprobe: int,
                    rerank: int, log_path: str, k: int | None = None) -> dict:
    command = ["search", "--index", index_dir, "--queries", queries, "--truth", truth,
               "--k", str(k or args.k), "--nprobe", str(nprobe), "--rerank", str(rerank),
               "--threads", str(args.threads), "--warmup", str(args.warmup),
               "--repeats", str(args.repeats), "--cache-mb", str(args.cache_mb)]
    return benchlib.run_clipedge(args.clipedge, command, log_path,
                                 f"clipedge search {name} nprobe={nprobe} rerank={rerank}")


def faiss_search(args, refine, ivf, xq, gt, nprobe: int, rerank: int) -> dict:
    faiss.omp_set_num_threads(args.threads)
    ivf.nprobe = nprobe
    if rerank > 0:
        refine.k_factor = float(rerank)
        index = refine
    else:
        index = ivf
    faiss.cvar.indexIVF_stats.reset()
    ids, times = time_faiss_queries(index, xq, args.k, args.warmup, args.repeats)
    stats = faiss.cvar.indexIVF_stats
    runs = len(times)
    passes = args.warmup + args.repeats
    return {
        "nprobe": nprobe,
        "rerank": rerank,
        "queries": xq.shape[0],
        "latency_ms": latency_stats(times),
        "qps": runs / float(times.sum()),
        "recall_at_k": recall_at_k(ids, gt, args.k),
        # indexIVF_stats counts every search call, warmup included.
        "ndis_per_query": stats.ndis / (xq.shape[0] * passes),
        "nlist_visited_per_query": stats.nlist / (xq.shape[0] * passes),
    }


def faiss_codes_per_query(ivf, xq: np.ndarray, nprobe: int) -> float:
    """Sum of the sizes of the nprobe lists the coarse quantizer picks, averaged over queries."""
    invlists = ivf.invlists
    sizes = np.array([invlists.list_size(i) for i in range(ivf.nlist)], dtype=np.int64)
    _, probed = ivf.quantizer.search(xq, nprobe)
    return float(sizes[probed].sum(axis=1).mean())


def list_balance(sizes: np.ndarray) -> dict:
    sizes = np.asarray(sizes, dtype=np.float64)
    mean = sizes.mean()
    return {"min": int(sizes.min()), "max": int(sizes.max()), "mean": float(mean),
            # faiss' imbalance factor: 1.0 = perfectly balanced
            "imbalance": float((sizes ** 2).sum() * len(sizes) / sizes.sum() ** 2)}


# ---------------------------------------------------------------------------------------


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.summarize:
            return resummarize(args)
        return run(args)
    except BenchError as err:
        benchlib.die(str(err))
    return 1


def run(args) -> int:
    args.clipedge = benchlib.check_clipedge(args.clipedge)
    paths = benchlib.check_data_dir(args.data, ["base.fvecs", "queries.fvecs", "gt.ivecs"])
    os.makedirs(args.work, exist_ok=True)
    log_path = os.path.join(args.work, "faiss_compare.clipedge.log")
    specs = code_specs(args)

    n, d = benchlib.vecs_shape(paths["base.fvecs"])
    if args.nlist > n:
        raise BenchError(f"--nlist {args.nlist} exceeds the {n} base vectors")
    for name in args.codes:
        if d % specs[name]["m"]:
            raise BenchError(f"{name}: m={specs[name]['m']} does not divide the dimension {d}")
    train_size = min(n, args.train_size or max(100_000, 64 * args.nlist))

    print(f"loading {args.data} ...", flush=True)
    xq = benchlib.read_vecs(paths["queries.fvecs"], "float32")
    gt = benchlib.read_vecs(paths["gt.ivecs"], "int32")
    if gt.shape[0] != xq.shape[0]:
        raise BenchError(f"gt.ivecs has {gt.shape[0]} rows for {xq.shape[0]} queries")
    if gt.shape[1] < args.k:
        raise BenchError(f"gt.ivecs has {gt.shape[1]} neighbours per query; recall@{args.k} needs {args.k}")
    query_path, truth_path = paths["queries.fvecs"], paths["gt.ivecs"]
    if args.max_queries and args.max_queries < xq.shape[0]:
        xq = np.ascontiguousarray(xq[:args.max_queries])
        gt = np.ascontiguousarray(gt[:args.max_queries])
        query_path = os.path.join(args.work, f"queries-first{args.max_queries}.fvecs")
        truth_path = os.path.join(args.work, f"gt-first{args.max_queries}.ivecs")
        benchlib.write_prefix(paths["queries.fvecs"], query_path, args.max_queries)
        benchlib.write_prefix(paths["gt.ivecs"], truth_path, args.max_queries)
    nq = xq.shape[0]

    results = {
        "tool": "benches/faiss_compare.py",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "args": {key: value for key, value in vars(args).items()},
        "machine": benchlib.machine_info(),
        "faiss": {"version": faiss.__version__, "compile_options": faiss.get_compile_options()},
        "clipedge": {"binary": args.clipedge,
                     "binary_mtime": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(os.path.getmtime(args.clipedge))),
                     "binary_sha256": benchlib.file_sha256(args.clipedge)},
        "data": {"dir": os.path.abspath(args.data), "n": n, "d": d, "queries": nq,
                 "query_set": "queries.fvecs / gt.ivecs (out-of-distribution, text-like)"},
        "train_size": train_size,
        "python_call_overhead_us": python_call_overhead_us(d, args.k),
        "codes": {},
    }
    print(f"n={n} d={d} queries={nq} nlist={args.nlist} train_size={train_size} "
          f"faiss {faiss.__version__} ({faiss.get_compile_options().strip()})", flush=True)
    print(f"faiss python per-call overhead ~{results['python_call_overhead_us']:.1f} us", flush=True)

    xb = None
    for name in args.codes:
        spec = specs[name]
        print(f"\n== {name}: {spec['label']} ==", flush=True)
        entry = {"label": spec["label"], "clipedge": {}, "faiss": {}}
        results["codes"][name] = entry

        # ---- builds (clipedge first, so the 2 GB float copy is not held during its build)
        entry["loadavg_before_build"] = os.getloadavg()
        entry["clipedge"]["build"] = clipedge_build(args, spec, name, paths["base.fvecs"], log_path)
        cb = entry["clipedge"]["build"]
        print(f"  clipedge: build {cb['build_s']:.1f}s (train {cb['train_s']:.1f}s, assign {cb['assign_s']:.1f}s, "
              f"encode {cb['encode_s']:.1f}s), {cb['index_bytes'] / 2**20:.1f} MiB", flush=True)
        if xb is None:
            xb = benchlib.read_vecs(paths["base.fvecs"], "float32")
        refine, ivf, fb = faiss_build(args, spec, name, xb, train_size)
        entry["faiss"]["build"] = fb
        sizes = np.array([ivf.invlists.list_size(i) for i in range(ivf.nlist)])
        entry["faiss"]["list_balance"] = list_balance(sizes)
        print(f"  faiss:    build {fb['build_s']:.1f}s (train {fb['train_s']:.1f}s, add {fb['add_s']:.1f}s), "
              f"{fb['index_bytes_ivfpq'] / 2**20:.1f} MiB IVF-PQ + refine", flush=True)
        results_so_far(args, results)

        # ---- sweep
        entry["sweep"] = []
        for nprobe in args.nprobe:
            for rerank in args.rerank:
                ours = clipedge_search(args, name, cb["dir"], query_path, truth_path, nprobe, rerank, log_path)
                theirs = faiss_search(args, refine, ivf, xq, gt, nprobe, rerank)
                point = {"nprobe": nprobe, "rerank": rerank, "clipedge": ours, "faiss": theirs,
                         "loadavg_1m": os.getloadavg()[0]}
                entry["sweep"].append(point)
                print(f"  nprobe={nprobe:4d} rerank={rerank:3d}  clipedge R@{args.k}={ours['recall_at_k']:.4f} "
                      f"p50={ours['latency_ms']['p50']:.3f}ms codes={ours['codes_per_query']:.0f} "
                      f"gets={ours['gets_per_query']:.2f} | faiss R@{args.k}={theirs['recall_at_k']:.4f} "
                      f"p50={theirs['latency_ms']['p50']:.3f}ms  (load {point['loadavg_1m']:.2f})", flush=True)
                results_so_far(args, results)

        # ---- raw scan throughput at rerank 0, large nprobe (and a small nprobe for the slope)
        entry["scan_throughput"] = scan_throughput(args, name, cb["dir"], query_path, truth_path,
                                                   refine, ivf, xq, gt, log_path)
        results_so_far(args, results)
        del refine, ivf

    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    results["summary"] = summarize(args, results)
    benchlib.write_json(args.json_out, results)
    if os.path.exists(args.json_out + ".partial"):
        os.remove(args.json_out + ".partial")
    print(f"\nraw results: {args.json_out}")
    return 0


def resummarize(cli_args) -> int:
    try:
        with open(cli_args.summarize) as handle:
            results = json.load(handle)
    except (OSError, json.JSONDecodeError) as err:
        raise BenchError(f"cannot read {cli_args.summarize}: {err}") from err
    saved = argparse.Namespace(**results["args"])
    saved.recall_targets = cli_args.recall_targets
    for entry in results["codes"].values():  # JSON turned the int nprobe keys into strings
        st = entry.get("scan_throughput")
        if st:
            for system in ("clipedge", "faiss"):
                st[system]["points"] = {int(key): value for key, value in st[system]["points"].items()}
    summarize(saved, results)
    return 0


def results_so_far(args, results) -> None:
    """Checkpoint: a crash or kill late in a long run keeps what was measured."""
    benchlib.write_json(args.json_out + ".partial", results)


def scan_throughput(args, name, index_dir, query_path, truth_path, refine, ivf, xq, gt, log_path) -> dict:
    hi = args.scan_nprobe
    lo = max(1, hi // 8)
    out = {"nprobe_hi": hi, "nprobe_lo": lo, "rerank": 0, "threads": args.threads}
    for system in ("clipedge", "faiss"):
        points = {}
        for nprobe in sorted({lo, hi}):
            if system == "clipedge":
                run = clipedge_search(args, name, index_dir, query_path, truth_path, nprobe, 0, log_path)
                codes = run["codes_per_query"]
                mean_ms = run["latency_ms"]["mean"]
                p50_ms = run["latency_ms"]["p50"]
            else:
                run = faiss_search(args, refine, ivf, xq, gt, nprobe, 0)
                codes = faiss_codes_per_query(ivf, xq, nprobe)
                run["codes_per_query"] = codes
                mean_ms = run["latency_ms"]["mean"]
                p50_ms = run["latency_ms"]["p50"]
            points[nprobe] = {"codes_per_query": codes, "mean_ms": mean_ms, "p50_ms": p50_ms,
                              "recall_at_k": run["recall_at_k"],
                              "codes_per_s": codes / (mean_ms / 1000.0)}
        result = {"points": points}
        result["codes_per_s_naive"] = points[hi]["codes_per_s"]
        if lo != hi and points[hi]["mean_ms"] > points[lo]["mean_ms"]:
            result["codes_per_s_marginal"] = (points[hi]["codes_per_query"] - points[lo]["codes_per_query"]) / (
                (points[hi]["mean_ms"] - points[lo]["mean_ms"]) / 1000.0)
        else:
            result["codes_per_s_marginal"] = None
        out[system] = result
        print(f"  scan throughput {system}: {result['codes_per_s_naive'] / 1e6:.1f} M codes/s "
              f"(codes/mean latency at nprobe {hi}); marginal "
              f"{(result['codes_per_s_marginal'] or float('nan')) / 1e6:.1f} M codes/s", flush=True)
    return out


# ---------------------------------------------------------------------------------------
# report


def summarize(args, results) -> dict:
    summary = {"equal_recall": {}, "builds": [], "scan_throughput": {}}
    k = args.k
    for name, entry in results["codes"].items():
        print(f"\n### {entry['label']} (nlist {args.nlist}, k {k}, {args.threads} thread(s), "
              f"{results['data']['queries']} OOD queries, one at a time)\n")
        rows = []
        ours_points, theirs_points = [], []
        for point in entry["sweep"]:
            ours, theirs = point["clipedge"], point["faiss"]
            rows.append([point["nprobe"], point["rerank"],
                         ours["recall_at_k"], ours["latency_ms"]["p50"], ours["latency_ms"]["p99"],
                         theirs["recall_at_k"], theirs["latency_ms"]["p50"], theirs["latency_ms"]["p99"],
                         ours["latency_ms"]["p50"] / max(theirs["latency_ms"]["p50"], 1e-12),
                         ours["codes_per_query"]])
            ours_points.append({"nprobe": point["nprobe"], "rerank": point["rerank"],
                                "recall": ours["recall_at_k"], "p50_ms": ours["latency_ms"]["p50"],
                                "mean_ms": ours["latency_ms"]["mean"]})
            theirs_points.append({"nprobe": point["nprobe"], "rerank": point["rerank"],
                                  "recall": theirs["recall_at_k"], "p50_ms": theirs["latency_ms"]["p50"],
                                  "mean_ms": theirs["latency_ms"]["mean"]})
        print(markdown_table(
            ["nprobe", "rerank", f"clipedge R@{k}", "clipedge p50 ms", "clipedge p99 ms",
             f"faiss R@{k}", "faiss p50 ms", "faiss p99 ms", "p50 ours/theirs", "codes/query (ours)"],
            rows))

        print(f"\nLatency at equal recall ({entry['label']}): cheapest configuration (by p50) reaching each "
              f"target; 'interp' = p50 interpolated on each system's recall/latency Pareto frontier\n")
        eq_rows, eq = [], []
        for target in args.recall_targets:
            ours = benchlib.cheapest_reaching(ours_points, target)
            theirs = benchlib.cheapest_reaching(theirs_points, target)
            ratio = ours["p50_ms"] / theirs["p50_ms"] if ours and theirs else None
            ours_i = benchlib.interpolated_cost(ours_points, target)
            theirs_i = benchlib.interpolated_cost(theirs_points, target)
            ratio_i = ours_i / theirs_i if ours_i and theirs_i else None
            eq.append({"target": target, "clipedge": ours, "faiss": theirs, "p50_ratio_ours_over_theirs": ratio,
                       "clipedge_p50_interp_ms": ours_i, "faiss_p50_interp_ms": theirs_i,
                       "p50_interp_ratio_ours_over_theirs": ratio_i})
            eq_rows.append([
                target,
                f"np{ours['nprobe']}/r{ours['rerank']}" if ours else "not reached",
                ours["recall"] if ours else None, ours["p50_ms"] if ours else None,
                f"np{theirs['nprobe']}/r{theirs['rerank']}" if theirs else "not reached",
                theirs["recall"] if theirs else None, theirs["p50_ms"] if theirs else None,
                ratio, ours_i, theirs_i, ratio_i])
        summary["equal_recall"][name] = eq
        print(markdown_table(["target", "clipedge cfg", "recall", "p50 ms", "faiss cfg", "recall", "p50 ms",
                              "ours/theirs", "interp ours ms", "interp faiss ms", "interp ours/theirs"], eq_rows))

        cb, fb = entry["clipedge"]["build"], entry["faiss"]["build"]
        summary["builds"].append({
            "code": name,
            "clipedge": {"build_s": cb["build_s"], "train_s": cb["train_s"],
                         "assign_plus_encode_s": cb["assign_s"] + cb["encode_s"],
                         "train_vectors_per_s": cb["train_vectors_per_s"],
                         "encode_vectors_per_s": cb["encode_vectors_per_s"],
                         "index_bytes": cb["index_bytes"]},
            "faiss": {"build_s": fb["build_s"], "train_s": fb["train_s"], "add_s": fb["add_s"],
                      "train_vectors_per_s": fb["train_vectors_per_s"],
                      "encode_vectors_per_s": fb["encode_vectors_per_s"],
                      "index_bytes_ivfpq": fb["index_bytes_ivfpq"],
                      "index_bytes_with_refine_fp32": fb["index_bytes_with_refine_fp32"],
                      "index_bytes_with_refine_fp16_equiv": fb["index_bytes_with_refine_fp16_equiv"]},
        })
        st = entry.get("scan_throughput")
        if st:
            summary["scan_throughput"][name] = {
                system: {"naive_Mcodes_per_s": st[system]["codes_per_s_naive"] / 1e6,
                         "marginal_Mcodes_per_s": (st[system]["codes_per_s_marginal"] or 0) / 1e6 or None}
                for system in ("clipedge", "faiss")}

    print("\n### Build (train = coarse k-means + PQ training on the sample; add = assign + encode"
          " [+ write, clipedge])\n")
    rows = []
    for b in summary["builds"]:
        c, f = b["clipedge"], b["faiss"]
        rows.append([b["code"], "clipedge", c["build_s"], c["train_s"], c["assign_plus_encode_s"],
                     c["train_vectors_per_s"], c["encode_vectors_per_s"], c["index_bytes"] / 2**20, "-"])
        rows.append([b["code"], "faiss", f["build_s"], f["train_s"], f["add_s"], f["train_vectors_per_s"],
                     f["encode_vectors_per_s"], f["index_bytes_with_refine_fp16_equiv"] / 2**20,
                     f"{f['index_bytes_ivfpq'] / 2**20:.1f} IVF-PQ / {f['index_bytes_with_refine_fp32'] / 2**20:.0f} w/ fp32 refine"])
    print(markdown_table(["code", "system", "build s", "train s", "add s", "train vec/s", "add vec/s",
                          "index MiB (fp16 rerank)", "faiss files MiB"], rows))

    if summary["scan_throughput"]:
        print(f"\n### Raw single-core scan throughput (rerank 0, nprobe {args.scan_nprobe}; "
              f"marginal = slope between nprobe {max(1, args.scan_nprobe // 8)} and {args.scan_nprobe})\n")
        rows = []
        for name, systems in summary["scan_throughput"].items():
            st = results["codes"][name]["scan_throughput"]
            for system in ("clipedge", "faiss"):
                hi = st[system]["points"][st["nprobe_hi"]]
                rows.append([name, system, hi["codes_per_query"], hi["mean_ms"],
                             systems[system]["naive_Mcodes_per_s"], systems[system]["marginal_Mcodes_per_s"]])
        print(markdown_table(["code", "system", "codes/query", "mean ms", "M codes/s (codes/latency)",
                              "M codes/s (marginal)"], rows))
    return summary


if __name__ == "__main__":
    sys.exit(main())
