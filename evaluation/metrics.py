"""Scores shared by the evaluators: box IoU / Acc@0.5 and caption metrics (pycocoevalcap).

Boxes are normalized [ymin, xmin, ymax, xmax] (the record convention). A predicted box may be None
(the model produced no well-formed box): it counts as a miss, and callers report the share separately.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np

Box = Sequence[float]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise IoU of float[N, 4] boxes [ymin, xmin, ymax, xmax] -> float[N].

    Degenerate boxes (zero or negative extent) have zero area: their IoU is 0, never NaN, even
    against an identical degenerate box (0/0 is defined as 0 here, so a collapsed prediction cannot
    score a hit).
    """
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    ih = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    iw = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = ih * iw
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a + area_b - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def is_hit(ious, threshold: float = 0.5) -> np.ndarray:
    """bool[...]: IoU >= threshold, inclusive as in the RefCOCO protocol, with a tiny tolerance so a
    box whose IoU is exactly the threshold in real arithmetic is not lost to rounding."""
    return np.asarray(ious, np.float64) >= threshold - 1e-9


def rec_scores(
    predictions: Sequence[Box | None], targets: Sequence[Box], threshold: float = 0.5
) -> dict[str, float]:
    """Acc@threshold (IoU >= threshold, inclusive as in the RefCOCO protocol), mean IoU, the
    share of malformed (None) predictions, and "pointing": the share whose predicted box centre
    lies inside the true box (the pointing game; it shows a model finding the object before its
    edges are precise enough for IoU >= 0.5). Over all examples; malformed ones count as misses."""
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} targets")
    n = len(targets)
    if n == 0:
        return {"acc": 0.0, "miou": 0.0, "malformed": 0.0, "pointing": 0.0, "count": 0.0}
    malformed = np.array([p is None for p in predictions])
    preds = np.array([[0.0, 0.0, 0.0, 0.0] if p is None else list(p) for p in predictions])
    ious = np.where(malformed, 0.0, box_iou(preds, np.asarray(targets, np.float64)))
    hits = is_hit(ious, threshold)
    truth = np.asarray(targets, np.float64).reshape(-1, 4)
    centre = (preds[:, :2] + preds[:, 2:]) / 2
    inside = np.all((centre >= truth[:, :2]) & (centre <= truth[:, 2:]), axis=1) & ~malformed
    return {
        "acc": float(hits.mean()),
        "miou": float(ious.mean()),
        "malformed": float(malformed.mean()),
        "pointing": float(inside.mean()),
        "count": float(n),
    }


_PUNCT = re.compile(r"[^\w\s]")


def simple_tokenize(text: str) -> str:
    """Lowercase, drop punctuation, collapse whitespace.

    Stands in for the PTB tokenizer of the COCO toolkit, which needs Java; on plain English captions
    the two differ only on contractions and hyphens.
    """
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def caption_scores(
    references: Mapping[object, Sequence[str]],
    hypotheses: Mapping[object, str],
    *,
    tokenize: bool = True,
) -> dict[str, float]:
    """CIDEr-D and BLEU-4 over a corpus with pycocoevalcap's scorers.

    references: id -> list of reference captions; hypotheses: id -> one caption (same ids).
    CIDEr-D's document frequencies come from these references (corpus mode), as in the COCO toolkit.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    if set(references) != set(hypotheses):
        raise ValueError("references and hypotheses must have the same ids")
    if not hypotheses:
        return {"cider": 0.0, "bleu4": 0.0}
    prep = simple_tokenize if tokenize else (lambda s: s)
    gts = {k: [prep(r) for r in refs] for k, refs in references.items()}
    # pycocoevalcap asserts one hypothesis per id and crashes on an empty string's n-grams only via
    # BLEU's length ratio; an empty hypothesis is legal and simply scores 0.
    res = {k: [prep(h)] for k, h in hypotheses.items()}
    cider, _ = Cider().compute_score(gts, res)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return {"cider": float(cider), "bleu4": float(bleu[3])}
