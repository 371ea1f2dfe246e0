#!/usr/bin/env python3
"""Pack a text tower into `text.int8`, the int8 engine's single weight file.

The format is specified in docs/format.md ("Model package: text.int8") and read by
crates/clipedge-text/src/int8/format.rs (whose Int8Writer writes the same bytes for tests).

Inputs (numpy only, plus `onnx` or `safetensors` for reading):

  * an fp32 ONNX export of either family (HF torch exports). Biases and LayerNorms keep their
    names, but MatMul weights are anonymous `onnx::MatMul_N` initializers stored [in, out]; each
    one's name is recovered from the Add that consumes the MatMul's output (it carries the named
    bias `...q_proj.bias`); the MatMul without a bias is the projection. ONNX carries no head
    count, so pass --heads.
  * an HF safetensors state dict (BertModel names, optional `bert.` prefix; CLIPTextModel-
    WithProjection names) with its config.json beside it (or --config).

    python models/pack_int8.py --onnx models/tiny-clip/text.onnx --heads 2 --out models/tiny-clip
    python models/pack_int8.py --safetensors .../model.safetensors --out models/minilm-l6-v2

Quantization: linear weights int8 symmetric per output row (scale = max|row| / 127), with the
row sums of the int8 values (the engine's activations are unsigned, see kernels.rs); the token
table int8 per row; biases, LayerNorms and position embeddings f32. BERT's token-type-0
embedding is added into the position embeddings (we never use type 1).
"""

from __future__ import annotations

import argparse
import json
import re
import struct
from pathlib import Path

import numpy as np

MAGIC = b"CEI8"
VERSION = 1
HEADER_BYTES = 64
ALIGN = 64
FAMILY = {"clip": 1, "bert": 2}
POOLING = {"last": 1, "mean": 2, "cls": 3}
ACTIVATION = {"quick_gelu": 1, "gelu": 2}


# ---------------------------------------------------------------- reading models


def state_from_onnx(path: Path) -> tuple[dict[str, np.ndarray], str]:
    """A torch-style state dict (linear weights [out, in]) and the MLP activation."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    state = {name: value for name, value in inits.items() if not name.startswith("onnx::")}
    for node in model.graph.node:
        if node.op_type != "MatMul":
            continue
        weights = [name for name in node.input if name in inits]
        if not weights:
            continue  # attention's activation × activation products
        weight = inits[weights[0]]
        bias = None
        for consumer in consumers.get(node.output[0], []):
            if consumer.op_type == "Add":
                named = [name for name in consumer.input if name.endswith(".bias") and name in inits]
                if named:
                    bias = named[0]
        if bias is None:
            name = "text_projection.weight"
            if name in state:
                raise SystemExit(f"{path}: more than one MatMul without a bias")
        else:
            name = bias[: -len(".bias")] + ".weight"
        state[name] = weight.T.copy()  # ONNX MatMul weights are [in, out]
    ops = {node.op_type for node in model.graph.node}
    activation = "gelu" if "Erf" in ops else "quick_gelu"
    return state, activation


def state_from_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return {name: value.astype(np.float32) for name, value in load_file(str(path)).items()
            if value.dtype.kind == "f"}


def strip_prefix(state: dict[str, np.ndarray], prefixes: list[str]) -> dict[str, np.ndarray]:
    for prefix in prefixes:
        if any(name.startswith(prefix) for name in state):
            return {name[len(prefix):] if name.startswith(prefix) else name: value
                    for name, value in state.items()}
    return state


# ---------------------------------------------------------------- the family layouts


def clip_tensors(state, heads: int, activation: str):
    """Header fields and the tensor list (file order) of a CLIP text tower."""
    s = strip_prefix(state, ["text_model."])
    token = s["embeddings.token_embedding.weight"]
    position = s["embeddings.position_embedding.weight"]
    layers = 1 + max(int(m.group(1)) for name in s
                     if (m := re.match(r"encoder\.layers\.(\d+)\.", name)))
    vocab, width = token.shape
    mlp = s["encoder.layers.0.mlp.fc1.weight"].shape[0]
    projection = s.get("text_projection.weight")
    header = dict(family="clip", pooling="last", activation=activation, vocab=vocab, width=width,
                  layers=layers, heads=heads, mlp=mlp, max_positions=position.shape[0],
                  proj_dim=0 if projection is None else projection.shape[0], ln_eps=1e-5)
    tensors = [("table", token), ("f32", position)]
    for i in range(layers):
        p = f"encoder.layers.{i}."
        qkv = np.concatenate([s[p + f"self_attn.{n}_proj.weight"] for n in "qkv"])
        qkv_bias = np.concatenate([s[p + f"self_attn.{n}_proj.bias"] for n in "qkv"])
        tensors += [("f32", s[p + "layer_norm1.weight"]), ("f32", s[p + "layer_norm1.bias"]),
                    ("linear", qkv, qkv_bias),
                    ("linear", s[p + "self_attn.out_proj.weight"], s[p + "self_attn.out_proj.bias"]),
                    ("f32", s[p + "layer_norm2.weight"]), ("f32", s[p + "layer_norm2.bias"]),
                    ("linear", s[p + "mlp.fc1.weight"], s[p + "mlp.fc1.bias"]),
                    ("linear", s[p + "mlp.fc2.weight"], s[p + "mlp.fc2.bias"])]
    tensors += [("f32", s["final_layer_norm.weight"]), ("f32", s["final_layer_norm.bias"])]
    if projection is not None:
        tensors.append(("linear", projection, None))
    return header, tensors


def bert_tensors(state, config: dict, pooling: str):
    s = strip_prefix(state, ["bert.", "model."])
    token = s["embeddings.word_embeddings.weight"]
    # Type 0 is the only token type we feed: fold it into the positions.
    position = s["embeddings.position_embeddings.weight"] + s["embeddings.token_type_embeddings.weight"][0]
    layers = config["num_hidden_layers"]
    act = config.get("hidden_act", "gelu")
    if act != "gelu":
        raise SystemExit(f"hidden_act {act!r} is not supported (only exact-erf gelu)")
    header = dict(family="bert", pooling=pooling, activation="gelu", vocab=token.shape[0],
                  width=token.shape[1], layers=layers, heads=config["num_attention_heads"],
                  mlp=config["intermediate_size"], max_positions=position.shape[0], proj_dim=0,
                  ln_eps=config.get("layer_norm_eps", 1e-12))
    tensors = [("table", token), ("f32", position),
               ("f32", s["embeddings.LayerNorm.weight"]), ("f32", s["embeddings.LayerNorm.bias"])]
    for i in range(layers):
        p = f"encoder.layer.{i}."
        a = p + "attention."
        qkv = np.concatenate([s[a + f"self.{n}.weight"] for n in ("query", "key", "value")])
        qkv_bias = np.concatenate([s[a + f"self.{n}.bias"] for n in ("query", "key", "value")])
        tensors += [("f32", s[a + "output.LayerNorm.weight"]), ("f32", s[a + "output.LayerNorm.bias"]),
                    ("linear", qkv, qkv_bias),
                    ("linear", s[a + "output.dense.weight"], s[a + "output.dense.bias"]),
                    ("f32", s[p + "output.LayerNorm.weight"]), ("f32", s[p + "output.LayerNorm.bias"]),
                    ("linear", s[p + "intermediate.dense.weight"], s[p + "intermediate.dense.bias"]),
                    ("linear", s[p + "output.dense.weight"], s[p + "output.dense.bias"])]
    return header, tensors


# ---------------------------------------------------------------- writing


def quantize_rows(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    matrix = np.asarray(matrix, dtype=np.float32)
    max_abs = np.abs(matrix).max(axis=1)
    scales = (max_abs / 127.0).astype(np.float32)
    safe = np.where(scales > 0, scales, 1.0)[:, None]
    q = np.clip(np.round(matrix / safe), -127, 127).astype(np.int8)
    return q, scales


def pack(header: dict, tensors: list) -> bytes:
    """Serialises in the order crates/clipedge-text/src/int8/format.rs `tensor_specs` lists."""
    blobs: list[bytes] = []
    for entry in tensors:
        kind = entry[0]
        if kind == "f32":
            blobs.append(np.ascontiguousarray(entry[1], dtype="<f4").tobytes())
        elif kind == "table":
            q, scales = quantize_rows(entry[1])
            blobs += [q.tobytes(), scales.astype("<f4").tobytes()]
        elif kind == "linear":
            q, scales = quantize_rows(entry[1])
            sums = q.astype(np.int32).sum(axis=1)
            blobs += [q.tobytes(), scales.astype("<f4").tobytes(), sums.astype("<i4").tobytes()]
            if entry[2] is not None:
                blobs.append(np.asarray(entry[2], dtype="<f4").tobytes())
    h = header
    fields = struct.pack("<4s13I", MAGIC, VERSION, FAMILY[h["family"]], POOLING[h["pooling"]],
                         ACTIVATION[h["activation"]], h["vocab"], h["width"], h["layers"],
                         h["heads"], h["mlp"], h["max_positions"], h["proj_dim"],
                         struct.unpack("<I", struct.pack("<f", h["ln_eps"]))[0], len(blobs))
    table_end = HEADER_BYTES + 16 * len(blobs)
    out = bytearray(fields.ljust(HEADER_BYTES, b"\0"))
    out += b"\0" * (table_end - HEADER_BYTES)
    for index, blob in enumerate(blobs):
        offset = -(-len(out) // ALIGN) * ALIGN
        out += b"\0" * (offset - len(out))
        struct.pack_into("<QQ", out, HEADER_BYTES + 16 * index, offset, len(blob))
        out += blob
    return bytes(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--onnx", type=Path, help="fp32 ONNX text tower (HF torch export)")
    source.add_argument("--safetensors", type=Path, help="HF state dict (BERT or CLIP text)")
    parser.add_argument("--config", type=Path, help="HF config.json (default: beside the safetensors)")
    parser.add_argument("--heads", type=int, help="attention heads (ONNX input; CLIP safetensors)")
    parser.add_argument("--pooling", choices=["mean", "cls"], default="mean", help="BERT pooling")
    parser.add_argument("--out", type=Path, required=True, help="package directory (writes text.int8)")
    args = parser.parse_args()

    if args.onnx:
        state, activation = state_from_onnx(args.onnx)
        config = {}
    else:
        state = state_from_safetensors(args.safetensors)
        config = json.loads((args.config or args.safetensors.parent / "config.json").read_text())
        activation = config.get("hidden_act", "quick_gelu")
    is_bert = any("word_embeddings" in name for name in state)
    if is_bert:
        if not config:
            raise SystemExit("BERT from ONNX is not supported here: pack it from its safetensors")
        header, tensors = bert_tensors(state, config, args.pooling)
    else:
        heads = args.heads or config.get("text_config", config).get("num_attention_heads")
        if not heads:
            raise SystemExit("--heads is required (ONNX does not record the head count)")
        header, tensors = clip_tensors(state, heads, activation)
    data = pack(header, tensors)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "text.int8").write_bytes(data)
    print(f"{args.out / 'text.int8'}: {len(data) / 2**20:.1f} MiB, "
          + ", ".join(f"{k}={v}" for k, v in header.items()))


if __name__ == "__main__":
    main()
