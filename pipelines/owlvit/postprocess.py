"""Model outputs -> boxes of the original image.

The model sees the image padded at the bottom/right to a square of side S = max(H, W), so its
normalized (cx, cy, w, h) boxes are fractions of S, not of H and W.
"""

from __future__ import annotations

import numpy as np


def cxcywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """float[..., 4] (cx, cy, w, h) -> (x0, y0, x1, y1)."""
    cx, cy, w, h = np.moveaxis(boxes, -1, 0)
    return np.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], -1)


def to_image_boxes(pred_boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """float[P, 4] (cx, cy, w, h) of the padded square -> float32[P, 4] normalized
    [ymin, xmin, ymax, xmax] of the original H x W image, clipped to [0, 1] (boxes may extend
    into the padding or past the border)."""
    side = float(max(height, width))
    x0, y0, x1, y1 = np.moveaxis(cxcywh_to_xyxy(np.asarray(pred_boxes, np.float64)), -1, 0)
    out = np.stack([y0 * side / height, x0 * side / width, y1 * side / height, x1 * side / width],
                   -1)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def post_process_object_detection(logits: np.ndarray, pred_boxes: np.ndarray, threshold: float,
                                  image_sizes: list[tuple[int, int]]) -> list[dict[str, np.ndarray]]:
    """transformers' `post_process_object_detection` for square-padded inputs, in numpy.

    logits float[B, P, Q], pred_boxes float[B, P, 4] (cx, cy, w, h of the padded square),
    image_sizes [(H, W)] of the original images. Per image: scores = sigmoid(max over queries),
    labels = argmax query, boxes (x0, y0, x1, y1) in pixels (not clipped), kept where score >
    threshold.
    """
    if len(image_sizes) != len(logits):
        raise ValueError(f"{len(image_sizes)} image sizes for {len(logits)} images")
    results = []
    for lg, bx, (h, w) in zip(logits, pred_boxes, image_sizes, strict=True):
        if lg.shape[-1] == 0:  # zero queries: nothing can be detected
            results.append(dict(scores=np.zeros(0, np.float32), labels=np.zeros(0, np.int64),
                                boxes=np.zeros((0, 4), np.float32)))
            continue
        scores = 1.0 / (1.0 + np.exp(-lg.max(-1).astype(np.float64)))
        labels = lg.argmax(-1)
        boxes = cxcywh_to_xyxy(np.asarray(bx, np.float64)) * max(h, w)
        keep = scores > threshold
        results.append(dict(scores=scores[keep].astype(np.float32), labels=labels[keep],
                            boxes=boxes[keep].astype(np.float32)))
    return results
