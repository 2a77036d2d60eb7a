"""The `grit` labeler: boxes that GRIT (Kosmos-2's grounded web pairs) ships with each caption.

GRIT's published format (the zzliang/GRIT dataset card on Hugging Face; img2dataset keeps the
columns with `--save_additional_columns '["noun_chunks","ref_exps",...]'`, in the parquet columns
or each webdataset sample's `.json`): `noun_chunks` and `ref_exps` are lists of
`[start, end, x_min, y_min, x_max, y_max, score]`, character offsets into `caption` and a box
normalised to [0, 1] of the image's width (x) and height (y).

Each chunk becomes one candidate: the phrase is `caption[start:end]`, the box
[y_min, x_min, y_max, x_max], the score GRIT's own. The shared post-processing (threshold, NMS,
max boxes) then runs as for every labeler. Bad chunks are dropped and counted by reason, never
failing the job: `grit/malformed_chunk` (not 7 numbers), `grit/offsets_out_of_range`,
`grit/empty_span` (only whitespace), `grit/box_not_finite` (NaN or inf, score included),
`grit/box_outside_unit` (a coordinate outside [0, 1]), `grit/box_inverted` (min above max).
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import numpy as np

from pipelines.labelers.base import Detections, Labeler, LabelerInput

SPANS = ("noun_chunks", "ref_exps", "both")
# Float noise of a writer that normalised pixel boxes: 1.0000001 is a box edge, not a bad box.
_EPS = 1e-6


def chunk_region(chunk: Any, caption: str) -> tuple[str, list[float], float] | str:
    """One GRIT chunk -> (phrase, [ymin, xmin, ymax, xmax], score), or the reason it is bad."""
    try:
        start, end, x0, y0, x1, y1, score = (float(v) for v in chunk)
    except (TypeError, ValueError):
        return "malformed_chunk"
    if not all(math.isfinite(v) for v in (start, end, x0, y0, x1, y1, score)):
        return "box_not_finite"
    if start != int(start) or end != int(end) or not 0 <= start < end <= len(caption):
        return "offsets_out_of_range"
    phrase = " ".join(caption[int(start):int(end)].split())
    if not phrase:
        return "empty_span"
    if not all(-_EPS <= v <= 1 + _EPS for v in (x0, y0, x1, y1)):
        return "box_outside_unit"
    if x0 > x1 or y0 > y1:
        return "box_inverted"
    box = [min(max(v, 0.0), 1.0) for v in (y0, x0, y1, x1)]
    return phrase, box, score


def _caption(item: LabelerInput) -> str:
    # The offsets index the caption GRIT was built from: img2dataset's own copy (metadata
    # `caption`) is that text; the stored alt-text may have been stripped or cut.
    text = item.metadata.get("caption")
    return text if isinstance(text, str) else item.caption


class GritLabeler(Labeler):
    """Labeler over GRIT's noun chunks and/or referring expressions; needs no model."""

    name = "grit"

    def __init__(self, spans: str = "noun_chunks"):
        if spans not in SPANS:
            raise ValueError(f"grit spans {spans!r}: use one of {SPANS}")
        self.spans = spans
        self.columns = ("noun_chunks", "ref_exps") if spans == "both" else (spans,)

    @property
    def fingerprint(self) -> str:
        rule = json.dumps({"spans": self.spans, "eps": _EPS, "version": 1}, sort_keys=True)
        return f"grit:{self.spans}@{hashlib.sha256(rule.encode()).hexdigest()[:12]}"

    def detect(self, batch: list[LabelerInput]) -> list[Detections]:
        return [self._one(item) for item in batch]

    def _one(self, item: LabelerInput) -> Detections:
        caption = _caption(item)
        phrases, boxes, scores, notes = [], [], [], []
        for column in self.columns:
            chunks = item.metadata.get(column)
            if chunks is None:
                continue
            if isinstance(chunks, str):  # a parquet column written as a JSON string
                try:
                    chunks = json.loads(chunks)
                except ValueError:
                    chunks = None
            if not isinstance(chunks, (list, tuple)):
                notes.append("grit/malformed_chunk")
                continue
            for chunk in chunks:
                got = chunk_region(chunk, caption)
                if isinstance(got, str):
                    notes.append(f"grit/{got}")
                    continue
                phrases.append(got[0])
                boxes.append(got[1])
                scores.append(got[2])
        n = len(phrases)
        # One column per chunk: a chunk's score counts for its own phrase only.
        score_matrix = np.zeros((n, n), np.float32)
        score_matrix[np.arange(n), np.arange(n)] = scores
        return Detections(boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
                          scores=score_matrix, phrases=tuple(phrases), notes=tuple(notes))
