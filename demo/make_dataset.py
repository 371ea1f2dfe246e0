#!/usr/bin/env python3
"""Regenerates the bundled demo dataset (demo/images/*.webp, demo/items.jsonl) from Debian's
openclipart packages (public domain; see demo/LICENSE.md).

    apt-get install -y openclipart-png openclipart-svg
    pip install pillow
    python3 demo/make_dataset.py            # deterministic: same packages -> same files

Each item is one PNG of openclipart-png, thumbnailed to at most 128 px (WebP, on white so line
art shows on a dark page). Its caption is the title and keywords from the matching SVG's
metadata plus the category folder. Files that appear in two categories (the same PNG bytes) are
kept as two items sharing one thumbnail: real duplicates the search de-duplicates by content.
"""

import hashlib
import io
import json
import os
import re
import shutil
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

from PIL import Image

# Some source PNGs are huge; anything too large to thumbnail safely is skipped, not loaded.
Image.MAX_IMAGE_PIXELS = 64_000_000

PNG_ROOT = Path("/usr/share/openclipart/png")
SVG_ROOT = Path("/usr/share/openclipart/svg")
OUT = Path(__file__).resolve().parent
THUMB_PX = 128
WEBP_QUALITY = 70
# Items taken per top-level category (all when the category is smaller); icon-heavy categories
# are sampled so the set stays varied and under the 15 MB budget.
QUOTA = {
    "computer": 220,
    "shapes": 160,
    "signs_and_symbols": 300,
    "recreation": 420,
}
DEFAULT_QUOTA = 400
NAMESPACES = {
    "dc": "http://purl.org/dc/elements/1.1/",
    "cc": "http://web.resource.org/cc/",
    "cc2": "http://creativecommons.org/ns#",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
}
STOP_KEYWORDS = {
    "clip art", "clipart", "clip-art", "image", "media", "public domain", "png", "svg",
    "externalsource", "openclipart", "drawing", "picture", "icon", "icons", "hash", "",
}


def sort_key(path: Path) -> str:
    # A stable pseudo-random order: the sample does not favour early letters.
    return hashlib.sha256(str(path).encode()).hexdigest()


def text_of(element):
    return " ".join((element.text or "").split()) if element is not None else ""


def svg_metadata(svg_path: Path):
    """Title, creator and keywords of the SVG's Creative Commons work record."""
    try:
        root = ElementTree.parse(svg_path).getroot()
    except (ElementTree.ParseError, OSError):
        return "", "", []
    work = None
    for namespace in ("cc", "cc2"):
        work = root.find(f".//{{{NAMESPACES[namespace]}}}Work")
        if work is not None:
            break
    if work is None:
        return "", "", []
    dc = NAMESPACES["dc"]
    title = text_of(work.find(f"{{{dc}}}title"))
    creator = ""
    creator_element = work.find(f"{{{dc}}}creator")
    if creator_element is not None:
        creator = text_of(creator_element.find(f".//{{{dc}}}title"))
    keywords = [
        text_of(item).lower()
        for item in work.findall(f"{{{dc}}}subject//{{{NAMESPACES['rdf']}}}li")
    ]
    return title, creator, keywords


def words_of_file_name(png: Path) -> str:
    stem = re.sub(r"_?\d*$", "", png.stem)
    return " ".join(part for part in re.split(r"[_\-]+", stem) if part)


def caption_for(png: Path):
    relative = png.relative_to(PNG_ROOT)
    title, creator, keywords = svg_metadata(SVG_ROOT / relative.with_suffix(".svg"))
    creator_key = creator.lower()
    if not title or title.lower() == creator_key or title.lower().startswith("open clip art"):
        title = words_of_file_name(png)
    title_words = set(title.lower().split())
    kept = []
    for keyword in keywords:
        if keyword in STOP_KEYWORDS or keyword == creator_key or keyword in kept:
            continue
        # Some files carry editor artefacts ("hash(0x8a3ecd4)") as keywords.
        if keyword in title_words or len(keyword) > 40 or keyword.startswith("hash("):
            continue
        kept.append(keyword)
        if len(kept) == 6:
            break
    category = relative.parent.name.replace("_", " ")
    caption = title
    if kept:
        caption += " — " + ", ".join(kept)
    caption += f" ({category})"
    return caption[:300]


def thumbnail(png: Path) -> bytes:
    with Image.open(png) as image:
        image = image.convert("RGBA")
        image.thumbnail((THUMB_PX, THUMB_PX), Image.LANCZOS)
        canvas = Image.new("RGB", image.size, (255, 255, 255))
        canvas.paste(image, mask=image.getchannel("A"))
        out = io.BytesIO()
        canvas.save(out, format="WEBP", quality=WEBP_QUALITY, method=6)
        return out.getvalue()


def main():
    if not PNG_ROOT.is_dir() or not SVG_ROOT.is_dir():
        sys.exit("error: install openclipart-png and openclipart-svg (apt-get) first")
    by_category = {}
    for png in sorted(PNG_ROOT.rglob("*.png")):
        category = png.relative_to(PNG_ROOT).parts[0]
        by_category.setdefault(category, []).append(png)
    by_bytes = {}
    for pngs in by_category.values():
        for png in pngs:
            by_bytes.setdefault(hashlib.sha256(png.read_bytes()).hexdigest(), []).append(png)
    chosen = set()
    for category, pngs in sorted(by_category.items()):
        quota = QUOTA.get(category, DEFAULT_QUOTA)
        chosen.update(sorted(pngs, key=sort_key)[:quota])
    # Every copy of a chosen picture comes along: the duplicates de-duplication should catch.
    for png in list(chosen):
        chosen.update(by_bytes[hashlib.sha256(png.read_bytes()).hexdigest()])

    images = OUT / "images"
    shutil.rmtree(images, ignore_errors=True)
    images.mkdir(parents=True)
    thumbs = {}
    items = []
    for png in sorted(chosen, key=lambda path: str(path.relative_to(PNG_ROOT))):
        digest = hashlib.sha256(png.read_bytes()).hexdigest()
        if digest not in thumbs:
            try:
                data = thumbnail(png)
            except (OSError, ValueError, Image.DecompressionBombError) as error:
                print(f"skipping {png}: {error}", file=sys.stderr)
                continue
            name = f"images/{hashlib.sha256(data).hexdigest()[:16]}.webp"
            (OUT / name).write_bytes(data)
            thumbs[digest] = name
        items.append({
            "id": len(items),
            "caption": caption_for(png),
            "image": thumbs[digest],
            "source": str(png.relative_to(PNG_ROOT)),
        })
    with open(OUT / "items.jsonl", "w", encoding="utf-8") as out:
        for item in items:
            out.write(json.dumps(item, ensure_ascii=False) + "\n")
    total = sum(os.path.getsize(OUT / name) for name in thumbs.values())
    duplicates = len(items) - len(thumbs)
    print(f"{len(items)} items, {len(thumbs)} images ({total / 1e6:.1f} MB), "
          f"{duplicates} items share another item's image")


if __name__ == "__main__":
    main()
