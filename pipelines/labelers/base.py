"""The labeler interface: image + text queries -> candidate boxes with per-query scores.

Every labeler (`owlvit`, `reference`, `grit`) returns raw candidates; thresholding, NMS, the per-image cap
and phrase assignment happen once, in `pipelines.postprocess`, so both labelers share that logic.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass
class LabelerInput:
    """One image to label.

    Attributes:
      image: uint8[H, W, 3] RGB pixels of the stored image.
      queries: the image's text queries (n-grams of its alt-text, maybe plus categories).
      metadata: the sample's JSON metadata (the `reference` labeler reads ground truth from it).
      caption: the alt-text as stored (whitespace stripped, maybe cut at max_caption_chars).
    """

    key: str
    image: np.ndarray
    queries: list[str]
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    caption: str = ""


@dataclasses.dataclass
class Detections:
    """Candidate boxes for one image.

    Attributes:
      boxes: float32[P, 4] normalized [ymin, xmin, ymax, xmax] of the original (unpadded) image.
      scores: float32[P, Q] score in [0, 1] of every box for every query (Q = len(queries)).
      objectness: float32[P] or None (OWL-ViT v2 only).
      phrases: None, or the Q phrases the score columns stand for when the labeler brings its own
        (`grit`: spans of the caption) instead of scoring the image's queries.
      notes: one reason per input candidate the labeler dropped (counted in the manifest's notes).
    """

    boxes: np.ndarray
    scores: np.ndarray
    objectness: np.ndarray | None = None
    phrases: tuple[str, ...] | None = None
    notes: tuple[str, ...] = ()


class Labeler(abc.ABC):
    """Loaded once per worker; `detect` is called on batches."""

    name: str = "labeler"

    @property
    @abc.abstractmethod
    def fingerprint(self) -> str:
        """Name + checkpoint hash, recorded in every record and the manifest."""

    @abc.abstractmethod
    def detect(self, batch: list[LabelerInput]) -> list[Detections]:
        """Returns one Detections per input, in order. Zero queries gives zero-column scores."""
