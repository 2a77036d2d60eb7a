"""Preprocessing ops that move the image and its boxes together.

Every op takes and returns a features dict (a new dict; the input is not modified):
  "image"    uint8[H, W, 3] (float32[H, W, 3] after ValueRange)
  "boxes"    float32[N, 4] normalized [ymin, xmin, ymax, xmax] of the current image
  "phrases"  tuple of N str, one per box
  "caption"  str
Random ops draw from the `rng` they are given (Grain's per-example generator), never from a global.
Boxes are normalized, so a resize (which squashes to a square, like big_vision's `resize`) leaves
them unchanged; a crop or flip rewrites them.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
import re
from typing import Any

import numpy as np
from PIL import Image

Features = dict[str, Any]


def decode_image(data: bytes, min_side: int | None = None) -> np.ndarray:
    """JPEG/PNG bytes -> uint8[H, W, 3] RGB.

    With `min_side`, a JPEG is decoded at the smallest DCT scale (1/1, 1/2, 1/4, 1/8) whose shorter
    side is still >= min_side: a full-size photo bound for 224 px decodes several times faster, and
    the later resize sees the same or more pixels than it keeps.
    """
    image = decode_jpeg_fast(data, min_side)
    return image if image is not None else np.asarray(_open(data, min_side))


def _open(data: bytes, min_side: int | None) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    if min_side is not None and img.format == "JPEG":
        w, h = img.size
        s = min_side / min(w, h)
        if s < 1:
            img.draft("RGB", (math.ceil(w * s), math.ceil(h * s)))
    return img if img.mode == "RGB" else img.convert("RGB")


def decode_resized(data: bytes, size: int, fast: bool = False) -> np.ndarray:
    """decode_image(data, size) + Resize(size, fast) (no crop): uint8[size, size, 3]."""
    return resize(decode_image(data, size), size, fast)


def resize(image: np.ndarray, size: int, fast: bool = False) -> np.ndarray:
    """uint8[H, W, 3] -> uint8[size, size, 3] (squashed; the same array when already that size).

    fast=False: Pillow antialiased bilinear; True: resize_fast (evaluation/images.py follows both).
    """
    if image.shape[:2] == (size, size):
        return image
    if fast:
        return resize_fast(image, size)
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))


# JPEG start-of-frame markers (baseline, extended, progressive, lossless; Huffman and arithmetic).
_SOF = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))


def jpeg_header(data: bytes) -> tuple[int, int, int, bool] | None:
    """(width, height, components, has_adobe_marker) from a JPEG's frame header; None otherwise.

    Walks the marker segments up to the first SOF (a few segments: SOI, APPn, DQT), so it costs
    microseconds. None for anything that is not a well-formed 8-bit JPEG header.
    """
    n = len(data)
    if n < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return None
    pos, adobe = 2, False
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # standalone markers, no length
            pos += 2
            continue
        if marker == 0xDA or marker == 0xD9:  # scan or end before any frame header
            return None
        length = (data[pos + 2] << 8) | data[pos + 3]
        if marker in _SOF:
            if pos + 10 > n or data[pos + 4] != 8:
                return None
            h = (data[pos + 5] << 8) | data[pos + 6]
            w = (data[pos + 7] << 8) | data[pos + 8]
            return w, h, data[pos + 9], adobe
        if marker == 0xEE:
            adobe = True
        pos += 2 + length
    return None


def _draft_scale(w: int, h: int, min_side: int | None) -> int:
    """The DCT scale Pillow's `draft` picks in `_open` (8, 4, 2 or 1), computed the same way."""
    if min_side is None:
        return 1
    s = min_side / min(w, h)
    if s >= 1:
        return 1
    scale = min(w // math.ceil(w * s), h // math.ceil(h * s))
    return next(d for d in (8, 4, 2, 1) if scale >= d)


def decode_jpeg_fast(data: bytes, min_side: int | None = None) -> np.ndarray | None:
    """decode_image's pixels through OpenCV's imdecode, or None where that is not exact.

    Pillow and OpenCV both decode with libjpeg-turbo at its defaults (islow IDCT, fancy
    upsampling) and the same DCT scaling, so the pixels are identical (tests/test_preprocess.py
    checks 4:2:0/4:2:2/4:4:4, greyscale, progressive, odd sizes and every draft scale); OpenCV
    skips Pillow's header parsing in Python and its tobytes() copy: ~40% less CPU per 224 px JPEG.
    None (the caller uses Pillow) for: not a JPEG, CMYK/YCCK or an Adobe marker (colour
    transforms the two libraries treat differently), no OpenCV, a file that does not end with the
    JPEG end marker (Pillow raises on a truncated file; OpenCV would fill it with grey), or any
    OpenCV failure.
    """
    info = jpeg_header(data)
    if info is None or info[2] not in (1, 3) or info[3] or not data.endswith(b"\xff\xd9"):
        return None
    cv2 = _cv2_or_none()
    if cv2 is None:
        return None
    w, h = info[0], info[1]
    if w == 0 or h == 0:
        return None
    # DCT scale 1/2, 1/4, 1/8 is flag 16, 32, 64 (IMREAD_REDUCED_GRAYSCALE_n; with IMREAD_COLOR_RGB
    # it decodes in colour). EXIF orientation stays unapplied, as in Pillow's decode.
    scale = _draft_scale(w, h, min_side)
    flags = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION | (8 * scale if scale > 1 else 0)
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error:
        return None
    if image is None or image.ndim != 3 or image.shape[2] != 3:
        return None
    return image


def resize_fast(image: np.ndarray, size: int) -> np.ndarray:
    """uint8[H, W, 3] -> uint8[size, size, 3] with OpenCV, ~8x cheaper than Pillow's resize here.

    Pillow's BILINEAR antialiases (its filter widens with the scale factor) and costs more than
    decoding a 256 px JPEG. Down to a factor of 2 per axis, plain bilinear (cv2.INTER_LINEAR, what
    big_vision's default `resize` does) still reads every source pixel, so it barely aliases;
    beyond that INTER_AREA averages (antialiased, slower). Upscales are plain bilinear.
    """
    cv2 = _cv2()
    h, w = image.shape[:2]
    area = h > 2 * size or w > 2 * size
    interp = cv2.INTER_AREA if area else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(image), (size, size), interpolation=interp)


@functools.cache
def _cv2_or_none():
    try:
        return _cv2()
    except ImportError:  # Pillow-only install (no `train` extra): the slow path still works.
        return None


@functools.cache
def _cv2():
    import cv2  # The `train` extra; imported here so the Pillow path works without it.

    # Parallelism comes from Grain's threads and workers; OpenCV's own pool on top of them only
    # oversubscribes the cores (a 224 px resize is far too small to split).
    cv2.setNumThreads(1)
    return cv2


@dataclasses.dataclass(frozen=True)
class Resize:
    """Squashes the image to size x size (aspect not kept, boxes unchanged since normalized).

    fast: see `resize`.
    """

    size: int
    fast: bool = False

    def __call__(self, features: Features, rng: np.random.Generator | None = None) -> Features:
        return {**features, "image": resize(features["image"], self.size, self.fast)}


def crop_boxes(
    boxes: np.ndarray, window: np.ndarray, min_visible: float
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes float[N, 4] -> (boxes float[M, 4] in the window's frame, kept int[M] indices).

    window: float[4] normalized [ymin, xmin, ymax, xmax] of the crop in the current image.
    A box is clipped to the window and kept if at least `min_visible` of its area remains (and
    the remainder is not empty); otherwise dropped, since "dog : <box>" on a sliver misleads.
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    lo, hi = window[:2], window[2:]
    clipped = np.concatenate([np.maximum(boxes[:, :2], lo), np.minimum(boxes[:, 2:], hi)], -1)
    extent = np.maximum(clipped[:, 2:] - clipped[:, :2], 0)
    area = extent.prod(-1)
    orig = np.maximum(boxes[:, 2:] - boxes[:, :2], 0).prod(-1)
    visible = np.where(orig > 0, area / np.maximum(orig, 1e-12), 0.0)
    keep = np.nonzero((area > 0) & (visible >= min_visible))[0]
    size = np.concatenate([hi - lo, hi - lo])
    moved = (clipped[keep] - np.concatenate([lo, lo])) / size
    return np.clip(moved, 0.0, 1.0).astype(np.float32), keep


def crop(features: Features, top: int, left: int, height: int, width: int, min_visible: float):
    """Crops pixel rows [top, top+height) and cols [left, left+width); boxes follow."""
    image = features["image"]
    h, w = image.shape[:2]
    window = np.asarray([top / h, left / w, (top + height) / h, (left + width) / w], np.float32)
    boxes, keep = crop_boxes(features["boxes"], window, min_visible)
    return {
        **features,
        "image": image[top : top + height, left : left + width],
        "boxes": boxes,
        "phrases": tuple(features["phrases"][i] for i in keep),
    }


@dataclasses.dataclass(frozen=True)
class RandomResizedCrop:
    """Inception-style crop: area fraction in `area`, aspect ratio (w/h) in `ratio`, log-uniform.

    Follow with Resize. Falls back to the whole image when no sample fits in 10 tries.
    """

    area: tuple[float, float] = (0.3, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    min_visible: float = 0.5

    def __call__(self, features: Features, rng: np.random.Generator) -> Features:
        h, w = features["image"].shape[:2]
        for _ in range(10):
            target = rng.uniform(*self.area) * h * w
            aspect = math.exp(rng.uniform(math.log(self.ratio[0]), math.log(self.ratio[1])))
            cw = int(round(math.sqrt(target * aspect)))
            ch = int(round(math.sqrt(target / aspect)))
            if 0 < cw <= w and 0 < ch <= h:
                top = int(rng.integers(0, h - ch + 1))
                left = int(rng.integers(0, w - cw + 1))
                return crop(features, top, left, ch, cw, self.min_visible)
        return dict(features)


_LR = {"left": "right", "right": "left", "leftmost": "rightmost", "rightmost": "leftmost"}
_LR_RE = re.compile(r"\b(left|right|leftmost|rightmost)\b", re.IGNORECASE)


def swap_left_right(text: str) -> str:
    """'the left dog' -> 'the right dog' (whole words, case kept: Left -> Right, LEFT -> RIGHT)."""

    def sub(m: re.Match) -> str:
        word = m.group(0)
        out = _LR[word.lower()]
        if word.isupper():
            return out.upper()
        return out.capitalize() if word[0].isupper() else out

    return _LR_RE.sub(sub, text)


def hflip(features: Features, swap_words: bool = True) -> Features:
    """Mirrors the image; xmin' = 1 - xmax. Swaps left/right in phrases and caption if asked."""
    boxes = np.asarray(features["boxes"], np.float32).reshape(-1, 4)
    flipped = np.stack([boxes[:, 0], 1 - boxes[:, 3], boxes[:, 2], 1 - boxes[:, 1]], -1)
    out = {**features, "image": features["image"][:, ::-1], "boxes": flipped}
    if swap_words:
        out["phrases"] = tuple(swap_left_right(p) for p in features["phrases"])
        out["caption"] = swap_left_right(features["caption"])
    return out


@dataclasses.dataclass(frozen=True)
class RandomFlip:
    """Horizontal flip with probability `prob`; left/right words follow so "left dog" stays true."""

    prob: float = 0.5
    swap_words: bool = True

    def __call__(self, features: Features, rng: np.random.Generator) -> Features:
        if rng.uniform() < self.prob:
            return hflip(features, self.swap_words)
        return dict(features)


@dataclasses.dataclass(frozen=True)
class ValueRange:
    """uint8 [0, 255] -> float32 [lo, hi]."""

    lo: float = -1.0
    hi: float = 1.0

    def __call__(self, features: Features, rng: np.random.Generator | None = None) -> Features:
        return {**features, "image": to_value_range(features["image"], self.lo, self.hi)}


def to_value_range(image: np.ndarray, lo: float = -1.0, hi: float = 1.0) -> np.ndarray:
    """uint8[..., 3] -> float32[..., 3] in [lo, hi]."""
    out = image.astype(np.float32)
    out *= np.float32((hi - lo) / 255.0)  # in place: this runs on every pixel of every example
    out += np.float32(lo)
    return out


def apply(ops, features: Features, rng: np.random.Generator) -> Features:
    """Runs ops in order with one shared per-example rng."""
    for op in ops:
        features = op(features, rng)
    return features
