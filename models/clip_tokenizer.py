"""Build a HF `tokenizer.json` equivalent to CLIP's own BPE tokenizer (open_clip / OpenAI).

No model hub is needed: the BPE merges come from `bpe_simple_vocab_16e6.txt.gz`
(MIT, OpenAI), which the open-clip-torch and clip-anytorch wheels ship.

What open_clip does to a string, and how the tokenizer.json reproduces it:

  ftfy.fix_text          -> NFC, plus Replace rules generated from ftfy's own
                            tables: control characters removed, Latin
                            ligatures split, full-width forms narrowed, curly
                            quotes straightened
  html.unescape (x2)     -> Replace rules for the common entities only
  whitespace_clean       -> Replace(\\s+ -> " ") and Strip
  .lower()               -> Lowercase
  regex findall          -> Split(pattern, invert) with CLIP's pattern
  bytes_to_unicode + BPE -> ByteLevel(use_regex=False) + BPE(end_of_word_suffix="</w>")
  [SOT] ids [EOT]        -> TemplateProcessing with ids 49406 / 49407

Known differences (documented, not in the test corpus): ftfy's mojibake
repair and C1-control remapping, and HTML entities other than the common ones.
Truncation is not in the json: the caller keeps the first 76 ids and then EOT
(open_clip's rule: tokens[:77], last one replaced by EOT).
"""

from __future__ import annotations

import gzip
from pathlib import Path

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
BOS_ID, EOS_ID = 49406, 49407
CONTEXT = 77
# CLIP's pre-tokenizer regex (without the special tokens, which are added tokens here).
CLIP_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
HTML_ENTITIES = [("&amp;", "&"), ("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">"),
                 ("&quot;", '"'), ("&#39;", "'"), ("&#x27;", "'"), ("&apos;", "'"),
                 ("&nbsp;", "\u00a0")]


def find_bpe_vocab() -> Path:
    """Locate bpe_simple_vocab_16e6.txt.gz inside an installed open_clip or clip package."""
    for mod in ("open_clip", "clip"):
        try:
            pkg = __import__(mod)
        except ImportError:
            continue
        p = Path(pkg.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
        if p.exists():
            return p
    raise FileNotFoundError("bpe_simple_vocab_16e6.txt.gz: pip install open-clip-torch")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable character table (printable bytes map to themselves)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def vocab_and_merges(bpe_gz: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's vocabulary in id order: bytes, bytes+</w>, one token per merge, SOT, EOT."""
    lines = gzip.open(bpe_gz).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1:49152 - 256 - 2 + 1]]
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab = {t: i for i, t in enumerate(tokens)}
    assert vocab[BOS] == BOS_ID and vocab[EOS] == EOS_ID and len(vocab) == 49408
    return vocab, merges


def _ftfy_rules():
    """Replace rules derived from ftfy's tables, so they track the installed ftfy."""
    from tokenizers import Regex, normalizers
    import ftfy.chardata as cd

    rules = []
    controls = "".join(f"\\x{{{c:X}}}" for c in sorted(cd.CONTROL_CHARS))
    rules.append(normalizers.Replace(Regex(f"[{controls}]"), ""))
    for table in (cd.LIGATURES, cd.WIDTH_MAP):
        for code, repl in sorted(table.items()):
            rules.append(normalizers.Replace(chr(code), repl))
    rules.append(normalizers.Replace(Regex(cd.SINGLE_QUOTE_RE.pattern), "'"))
    rules.append(normalizers.Replace(Regex(cd.DOUBLE_QUOTE_RE.pattern), '"'))
    return rules


def build_clip_tokenizer(bpe_gz: Path | None = None):
    """A `tokenizers.Tokenizer` that gives open_clip's ids (before truncation)."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    vocab, merges = vocab_and_merges(bpe_gz or find_bpe_vocab())
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token=EOS,
                        continuing_subword_prefix="", end_of_word_suffix="</w>", fuse_unk=False))
    tok.normalizer = normalizers.Sequence(
        _ftfy_rules()
        + [normalizers.NFC()]
        + [normalizers.Replace(a, b) for a, b in HTML_ENTITIES]
        + [normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip(), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CLIP_PATTERN), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, BOS_ID), (EOS, EOS_ID)])
    tok.add_special_tokens([BOS, EOS])
    tok.no_truncation()
    tok.no_padding()
    return tok


def truncate_clip(ids: list[int], context: int = CONTEXT) -> list[int]:
    """open_clip's truncation: keep the first `context` ids, the last one forced to EOT."""
    if len(ids) <= context:
        return list(ids)
    return list(ids[:context - 1]) + [EOS_ID]


def save_tokenizer(tok, path: Path) -> None:
    """Write tokenizer.json compactly (no indentation: ~30% smaller in the repo)."""
    path.write_text(tok.to_str(pretty=False), encoding="utf-8")
