"""clip-retrieval's own client against a clipedge front.

Usage: python check.py CLIP_CLIENT_PY KNN_SERVICE_URL INDICE_NAME

CLIP_CLIENT_PY is `clip_retrieval/clip_client.py` taken from the PyPI wheel `clip-retrieval`
(scripts/test.sh fetches and caches it). It is loaded as a plain file: importing the package
would pull torch. It needs only `requests`. Exits non-zero, naming the check, on any mismatch;
prints one JSON line of what it saw.
"""

import importlib.util
import json
import sys

import requests


def load_client(path):
    spec = importlib.util.spec_from_file_location("clip_client", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check(condition, what):
    if not condition:
        raise SystemExit(f"clip_client check failed: {what}")


def check_results(results, at_most, what):
    check(isinstance(results, list), f"{what}: a list, got {results!r}"[:400])
    check(0 < len(results) <= at_most, f"{what}: 1..={at_most} results, got {len(results)}")
    for result in results:
        for key in ("id", "similarity", "url", "caption"):
            check(key in result, f"{what}: {key} in {result!r}")
    similarities = [result["similarity"] for result in results]
    check(similarities == sorted(similarities, reverse=True), f"{what}: best first")


def main():
    client_path, url, indice_name = sys.argv[1:4]
    module = load_client(client_path)
    ClipClient, Modality = module.ClipClient, module.Modality

    # The client's defaults: image modality, 40 images, dedup, safety and violence flags,
    # aesthetic score 9 at weight 0.5.
    client = ClipClient(url=url, indice_name=indice_name)
    by_text = client.query(text="a dog running on the beach")
    check_results(by_text, 40, "defaults, by text")

    text_client = ClipClient(
        url=url,
        indice_name=indice_name,
        modality=Modality.TEXT,
        num_images=5,
        deduplicate=False,
        use_safety_model=False,
        use_violence_detector=False,
    )
    few = text_client.query(text="a dog running on the beach")
    check_results(few, 5, "text modality, 5 images")

    # Thousands of ids, as clip-front users download them (ClipClient sends num_images as
    # num_result_ids too): every one answered, records on the first 1,000.
    large_client = ClipClient(
        url=url,
        indice_name=indice_name,
        num_images=3000,
        deduplicate=False,
        use_safety_model=False,
        use_violence_detector=False,
    )
    large = large_client.query(text="a dog running on the beach")
    check(isinstance(large, list), f"3000 images: a list, got {large!r}"[:400])
    check(len(large) == 3000, f"3000 images: {len(large)} results")
    check(all("caption" in result for result in large[:1000]), "records on the first 1000")
    check(all("caption" not in result for result in large[1000:]), "ids only past 1000")
    check(len({result["id"] for result in large}) == len(large), "3000 images: distinct ids")

    base = url.rsplit("/knn-service", 1)[0]
    dim = requests.get(f"{base}/v1/health", timeout=60).json()["dim"]
    by_embedding = text_client.query(embedding_input=[1.0 / dim**0.5] * dim)
    check_results(by_embedding, 5, "by embedding")

    # What clipedge refuses, as the client returns it (the /v1 error body).
    by_image_url = client.query(image="https://example.com/a-dog.jpg")
    check(
        by_image_url.get("error", {}).get("code") == "image_search_unsupported",
        f"image_url refused: {by_image_url!r}",
    )
    unknown = ClipClient(url=url, indice_name="no-such-index").query(text="a dog")
    check(
        unknown.get("error", {}).get("code") == "unknown_index",
        f"unknown indice_name refused: {unknown!r}",
    )

    indices = requests.get(f"{base}/indices-list", timeout=60).json()
    check(indice_name in indices, f"{indice_name} in /indices-list {indices!r}")
    ids = [result["id"] for result in few[:2]]
    metadata = requests.post(
        f"{base}/metadata",
        data=json.dumps({"ids": ids, "indice_name": indice_name}),
        timeout=60,
    ).json()
    check([entry["id"] for entry in metadata] == ids, f"/metadata ids {metadata!r}")
    check(
        metadata[0]["metadata"]["caption"] == few[0]["caption"],
        f"/metadata caption {metadata!r}",
    )

    print(
        json.dumps(
            {
                "url": url,
                "indice_name": indice_name,
                "by_text": len(by_text),
                "top": by_text[0]["caption"],
                "by_embedding": len(by_embedding),
                "large": len(large),
            }
        )
    )


if __name__ == "__main__":
    main()
