"""Eval-time image preprocessing, the same math as the trainer's loader without augmentation:
decode -> RGB -> squash-resize to size x size (normalized boxes are unchanged by it) -> float32 in
[-1, 1]. The resize follows the loader's default (`data.fast_resize`): OpenCV bilinear down to a
2x shrink, area-averaging beyond; `fast=False` is Pillow's antialiased bilinear (the loader's
`fast_resize=False`). Kept here (not imported from training/) so the eval image does not depend on
the training stage's code; tests/test_eval_data.py checks the two agree.
"""

from __future__ import annotations

import io

import numpy as np
from etils import epath
from PIL import Image


def load_image(path: str, size: int, fast: bool = True) -> np.ndarray:
    """File (local or cloud) -> uint8[size, size, 3]."""
    img = Image.open(io.BytesIO(epath.Path(path).read_bytes()))
    return resize_square(np.asarray(img.convert("RGB")), size, fast)


def resize_square(pixels: np.ndarray, size: int, fast: bool = True) -> np.ndarray:
    """uint8[h, w, 3] RGB -> uint8[size, size, 3], squashed as the loader does."""
    h, w = pixels.shape[:2]
    if (h, w) == (size, size):
        return pixels
    if not fast:
        img = Image.fromarray(pixels, "RGB")
        return np.asarray(img.resize((size, size), Image.Resampling.BILINEAR))
    import cv2

    pixels = np.ascontiguousarray(pixels)
    interp = cv2.INTER_AREA if h > 2 * size or w > 2 * size else cv2.INTER_LINEAR
    return cv2.resize(pixels, (size, size), interpolation=interp)


def to_model_range(images: np.ndarray) -> np.ndarray:
    """uint8[..., 3] -> float32[..., 3] in [-1, 1]."""
    return images.astype(np.float32) * np.float32(2.0 / 255.0) + np.float32(-1.0)


class ImageCache:
    """Decoded, resized images kept as uint8 across checkpoints: a watch job scores many steps on
    the same eval images, and decoding dominates on CPU otherwise."""

    def __init__(self, size: int):
        self.size = size
        self._cache: dict[str, np.ndarray] = {}

    def get(self, path: str) -> np.ndarray:
        if path not in self._cache:
            self._cache[path] = load_image(path, self.size)
        return self._cache[path]

    def batch(self, paths: list[str]) -> np.ndarray:
        """float32[B, size, size, 3] in [-1, 1]."""
        return to_model_range(np.stack([self.get(p) for p in paths]))
