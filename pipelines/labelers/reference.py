"""The `reference` labeler: answers from ground-truth regions shipped in the sample's JSON.

Corpora that already carry boxes (the synthetic sample corpus, GRIT-style data, COCO instances) list
them as `metadata["regions"] = [{"bbox": [ymin, xmin, ymax, xmax] (normalized), "phrase": str,
"names": [str, ...]}, ...]`. Each region becomes one candidate box, scored against every query:

  exact match  (query == one of the region's names or its phrase, after normalization)
               0.9 + 0.005 * words in the query (so "red star" beats "star" on the same box)
  partial match (the query and a name share words) 0.5 * Jaccard overlap of their word sets (< 0.5)
  otherwise    0.0

Normalization: lowercase, punctuation stripped from word edges, whitespace collapsed, the same
cleaning the query builder applies, so a name that appears in the alt-text always matches exactly.
Both sides are then compared in canonical form (`inflect.canonical`: number words dropped, each
word singularised by documented rules), so "giraffes" and "two giraffes" match a region named
"giraffe" exactly; the word count in the exact score is that of the canonical query.
The shared post-processing (threshold, NMS, cap) then runs exactly as for OWL-ViT.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from pipelines.labelers.base import Detections, Labeler, LabelerInput
from pipelines.labelers.inflect import canonical
from pipelines.queries import _PUNCT

EXACT = 0.9
PARTIAL = 0.5


def normalize(text: str) -> str:
    words = (w.strip(_PUNCT) for w in str(text).lower().split())
    return " ".join(w for w in words if w)


def region_names(region: dict[str, Any]) -> list[str]:
    """A region's phrase and names, normalized and in canonical form, without duplicates."""
    names = [region.get("phrase", "")] + list(region.get("names", []) or [])
    out = []
    for n in names:
        n = canonical(normalize(n))
        if n and n not in out:
            out.append(n)
    return out


def parse_regions(metadata: dict[str, Any]) -> tuple[np.ndarray, list[list[str]]]:
    """metadata -> (boxes float32[R, 4], names per region). Malformed regions are skipped."""
    boxes, names = [], []
    for region in metadata.get("regions", []) or []:
        try:
            box = [float(v) for v in region["bbox"]]
        except (KeyError, TypeError, ValueError):
            continue
        if len(box) != 4 or not np.all(np.isfinite(box)):
            continue
        boxes.append(box)
        names.append(region_names(region))
    return np.asarray(boxes, np.float32).reshape(-1, 4), names


def score_matrix(names: list[list[str]], queries: list[str]) -> np.ndarray:
    """Per-region names, Q queries -> float32[R, Q] scores (see the module docstring)."""
    scores = np.zeros((len(names), len(queries)), np.float32)
    qnorm = [canonical(normalize(q)) for q in queries]
    qwords = [set(q.split()) for q in qnorm]
    for r, region in enumerate(names):
        name_words = [set(n.split()) for n in region]
        vocabulary = set().union(*name_words)
        exact = set(region)
        for j, q in enumerate(qnorm):
            if not q or qwords[j].isdisjoint(vocabulary):
                continue  # Most queries share no word with a region: skip the Jaccard loop.
            if q in exact:
                scores[r, j] = EXACT + 0.005 * min(len(qwords[j]), 10)
                continue
            scores[r, j] = PARTIAL * max(
                len(words & qwords[j]) / len(words | qwords[j]) for words in name_words)
    return scores


class ReferenceLabeler(Labeler):
    """Labeler over the input's own ground-truth regions; needs no model."""

    name = "reference"

    @property
    def fingerprint(self) -> str:
        rule = json.dumps({"exact": EXACT, "partial": PARTIAL, "version": 2}, sort_keys=True)
        return f"reference@{hashlib.sha256(rule.encode()).hexdigest()[:12]}"

    def detect(self, batch: list[LabelerInput]) -> list[Detections]:
        out = []
        for item in batch:
            boxes, names = parse_regions(item.metadata)
            out.append(Detections(boxes=boxes, scores=score_matrix(names, item.queries)))
        return out
