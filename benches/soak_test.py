#!/usr/bin/env python3
"""The soak's answer classifier on made-up answers: what it must call wrong, it does.
`python3 benches/soak_test.py` (stdlib only, no stack; scripts/test.sh runs it)."""

from __future__ import annotations

import copy
import json
import sys
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from soak import Checker, loosely_same  # noqa: E402

K = 4


def item(item_id: int, score: float) -> dict:
    return {"id": item_id, "score": score, "url": f"/media/{item_id}.webp", "caption": f"c{item_id}"}


REFERENCE = [item(10, 0.9), item(11, 0.8), item(12, 0.7), item(13, 0.6)]
# Items of the index the reference does not show (as `GET /v1/items/{id}` would answer).
OTHERS = {20: item(20, 1.0), 21: item(21, 1.0)}


def checker() -> Checker:
    bodies = [{"vector": [0.0], "k": K}]
    check = Checker("http://unused", bodies, ["query"], [copy.deepcopy(REFERENCE)])
    for item_id, record in OTHERS.items():
        check.items[item_id] = {"caption": record["caption"], "url": record["url"]}
    return check


def answer(results: list[dict], failed: list[int] | None = None) -> str:
    return json.dumps({"results": results, "partial": bool(failed),
                       "failed_lists": failed or [], "timings": {}, "stats": {}})


class ClassifierTest(unittest.TestCase):
    def classify(self, status: int, body: str) -> str:
        return checker().classify(0, status, body)[0]

    def test_the_reference_is_complete(self):
        self.assertEqual(self.classify(200, answer(REFERENCE)), "complete")

    def test_a_tie_at_the_cut_may_bring_another_id(self):
        tie = REFERENCE[:3] + [item(20, 0.6)]
        self.assertEqual(self.classify(200, answer(tie)), "complete")

    def test_ties_may_swap(self):
        tied = [item(10, 0.9), item(11, 0.7), item(12, 0.7), item(13, 0.6)]
        check = checker()
        check.references[0] = copy.deepcopy(tied)
        swapped = [tied[0], tied[2], tied[1], tied[3]]
        self.assertEqual(check.classify(0, 200, answer(swapped))[0], "complete")

    def test_wrong_complete_answers(self):
        cases = {
            "reordered": [REFERENCE[1], REFERENCE[0]] + REFERENCE[2:],
            "score off": [item(10, 0.9001)] + REFERENCE[1:],
            "one short": REFERENCE[:3],
            "foreign id": REFERENCE[:3] + [item(20, 0.65)],
            "repeated id": REFERENCE[:3] + [item(12, 0.6)],
            "other caption": REFERENCE[:3] + [dict(REFERENCE[3], caption="x")],
        }
        for name, results in cases.items():
            with self.subTest(name):
                self.assertEqual(self.classify(200, answer(results)), "wrong")

    def test_complete_must_not_name_failed_lists(self):
        body = json.loads(answer(REFERENCE))
        body["failed_lists"] = [3]
        self.assertEqual(self.classify(200, json.dumps(body)), "wrong")

    def test_consistent_partial_answers(self):
        # Lists holding 11 and 12 failed: the rest moves up, a lower hit fills in.
        results = [item(10, 0.9), item(13, 0.6), item(20, 0.55)]
        self.assertEqual(self.classify(200, answer(results, [5, 7])), "partial")

    def test_inconsistent_partial_answers(self):
        cases = {
            "no failed lists": (REFERENCE[:2], []),
            "score off": ([item(10, 0.95)], [1]),
            "alien above the reference's last": ([item(10, 0.9), item(20, 0.65)], [1]),
            "not an item": ([item(10, 0.9), item(99, 0.1)], [1]),
            "out of order": ([item(13, 0.6), item(10, 0.9)], [1]),
            "repeated id": ([item(10, 0.9), item(10, 0.9)], [1]),
            "too many": (REFERENCE + [item(20, 0.5)], [1]),
            "repeated list": ([item(10, 0.9)], [1, 1]),
        }
        check = checker()
        check.items[99] = None
        for name, (results, failed) in cases.items():
            with self.subTest(name):
                body = json.loads(answer(results, failed))
                body["partial"] = True
                self.assertEqual(check.classify(0, 200, json.dumps(body))[0], "wrong")

    def test_documented_5xx_only(self):
        def error(code: str) -> str:
            return json.dumps({"error": {"code": code, "message": "m"}})

        self.assertEqual(self.classify(502, error("scanners_failed")), "5xx:scanners_failed")
        self.assertEqual(self.classify(500, error("internal")), "5xx:internal")
        self.assertEqual(self.classify(504, error("timeout")), "5xx:timeout")
        self.assertEqual(self.classify(500, error("scanners_failed")), "wrong")  # wrong status
        self.assertEqual(
            self.classify(503, error("storage_unavailable")), "5xx:storage_unavailable"
        )
        self.assertEqual(self.classify(500, error("storage_unavailable")), "wrong")  # wrong status
        self.assertEqual(self.classify(503, error("disk_on_fire")), "wrong")  # undocumented
        self.assertEqual(self.classify(500, "<html>worker threw</html>"), "wrong")
        self.assertEqual(self.classify(400, error("invalid_json")), "wrong")
        self.assertEqual(checker().classify(-1, 200, answer(REFERENCE))[0], "wrong")  # unpaired

    def test_text_answers_against_the_native_encoder(self):
        close = [item(10, 0.905), item(11, 0.795), item(12, 0.7), item(13, 0.605)]
        self.assertIsNone(loosely_same(close, REFERENCE))
        far = [item(10, 0.95)] + REFERENCE[1:]
        self.assertIsNotNone(loosely_same(far, REFERENCE))
        other = [item(10, 0.9), item(20, 0.8), item(21, 0.7), item(13, 0.6)]
        self.assertIsNotNone(loosely_same(other, REFERENCE))


if __name__ == "__main__":
    unittest.main()
