#!/usr/bin/env python3
"""Export a CLIP-style text tower (and optionally its image tower) as a clipedge model package.

Writes, into --out:
  text.onnx        opset 17, batch 1, input_ids [1, "sequence"] -> text_embeds [1, dim]
  tokenizer.json   HF tokenizers format, truncation/padding off (the Rust side truncates)
  model.toml       the card read by crates/clipedge-text
  reference.json   fixtures: onnxruntime on the fp32 graph, ids padded to 77 (see below)
  image.onnx       with --image: pixel_values [batch, 3, S, S] -> image_embeds [batch, dim]
  text.fp32.onnx   kept next to a quantized text.onnx only with --keep-fp32

Sources of weights (a user with network access; nothing here needs a GPU):
  --model openai/clip-vit-base-patch32       transformers CLIPModel (default)
  --open-clip ViT-B-32 --pretrained laion2b_s34b_b79k   an open_clip model
  --arch siglip --model google/siglip-base-patch16-224  SigLIP (see README: needs padding)
  --arch mclip --model M-CLIP/XLM-Roberta-Large-Vit-B-32 multilingual M-CLIP text tower
Offline (no hub): --random-weights --config b32|tiny builds the architecture
with seeded random weights (b32 = exact ViT-B/32 text tower).

Why the reference is computed on ids padded to 77: CLIP was trained on
zero-padded 77-token inputs and pools the hidden state at the EOT token under
a causal mask, so positions after EOT cannot change it. The Rust crate runs
only the real tokens; its parity test against these fixtures proves that
shortcut gives the same embedding.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from clip_tokenizer import BOS_ID, CONTEXT, EOS_ID, build_clip_tokenizer, save_tokenizer  # noqa: E402

# Text/vision towers of the random-weight configurations.
CONFIGS = {
    # Exactly the ViT-B/32 CLIP text tower (and image tower for --image).
    "b32": dict(text=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                          num_attention_heads=8),
                vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                            num_attention_heads=12, patch_size=32, image_size=224),
                projection_dim=512),
    # CLIP architecture with the real 49408 vocabulary but tiny width: a test model.
    # Width 16 keeps text.onnx at ~3.3 MB (the token table is 49408 x 16 floats), so
    # the committed models stay under 30 MB together with the int8 MiniLM.
    "tiny": dict(text=dict(hidden_size=16, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2),
                 vision=dict(hidden_size=16, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=2, patch_size=32, image_size=224),
                 projection_dim=16),
}
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


# ---------------------------------------------------------------- towers

class TextTower:
    """Builds a torch module mapping input_ids [1, n] -> embedding [1, dim]."""

    @staticmethod
    def hf_clip(model):
        import torch

        class Wrap(torch.nn.Module):
            """CLIP's text forward written out with a causal mask sliced from a constant
            [ctx, ctx] buffer (as open_clip does). transformers' own mask builder exports a
            Range/Expand/Where chain whose shapes tract mis-infers for a symbolic sequence
            length ("Can not broadcast 8 against 2"); a Slice of a constant is exact everywhere.
            Checked against the transformers forward in `clip_forward_matches_hf`."""

            def __init__(self, m):
                super().__init__()
                self.text_model, self.proj = m.text_model, m.text_projection
                context = self.text_model.embeddings.position_embedding.weight.shape[0]
                causal = torch.full((context, context), float("-inf")).triu(1)
                self.register_buffer("causal_mask", causal, persistent=False)
                self.eos_token_id = self.text_model.eos_token_id

            def forward(self, input_ids):
                tm = self.text_model
                n = input_ids.shape[1]
                x = tm.embeddings.token_embedding(input_ids) + tm.embeddings.position_embedding.weight[:n]
                mask = self.causal_mask[:n, :n]
                for layer in tm.encoder.layers:
                    attn = layer.self_attn
                    h = layer.layer_norm1(x)
                    heads, head_dim = attn.num_heads, attn.head_dim
                    q = (attn.q_proj(h) * attn.scale).view(1, n, heads, head_dim).transpose(1, 2)
                    k = attn.k_proj(h).view(1, n, heads, head_dim).transpose(1, 2)
                    v = attn.v_proj(h).view(1, n, heads, head_dim).transpose(1, 2)
                    weights = torch.softmax(q @ k.transpose(-1, -2) + mask, dim=-1)
                    o = (weights @ v).transpose(1, 2).reshape(1, n, heads * head_dim)
                    x = x + attn.out_proj(o)
                    x = x + layer.mlp(layer.layer_norm2(x))
                x = tm.final_layer_norm(x)
                if self.eos_token_id == 2:
                    # Legacy OpenAI configs: EOT (49407) is the largest id.
                    eot = input_ids[0].argmax()
                else:
                    eot = (input_ids[0] == self.eos_token_id).to(torch.int32).argmax()
                return self.proj(x[0, eot].unsqueeze(0))

        return Wrap(model)


def clip_forward_matches_hf(model, lengths=(2, 9, 40, 77)) -> float:
    """Max abs difference between the exported forward and transformers' own, over lengths."""
    import torch

    wrapped = TextTower.hf_clip(model).eval()
    worst = 0.0
    eos = model.text_model.eos_token_id
    for n in lengths:
        ids = torch.tensor([[BOS_ID] + [320 + (i * 37) % 40000 for i in range(n - 2)] + [EOS_ID]])
        with torch.no_grad():
            ours = wrapped(ids)
            hf = model.text_projection(model.text_model(input_ids=ids).pooler_output)
        worst = max(worst, float((ours - hf).abs().max()))
    assert eos in (2, EOS_ID), eos
    return worst

    @staticmethod
    def siglip(model):
        import torch

        class Wrap(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.text_model = m.text_model

            def forward(self, input_ids):
                return self.text_model(input_ids=input_ids).pooler_output

        return Wrap(model)


def random_clip(config: str, seed: int):
    """A transformers CLIPModel with the named architecture and seeded weights."""
    from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig, CLIPModel

    c = CONFIGS[config]
    text = CLIPTextConfig(vocab_size=49408, max_position_embeddings=CONTEXT, hidden_act="quick_gelu",
                          bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=0,
                          projection_dim=c["projection_dim"], **c["text"])
    vision = CLIPVisionConfig(hidden_act="quick_gelu", projection_dim=c["projection_dim"], **c["vision"])
    cfg = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                     projection_dim=c["projection_dim"])
    cfg._attn_implementation = "eager"
    model = CLIPModel(cfg).eval()
    common.seeded_reinit(model, seed)
    return model


def open_clip_to_hf(oc):
    """Copy an open_clip text tower into a transformers CLIPModel (same architecture).

    Why not export open_clip directly: its nn.MultiheadAttention, traced by the
    TorchScript exporter, freezes the sequence length into Reshape nodes, and
    its positional table forces 77 ids. The transformers CLIP text model
    exports with a clean dynamic "sequence" axis. The copy is checked against
    open_clip's own encode_text on padded 77-token input.
    """
    import torch
    from open_clip.transformer import QuickGELU
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig

    blocks = oc.transformer.resblocks
    b0 = blocks[0]
    for name in ("ls_1", "ls_2", "ln_attn"):
        if not isinstance(getattr(b0, name, torch.nn.Identity()), torch.nn.Identity):
            raise SystemExit(f"open_clip text block uses {name}: not a plain CLIP text tower")
    proj = oc.text_projection
    proj_w = proj.weight if isinstance(proj, torch.nn.Linear) else proj.T
    text = CLIPTextConfig(
        vocab_size=oc.token_embedding.num_embeddings, hidden_size=oc.positional_embedding.shape[1],
        intermediate_size=b0.mlp.c_fc.out_features, num_hidden_layers=len(blocks),
        num_attention_heads=b0.attn.num_heads, max_position_embeddings=oc.positional_embedding.shape[0],
        hidden_act="quick_gelu" if isinstance(b0.mlp.gelu, QuickGELU) else "gelu",
        projection_dim=proj_w.shape[0], bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=0)
    cfg = CLIPConfig(text_config=text.to_dict(), projection_dim=proj_w.shape[0])
    cfg._attn_implementation = "eager"
    hf = CLIPModel(cfg).eval()
    t = hf.text_model
    with torch.no_grad():
        t.embeddings.token_embedding.weight.copy_(oc.token_embedding.weight)
        t.embeddings.position_embedding.weight.copy_(oc.positional_embedding)
        for blk, layer in zip(blocks, t.encoder.layers):
            a = layer.self_attn
            for dst, w, b in zip((a.q_proj, a.k_proj, a.v_proj), blk.attn.in_proj_weight.chunk(3),
                                 blk.attn.in_proj_bias.chunk(3)):
                dst.weight.copy_(w)
                dst.bias.copy_(b)
            pairs = ((a.out_proj, blk.attn.out_proj), (layer.layer_norm1, blk.ln_1),
                     (layer.layer_norm2, blk.ln_2), (layer.mlp.fc1, blk.mlp.c_fc), (layer.mlp.fc2, blk.mlp.c_proj))
            for dst, src in pairs:
                dst.weight.copy_(src.weight)
                dst.bias.copy_(src.bias)
        t.final_layer_norm.weight.copy_(oc.ln_final.weight)
        t.final_layer_norm.bias.copy_(oc.ln_final.bias)
        hf.text_projection.weight.copy_(proj_w)
        ids = torch.zeros(1, text.max_position_embeddings, dtype=torch.long)
        ids[0, :6] = torch.tensor([BOS_ID, 320, 1929, 2761, 525, EOS_ID])
        want = oc.encode_text(ids)
        got = hf.text_projection(t(input_ids=ids[:, :6]).pooler_output)
        cos = torch.nn.functional.cosine_similarity(want, got).item()
    if cos < 0.99999:
        raise SystemExit(f"open_clip -> transformers copy differs (cosine {cos})")
    return hf


def load_hf(arch: str, model_id: str):
    """Pretrained weights from the HF hub (needs network once; cached afterwards)."""
    if arch == "clip":
        from transformers import CLIPModel
        return CLIPModel.from_pretrained(model_id, attn_implementation="eager").eval()
    if arch == "siglip":
        from transformers import AutoModel
        return AutoModel.from_pretrained(model_id, attn_implementation="eager").eval()
    raise ValueError(arch)


def load_mclip(model_id: str):
    """M-CLIP (multilingual CLIP): XLM-R + mean pooling over tokens + a linear projection.

    The hub repo stores `transformer.*` and `LinearTransformation.*` weights
    with a nested config; we rebuild the module here so no remote code runs.
    Mean pooling over all positions equals M-CLIP's masked mean because we
    never pad.
    """
    import torch
    from huggingface_hub import hf_hub_download
    from transformers import AutoConfig, AutoModel

    cfg = json.loads(Path(hf_hub_download(model_id, "config.json")).read_text())
    base = AutoConfig.for_model(**cfg["transformerConfig"]) if isinstance(cfg.get("transformerConfig"), dict) \
        else AutoConfig.from_pretrained(cfg["modelBase"])
    transformer = AutoModel.from_config(base, attn_implementation="eager")
    try:
        from safetensors.torch import load_file
        state = load_file(hf_hub_download(model_id, "model.safetensors"))
    except Exception:  # older repos ship pytorch_model.bin only
        state = torch.load(hf_hub_download(model_id, "pytorch_model.bin"), map_location="cpu")
    proj = torch.nn.Linear(cfg["transformerDimensions"], cfg["numDims"])
    transformer.load_state_dict({k[len("transformer."):]: v for k, v in state.items()
                                 if k.startswith("transformer.")}, strict=False)
    proj.load_state_dict({k.split(".", 1)[1]: v for k, v in state.items()
                          if k.startswith("LinearTransformation.")})

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.t, self.p = transformer.eval(), proj

        def forward(self, input_ids):
            hidden = self.t(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)).last_hidden_state
            return self.p(hidden.mean(dim=1))

    return Wrap().eval()


# ---------------------------------------------------------------- export

def export_text(tower, path: Path, output: str, sample_len: int = 9) -> None:
    """torch.onnx.export with the TorchScript exporter (dynamo=False), opset 17.

    The sample has fewer than 77 tokens so no shape gets frozen to 77; only
    the sequence axis is dynamic (batch is fixed to 1 by design).
    """
    import torch

    ids = torch.tensor([[BOS_ID] + list(range(320, 320 + sample_len - 2)) + [EOS_ID]], dtype=torch.long)
    with torch.no_grad():
        torch.onnx.export(tower, (ids,), str(path), input_names=["input_ids"], output_names=[output],
                          dynamic_axes={"input_ids": {1: "sequence"}}, opset_version=common.OPSET,
                          dynamo=False, do_constant_folding=True)
    common.tidy_onnx(path, batch_one=True)


def export_image(model, path: Path, image_size: int) -> None:
    """The image tower for index-time embedding; batch axis dynamic ("batch")."""
    import torch

    class Wrap(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.vision_model, self.proj = m.vision_model, m.visual_projection

        def forward(self, pixel_values):
            return self.proj(self.vision_model(pixel_values=pixel_values).pooler_output)

    x = torch.zeros(1, 3, image_size, image_size)
    with torch.no_grad():
        torch.onnx.export(Wrap(model).eval(), (x,), str(path), input_names=["pixel_values"],
                          output_names=["image_embeds"], dynamic_axes={"pixel_values": {0: "batch"},
                                                                       "image_embeds": {0: "batch"}},
                          opset_version=common.OPSET, dynamo=False)
    common.tidy_onnx(path)


def make_reference(onnx_path: Path, tok, pad_id: int, pad_to: int, same_unpadded: bool) -> list[dict]:
    """Embeddings of REFERENCE_TEXTS from onnxruntime on the fp32 graph, ids padded to pad_to.

    Over-long ids keep the first pad_to-1 and then the final special token
    (open_clip's rule for CLIP's EOT).
    """
    sess = common.ort_session(onnx_path)
    name = sess.get_inputs()[0].name
    entries = []
    for text in common.REFERENCE_TEXTS:
        ids = tok.encode(text).ids
        ids = ids if len(ids) <= pad_to else ids[:pad_to - 1] + [ids[-1]]
        padded = ids + [pad_id] * (pad_to - len(ids))
        emb = sess.run(None, {name: np.array([padded], dtype=np.int64)})[0][0]
        if same_unpadded:
            unpadded = sess.run(None, {name: np.array([ids], dtype=np.int64)})[0][0]
            assert common.cosine(emb, unpadded) > 0.99999, f"padding changes the embedding of {text!r}"
        entries.append({"text": text, "ids": ids, "padded_to": pad_to,
                        "embedding": common.l2_normalize(emb).tolist()})
    return entries


def check_quantized(fp32: Path, quant: Path, entries: list[dict]) -> float:
    """Lowest cosine of the quantized graph (unpadded) against the fp32 reference."""
    sess = common.ort_session(quant)
    name = sess.get_inputs()[0].name
    worst = 1.0
    for e in entries:
        got = sess.run(None, {name: np.array([e["ids"]], dtype=np.int64)})[0][0]
        worst = min(worst, common.cosine(got, e["embedding"]))
    return worst


def tokenizer_for(args):
    """CLIP models use the BPE tokenizer built from open_clip's vocabulary; others the hub's."""
    if args.arch == "clip":
        return build_clip_tokenizer()
    from transformers import AutoTokenizer
    hf_tok = AutoTokenizer.from_pretrained(args.model)
    if hasattr(hf_tok, "backend_tokenizer"):
        tok = hf_tok.backend_tokenizer
    else:  # slow-only tokenizers (SigLIP v1's SentencePiece): convert to the tokenizers format
        from transformers.convert_slow_tokenizer import convert_slow_tokenizer
        tok = convert_slow_tokenizer(hf_tok)
    tok.no_truncation()
    tok.no_padding()
    return tok


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="package directory to write")
    ap.add_argument("--name", help="model id recorded in index manifests (default: out dir name)")
    ap.add_argument("--arch", choices=["clip", "siglip", "mclip"], default="clip")
    ap.add_argument("--model", default="openai/clip-vit-base-patch32", help="HF hub id")
    ap.add_argument("--open-clip", metavar="ARCH", help="use open_clip's ARCH (e.g. ViT-B-32) instead")
    ap.add_argument("--pretrained", help="open_clip pretrained tag (e.g. laion2b_s34b_b79k)")
    ap.add_argument("--random-weights", action="store_true", help="seeded random weights, no download")
    ap.add_argument("--config", choices=sorted(CONFIGS), default="b32", help="architecture for --random-weights")
    ap.add_argument("--seed", type=int, default=20261122)
    ap.add_argument("--quantize", choices=["fp32", *common.QUANTIZERS], default="fp32",
                    help="what text.onnx holds; the reference always comes from fp32")
    ap.add_argument("--keep-fp32", action="store_true", help="keep text.fp32.onnx next to a quantized text.onnx")
    ap.add_argument("--external-data", action="store_true",
                    help="store the weights in text.onnx.data (ONNX external data) next to text.onnx")
    ap.add_argument("--image", action="store_true", help="also export image.onnx (fp32)")
    ap.add_argument("--max-tokens", type=int, default=CONTEXT)
    return ap.parse_args(argv)


def build(args):
    """Returns (text tower module, full model or None, source string, family, pad_id, image params)."""
    image = dict(image_size=224, mean=CLIP_MEAN, std=CLIP_STD)
    if args.random_weights and not args.open_clip:
        model = random_clip(args.config, args.seed)
        src = (f"seeded random weights (seed {args.seed}), CLIP {args.config} architecture via "
               f"transformers; tokenizer: OpenAI CLIP BPE vocabulary (MIT) from open-clip-torch")
        return TextTower.hf_clip(model), model, src, "clip", 0, image
    if args.open_clip:
        import open_clip
        oc = open_clip.create_model(args.open_clip, pretrained=None if args.random_weights else args.pretrained)
        oc.eval()
        if args.random_weights:
            common.seeded_reinit(oc, args.seed)
        pre = getattr(oc.visual, "preprocess_cfg", {}) or {}
        image = dict(image_size=int(pre.get("size", 224)) if isinstance(pre.get("size", 224), int) else 224,
                     mean=list(pre.get("mean", CLIP_MEAN)), std=list(pre.get("std", CLIP_STD)))
        src = f"open_clip {args.open_clip} pretrained={args.pretrained} (see the open_clip model card for its licence)"
        return TextTower.hf_clip(open_clip_to_hf(oc)), None, src, "clip", 0, image
    if args.arch == "mclip":
        return load_mclip(args.model), None, f"HF {args.model} (M-CLIP; check its licence)", "xlmr", 1, image
    model = load_hf(args.arch, args.model)
    tower = TextTower.hf_clip(model) if args.arch == "clip" else TextTower.siglip(model)
    try:
        from transformers import AutoImageProcessor
        proc = AutoImageProcessor.from_pretrained(args.model)
        size = proc.crop_size["height"] if getattr(proc, "crop_size", None) else proc.size["height"]
        image = dict(image_size=size, mean=list(proc.image_mean), std=list(proc.image_std))
    except Exception as e:  # keep CLIP's defaults
        print(f"warning: image processor not found ({e}); using CLIP preprocessing defaults")
    pad = 0 if args.arch == "clip" else int(model.config.text_config.pad_token_id or 1)
    return tower, model, f"HF {args.model} (see its model card for the licence)", args.arch, pad, image


def main(argv=None) -> int:
    args = parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    name = args.name or out.name
    tower, model, source, family, pad_id, image = build(args)
    tower.eval()

    (out / "text.onnx.data").unlink(missing_ok=True)  # a stale one would enter the fingerprint
    tok = tokenizer_for(args)
    tok_path = out / "tokenizer.json"
    save_tokenizer(tok, tok_path)

    fp32_path = out / "text.fp32.onnx"
    export_text(tower, fp32_path, "text_embeds")
    entries = make_reference(fp32_path, tok, pad_id, args.max_tokens, same_unpadded=args.arch != "siglip")
    dim = len(entries[0]["embedding"])
    sims = [common.cosine(a["embedding"], b["embedding"]) for i, a in enumerate(entries) for b in entries[i + 1:]]
    print(f"reference: {len(entries)} texts, dim {dim}, mean pairwise cosine {np.mean(sims):.3f}")

    card_extra = {}
    text_path = out / "text.onnx"
    if args.quantize == "fp32":
        shutil.move(fp32_path, text_path)
    else:
        common.QUANTIZERS[args.quantize](fp32_path, text_path)
        common.tidy_onnx(text_path)
        worst = check_quantized(fp32_path, text_path, entries)
        print(f"{args.quantize}: lowest cosine vs fp32 reference {worst:.5f}")
        card_extra["reference_tolerance"] = float(np.floor(min(worst, 0.9999) * 1000) / 1000)
        if not args.keep_fp32:
            fp32_path.unlink()

    if args.external_data:
        card_extra["external_data"] = common.to_external_data(text_path)
    note = (f"onnxruntime on the fp32 text tower, ids padded to {args.max_tokens} with id {pad_id} "
            f"(CLIP convention), embedding L2-normalised; produced by models/export_clip.py")
    common.write_reference(out / "reference.json", entries)

    fields = {
        "name": name, "family": family, "dim": dim, "max_tokens": args.max_tokens,
        "pooling": "pooled", "normalize": True, "inputs": ["input_ids"], "output": "text_embeds",
        "quantization": args.quantize, "fingerprint": common.fingerprint(text_path, tok_path),
        "source": source, "reference": note,
    }
    fields.update(card_extra)
    comments = {"reference": "how reference.json was produced",
                "reference_tolerance": "lowest cosine the quantized graph must reach vs reference.json (fp32)",
                "max_tokens": "truncate to the first max_tokens-1 ids, then EOT"}
    tables = {}
    if args.image:
        if model is None:
            print("warning: --image is supported for transformers CLIP models only; skipped")
        else:
            export_image(model, out / "image.onnx", image["image_size"])
            tables["image"] = {"file": "image.onnx", "input": "pixel_values", "output": "image_embeds",
                               "layout": "NCHW float32 RGB", "image_size": image["image_size"],
                               "resize": "bicubic, shortest side to image_size, then center crop",
                               "mean": image["mean"], "std": image["std"], "normalize": True}
    if args.arch == "siglip":
        # SigLIP pools the LAST position and was trained padded to 64: it must run padded.
        fields["pad_to"] = args.max_tokens
        fields["pad_id"] = pad_id
    common.write_card(out / "model.toml", fields, comments, tables)
    for f in sorted(out.iterdir()):
        print(f"{f}  {common.file_mb(f):.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
