"""Helpers shared by the export scripts: quantization, model cards, fingerprints, fixtures.

The Rust crate (`crates/clipedge-text`) reads a model package directory:

    model.toml      the card (written by `write_card`)
    text.onnx       the text tower, opset 17, batch 1, dynamic axis "sequence"
    tokenizer.json  HF tokenizers format, truncation and padding disabled
    reference.json  fixtures for parity tests (written by `write_reference`)

Everything here is deterministic for a given input so that re-running a script
reproduces the committed files byte for byte (up to library versions).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17

# Texts for reference.json: short, long, Unicode, emoji, Korean, over-long.
# The last one is longer than any context we use (CLIP 77, BERT 256), so the
# Rust side must truncate it exactly like the reference did.
REFERENCE_TEXTS = [
    "a dog running on the beach",
    "red",
    "A photo of a cat sitting on a windowsill, looking outside.",
    "Crème brûlée with fresh raspberries — café style",
    "서울의 밤거리 풍경",
    "東京の夜景とネオンサイン",
    "🐶🏖️ puppy at the seaside 🌊☀️",
    "  multiple   spaces,\ttabs\nand newlines  ",
    "The QUICK brown fox's jump; don't stop! 123 4567 3.14",
    "Привет, мир! Ελληνικά και العربية",
    "a photograph of an astronaut riding a horse on mars, highly detailed, 4k, trending",
    " ".join(["an extremely long caption about a crowded street market at dusk"] * 40),
]


def fingerprint(onnx_path: Path, tokenizer_path: Path) -> str:
    """First 16 hex chars of sha256(text.onnx || [text.onnx.data] || tokenizer.json).

    The id an index records. The external-data file (only with
    --external-data) is hashed between the two so the weights always count.
    """
    h = hashlib.sha256()
    h.update(onnx_path.read_bytes())
    data = onnx_path.with_name(onnx_path.name + ".data")
    if data.exists():
        h.update(data.read_bytes())
    h.update(tokenizer_path.read_bytes())
    return h.hexdigest()[:16]


def to_external_data(onnx_path: Path) -> str:
    """Move the weights of text.onnx into text.onnx.data (ONNX external data, one file).

    Why: a Worker can fetch the graph and the weights separately and hand
    tensors to tract one by one instead of holding a second copy of one big
    protobuf (see TOOLCHAIN.md, the B/32 tower inside workerd). Returns the
    data file name recorded in the card.
    """
    model = onnx.load(str(onnx_path))
    name = onnx_path.name + ".data"
    data = onnx_path.with_name(name)
    if data.exists():
        data.unlink()
    onnx.save_model(model, str(onnx_path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=name, size_threshold=1024)
    return name


def _toml_value(v) -> str:
    """Render a Python value as TOML (only the types a card uses)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"unsupported TOML value {v!r}")


def write_card(path: Path, fields: dict, comments: dict | None = None,
               tables: dict | None = None) -> None:
    """Write model.toml: top-level keys in the given order, then [tables].

    A tiny hand-written writer keeps the scripts free of a TOML dependency and
    lets each key carry a comment explaining it.
    """
    comments = comments or {}
    lines = []
    for k, v in fields.items():
        line = f"{k} = {_toml_value(v)}"
        if k in comments:
            line += f"  # {comments[k]}"
        lines.append(line)
    for name, table in (tables or {}).items():
        lines.append("")
        lines.append(f"[{name}]")
        for k, v in table.items():
            lines.append(f"{k} = {_toml_value(v)}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_reference(path: Path, entries: list[dict]) -> None:
    """Write reference.json: a JSON array of {text, ids, padded_to, embedding}.

    How the fixtures were produced goes into the card (`reference` key).
    Embeddings are rounded to 7 significant digits (far below the 1e-4 cosine
    budget of the parity tests) to keep the committed fixture small; one
    entry per line keeps diffs readable.
    """
    for e in entries:
        e["embedding"] = [float(f"{x:.7g}") for x in e["embedding"]]
    body = ",\n".join(json.dumps(e, ensure_ascii=False, separators=(",", ":")) for e in entries)
    path.write_text("[\n" + body + "\n]\n", encoding="utf-8")
    json.loads(path.read_text(encoding="utf-8"))  # self-check: valid JSON


def l2_normalize(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


def cosine(a, b) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def ort_session(path: Path, threads: int = 1):
    """An onnxruntime CPU session with a fixed thread count (benchmarks use 1)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def tidy_onnx(path: Path, batch_one: bool = False) -> None:
    """Check the graph and drop intermediate shape annotations; store in place.

    ONNX shape inference is run as a check only: its value_info entries tie
    intermediate shapes to the symbol "sequence", and tract then refuses to
    load the graph with a fixed input shape (`with_input_fact`: "Impossible to
    unify Sym(sequence) with Val(3)"). With batch_one, an output axis 0 that
    the exporter left symbolic is pinned to 1 (the contract: batch 1).
    """
    model = onnx.load(str(path))
    onnx.checker.check_model(onnx.shape_inference.infer_shapes(model))
    del model.graph.value_info[:]
    if batch_one:
        for out in model.graph.output:
            dims = out.type.tensor_type.shape.dim
            if dims and not dims[0].HasField("dim_value"):
                dims[0].Clear()
                dims[0].dim_value = 1
    onnx.save(model, str(path))


# ---------------------------------------------------------------- quantization

def quantize_int8_dynamic(src: Path, dst: Path, per_channel: bool = False) -> None:
    """onnxruntime dynamic quantization: MatMulInteger for weight matmuls, int8 Gather tables.

    Only matmuls with a constant B are quantized (activation x activation
    attention products stay fp32, which matters for accuracy). Activations are
    quantized per tensor at run time, which costs MiniLM a lot of accuracy
    (cosine ~0.90 per-tensor, ~0.97 per-channel vs fp32), hence int8-weights.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src), str(dst),
        weight_type=QuantType.QInt8,
        per_channel=per_channel,
        op_types_to_quantize=["MatMul", "Gather"],
        extra_options={"MatMulConstBOnly": True},
    )


def quantize_int8_dynamic_per_channel(src: Path, dst: Path) -> None:
    """int8-dynamic with per-channel weight scales (more accurate; tract runs it much slower)."""
    quantize_int8_dynamic(src, dst, per_channel=True)


def _int8_per_channel(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 with one scale per slice along `axis` (the output channel)."""
    scale = np.abs(w).max(axis=1 - axis) / 127.0
    scale = np.where(scale == 0, 1.0, scale).astype(np.float32)
    shaped = scale.reshape((-1, 1) if axis == 0 else (1, -1))
    return np.clip(np.rint(w / shaped), -127, 127).astype(np.int8), scale


def _gather_int8_nodes(node, name: str) -> list:
    """Gather rows of an int8 table, then scale them: x = float(T8[ids]) * s[ids, None].

    Why not DequantizeLinear(table) -> Gather: tract 0.23.9 does not fold
    that constant subgraph, so it dequantized the whole 49408 x 512 table on
    every run (~100 ms for B/32). Gathering first costs O(tokens x width).
    """
    idx, out = node.input[1], node.output[0]
    return [
        helper.make_node("Gather", [name + "_int8", idx], [out + "_q"], name=out + "_gq", axis=0),
        helper.make_node("Gather", [name + "_scale", idx], [out + "_s"], name=out + "_gs", axis=0),
        helper.make_node("Cast", [out + "_q"], [out + "_f"], name=out + "_cast", to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", [out + "_s", "int8_last_axis"], [out + "_s1"], name=out + "_unsq"),
        helper.make_node("Mul", [out + "_f", out + "_s1"], [out], name=out + "_mul"),
    ]


def quantize_int8_weights(src: Path, dst: Path, min_elements: int = 4096) -> dict:
    """Weight-only int8: large 2-D weights stored as int8 + per-channel fp32 scales; fp32 compute.

    Matmul weights (MatMul B: per column; Gemm B with transB=1: per row) go
    through DequantizeLinear, which tract folds next to the MatMul. Embedding
    tables used only by Gather are gathered as int8 and scaled per row
    afterwards (`_gather_int8_nodes`). The file is ~4x smaller than fp32 and
    accuracy is that of the weights alone.
    """
    model = onnx.load(str(src))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    uses: dict[str, list] = {}
    for node in graph.node:
        for pos, name in enumerate(node.input):
            if name in inits:
                uses.setdefault(name, []).append((node, pos))
    stats = {"quantized": 0, "gather_tables": 0, "bytes_before": 0, "bytes_after": 0}
    dequant_nodes, replaced = [], {}
    for name, users in uses.items():
        w = numpy_helper.to_array(inits[name])
        if w.ndim != 2 or w.dtype != np.float32 or w.size < min_elements:
            continue
        kinds = {(n.op_type, pos) for n, pos in users}
        gather_only = kinds == {("Gather", 0)} and all(
            next((a.i for a in n.attribute if a.name == "axis"), 0) == 0 for n, _ in users)
        if gather_only:
            axis = 0
        elif kinds <= {("MatMul", 1)}:
            axis = 1
        elif kinds <= {("Gemm", 1)}:
            trans = {next((a.i for a in n.attribute if a.name == "transB"), 0) for n, _ in users}
            if len(trans) != 1:
                continue
            axis = 0 if trans.pop() else 1
        else:
            continue
        q, scale = _int8_per_channel(w, axis)
        graph.initializer.remove(inits[name])
        graph.initializer.extend([numpy_helper.from_array(q, name + "_int8"),
                                  numpy_helper.from_array(scale, name + "_scale")])
        if gather_only:
            for n, _ in users:
                replaced[id(n)] = _gather_int8_nodes(n, name)
            stats["gather_tables"] += 1
        else:
            graph.initializer.append(numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), name + "_zero"))
            dequant_nodes.append(helper.make_node(
                "DequantizeLinear", [name + "_int8", name + "_scale", name + "_zero"], [name],
                name=name + "_dequant", axis=axis))
        stats["quantized"] += 1
        stats["bytes_before"] += w.nbytes
        stats["bytes_after"] += q.nbytes + scale.nbytes
    if stats["gather_tables"]:
        graph.initializer.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), "int8_last_axis"))
    # Rebuild the node list: dequantizers first (keeps the graph topologically sorted),
    # each replaced Gather expanded in place.
    nodes = list(dequant_nodes)
    for n in graph.node:
        nodes.extend(replaced.get(id(n), [n]))
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return stats


QUANTIZERS = {
    "int8-dynamic": quantize_int8_dynamic,
    "int8-dynamic-pc": quantize_int8_dynamic_per_channel,
    "int8-weights": quantize_int8_weights,
}


def seeded_reinit(module, seed: int) -> None:
    """Re-initialise every parameter from a seeded normal so outputs depend on the text.

    transformers' default init (std 0.02) makes a random text tower map all
    texts to nearly the same vector; scaling by 1/sqrt(fan_in) keeps
    activations at unit scale, so parity tests can tell texts apart.
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name.lower() and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1:
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
            elif "embedding" in name.lower():
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                fan_in = p.shape[-1] if p.ndim == 2 else math.prod(p.shape[1:])
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))


def file_mb(path: Path) -> float:
    return path.stat().st_size / 1e6


def dtype_counts(path: Path) -> dict:
    """Initializer bytes by element type: a quick look at what a quantizer produced."""
    model = onnx.load(str(path))
    out: dict[str, int] = {}
    for init in model.graph.initializer:
        t = TensorProto.DataType.Name(init.data_type)
        out[t] = out.get(t, 0) + numpy_helper.to_array(init).nbytes
    return out
