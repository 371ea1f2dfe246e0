#!/usr/bin/env python3
"""Check that a CLIP tokenizer.json gives exactly open_clip's ids on a varied corpus.

Why: the Rust crate tokenizes with the `tokenizers` crate from tokenizer.json,
while CLIP was trained with open_clip's Python tokenizer (ftfy + regex + BPE).
Any id mismatch silently shifts query embeddings. This script compares both
on the corpus below (Unicode, emoji, Korean, accents, whitespace, very long
input truncated at 77 with EOT kept last) and, with --write, stores the corpus
and open_clip's ids as a fixture the Rust tests read without Python:

    python models/check_tokenizer.py --tokenizer models/tiny-clip/tokenizer.json \
        --write models/tiny-clip/tokenizer_reference.json

Exit status 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from clip_tokenizer import CONTEXT, EOS_ID, truncate_clip

LONG = ("a very long caption that goes on and on about a mountain lake at sunrise with "
        "pine trees, mist over the water, a wooden pier, two canoes and a heron ") * 6

CORPUS = [
    "a dog running on the beach",
    "A Dog Running On The Beach",
    "a puppy playing on the sand by the sea",
    "quarterly tax spreadsheet",
    "red",
    "x",
    "a photo of a cat.",
    "Crème brûlée, jalapeño, naïve façade, Ærøskøbing, Straße",
    "e\u0301te\u0301 (decomposed accents)",
    "서울의 밤거리 풍경",
    "한국어 텍스트와 English mixed",
    "東京の夜景とネオンサイン",
    "北京烤鸭和小笼包",
    "Привет, мир! Ελληνικά",
    "مرحبا بالعالم",
    "नमस्ते दुनिया",
    "ภาษาไทย",
    "🐶🏖️ puppy at the seaside 🌊☀️",
    "👨‍👩‍👧‍👦 family emoji with ZWJ, 🏳️‍🌈, 👍🏽",
    "emoji😀without😀spaces",
    "  leading and trailing spaces  ",
    "multiple   spaces,\ttabs\nand\r\nnewlines",
    "non\u00a0breaking\u2009thin\u3000ideographic spaces",
    "The QUICK brown fox's jump; don't stop! I'm, you're, we've, he'll, she'd",
    "DON'T SHOUT'S",
    "it’s “curly” ‘quotes’",
    "Ｆｕｌｌｗｉｄｔｈ ＡＳＣＩＩ １２３",
    "ﬁne ﬂowers (ligatures)",
    "numbers 123 4567 3.14159 1,000,000 2026-11-22",
    "punctuation!!! ??? ... --- *** ### @@@ $$$ %%%",
    "a.b,c;d:e!f?g",
    "C++ / C# / F# & Rust <3",
    "tom &amp; jerry &lt;3",
    "https://example.com/path?query=1&x=y#frag",
    "user@example.com #hashtag @mention",
    "snake_case_identifier and camelCaseIdentifier",
    "tab\tseparated\tvalues",
    "ALL CAPS SENTENCE WITH ÜMLAUTS",
    "İstanbul ve ışık",
    "zero\u200bwidth space",
    "control\u0007char",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "🐶" * 80,
    LONG,
    "한국어 " * 60,
]


def open_clip_ids(texts: list[str]) -> tuple[list[list[int]], list[list[int]]]:
    """open_clip's ids: (untruncated [SOT]+encode+[EOT], tokenize() truncated to 77 unpadded)."""
    import open_clip
    from open_clip.tokenizer import SimpleTokenizer

    simple = SimpleTokenizer()
    full = [[simple.sot_token_id] + simple.encode(t) + [simple.eot_token_id] for t in texts]
    padded = open_clip.tokenize(texts, context_length=CONTEXT).tolist()
    truncated = []
    for row in padded:
        end = row.index(EOS_ID)  # EOT is the last real id; zeros are padding
        truncated.append(row[:end + 1])
    return full, truncated


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", type=Path, required=True, help="tokenizer.json to check")
    ap.add_argument("--write", type=Path, help="write corpus + open_clip ids to this JSON fixture")
    args = ap.parse_args()

    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(args.tokenizer))
    full, truncated = open_clip_ids(CORPUS)
    bad = 0
    for text, want_full, want in zip(CORPUS, full, truncated):
        got_full = tok.encode(text).ids
        got = truncate_clip(got_full)
        if got_full != want_full or got != want:
            bad += 1
            print(f"MISMATCH {text!r}\n  open_clip {want_full}\n  json      {got_full}")
    print(f"{len(CORPUS) - bad}/{len(CORPUS)} texts give identical ids "
          f"(untruncated and truncated to {CONTEXT})")
    if args.write and bad == 0:
        entries = [{"text": t, "ids": ids, "ids_untruncated": f}
                   for t, ids, f in zip(CORPUS, truncated, full)]
        note = ("open_clip SimpleTokenizer ids (open-clip-torch, bpe_simple_vocab_16e6). "
                "ids: open_clip.tokenize(context_length=77) without padding (truncated: first 76 "
                "then EOT). ids_untruncated: [SOT] + encode(text) + [EOT]. "
                "Regenerate: python models/check_tokenizer.py --tokenizer ... --write ...")
        body = ",\n".join(json.dumps(e, ensure_ascii=False, separators=(",", ":")) for e in entries)
        args.write.write_text("{\"note\":" + json.dumps(note) + ",\n\"context_length\":77,\n"
                              "\"entries\":[\n" + body + "\n]}\n", encoding="utf-8")
        print(f"wrote {args.write}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
