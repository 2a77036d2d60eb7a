"""From a labeler's raw candidates to the regions stored in a record (shared by every labeler).

Order, as in the OWL-ST recipe: each box takes its best query (argmax over queries; ties go to the
earlier query) -> keep boxes whose score is at least `score_threshold` -> drop boxes with a side under
`min_box_size` -> class-agnostic greedy NMS at `nms_iou` -> keep the `max_boxes` best.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from pipelines.labelers.base import Detections


@dataclasses.dataclass(frozen=True)
class PostprocessConfig:
    score_threshold: float = 0.3
    nms_iou: float = 0.5
    max_boxes: int = 16
    min_box_size: float = 0.01


@dataclasses.dataclass
class Regions:
    """Attributes: boxes float32[N, 4] [ymin, xmin, ymax, xmax]; phrases N; scores float32[N];
    query_ranks int64[N] (index of the phrase in the query list)."""

    boxes: np.ndarray
    phrases: tuple[str, ...]
    scores: np.ndarray
    query_ranks: np.ndarray


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float[N, 4], float[M, 4] ([ymin, xmin, ymax, xmax]) -> float[N, M] intersection over union."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    y0 = np.maximum(a[:, None, 0], b[None, :, 0])
    x0 = np.maximum(a[:, None, 1], b[None, :, 1])
    y1 = np.minimum(a[:, None, 2], b[None, :, 2])
    x1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(y1 - y0, 0, None) * np.clip(x1 - x0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Greedy NMS. boxes float[N, 4], scores float[N] -> int[K] kept indices, best first."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    if iou >= 1.0 or len(order) <= 1:
        return order
    overlaps = iou_matrix(boxes, boxes)
    keep: list[int] = []
    suppressed = np.zeros(len(order), bool)
    for i in order:
        if suppressed[i]:
            continue
        keep.append(int(i))
        suppressed |= overlaps[i] > iou
    return np.asarray(keep, np.int64)


def select_regions(
    detections: Detections, queries: list[str], config: PostprocessConfig
) -> Regions:
    """Candidates (boxes float[P, 4], scores float[P, Q]) -> the regions kept for one image.

    The Q score columns are the image's `queries`, or the labeler's own `detections.phrases`."""
    if detections.phrases is not None:
        queries = list(detections.phrases)
    empty = Regions(np.zeros((0, 4), np.float32), (), np.zeros((0,), np.float32),
                    np.zeros((0,), np.int64))
    scores = np.asarray(detections.scores, np.float32)
    boxes = np.asarray(detections.boxes, np.float32).reshape(-1, 4)
    if not queries or boxes.shape[0] == 0 or scores.size == 0:
        return empty
    if scores.shape != (boxes.shape[0], len(queries)):
        raise ValueError(
            f"labeler returned scores of shape {scores.shape} for {boxes.shape[0]} boxes and "
            f"{len(queries)} queries"
        )
    best = np.argmax(scores, axis=1)
    best_score = scores[np.arange(len(best)), best]
    # Finiteness before clipping: clip would turn [0.2, 0.2, inf, inf] into a real-looking box.
    finite = np.all(np.isfinite(boxes), axis=1)
    boxes = np.clip(np.where(finite[:, None], boxes, 0.0), 0.0, 1.0)
    # A labeler may return corners in either order; normalize so ymin <= ymax, xmin <= xmax.
    boxes = np.stack([np.minimum(boxes[:, 0], boxes[:, 2]), np.minimum(boxes[:, 1], boxes[:, 3]),
                      np.maximum(boxes[:, 0], boxes[:, 2]), np.maximum(boxes[:, 1], boxes[:, 3])], 1)
    ok = np.isfinite(best_score) & finite
    ok &= best_score >= config.score_threshold
    ok &= (boxes[:, 2] - boxes[:, 0] >= config.min_box_size)
    ok &= (boxes[:, 3] - boxes[:, 1] >= config.min_box_size)
    idx = np.flatnonzero(ok)
    if idx.size == 0:
        return empty
    kept = idx[nms(boxes[idx], best_score[idx], config.nms_iou)][: config.max_boxes]
    return Regions(
        boxes=boxes[kept].astype(np.float32),
        phrases=tuple(queries[int(q)] for q in best[kept]),
        scores=best_score[kept].astype(np.float32),
        query_ranks=best[kept].astype(np.int64),
    )
