"""Image preprocessing as the OWL-ViT releases do it: pad to square (bottom/right), resize, CLIP norm.

Two resize methods, each matching the transformers image processor of its version:
  - "linear_aa" (OWLv2, the original skimage-style resize): Gaussian anti-aliasing with
    sigma = (factor - 1) / 2 then linear interpolation, both with mirror boundaries. It is separable
    and linear, so each axis is one precomputed matrix and the resize is two matmuls on the host.
  - "bicubic" (OWL-ViT v1 via transformers): PIL bicubic on the uint8 square.
The pad value is 0 (black), as in transformers' processors.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
METHODS = ("linear_aa", "bicubic")


def as_rgb(image: np.ndarray) -> np.ndarray:
    """uint8[H, W], [H, W, 1|3|4] -> uint8[H, W, 3]. Raises ValueError on an empty image."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected an image of shape [H, W, 3], got {list(image.shape)}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image has zero size ({image.shape[0]}x{image.shape[1]})")
    if image.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {image.dtype}")
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return image[..., :3]


def pad_to_square(image: np.ndarray) -> np.ndarray:
    """uint8[H, W, 3] -> uint8[S, S, 3], S = max(H, W); the image sits at the top-left."""
    h, w, c = image.shape
    s = max(h, w)
    out = np.zeros((s, s, c), image.dtype)
    out[:h, :w] = image
    return out


def _mirror(idx: np.ndarray, n: int) -> np.ndarray:
    """scipy.ndimage 'mirror' boundary (d c b | a b c d | c b a) for integer indices."""
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    m = np.mod(idx, period)
    return np.where(m >= n, period - m, m)


@functools.lru_cache(maxsize=64)
def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """float64[n_out, n_in]: skimage/scipy `gaussian_filter` (anti-alias) then `zoom(order=1,
    grid_mode=True)` along one axis, both with mode='mirror' (what transformers' OWLv2 resize does).
    """
    factor = n_in / n_out
    sigma = max(0.0, (factor - 1) / 2)
    # Gaussian taps as scipy builds them: radius int(4 * sigma + 0.5), normalized weights.
    if sigma > 0:
        radius = int(4.0 * sigma + 0.5)
        taps = np.arange(-radius, radius + 1)
        g = np.exp(-0.5 * (taps / sigma) ** 2)
        g /= g.sum()
    else:
        taps, g = np.zeros(1, int), np.ones(1)
    # Linear interpolation at pixel-center-aligned coordinates (grid_mode=True).
    x = (np.arange(n_out) + 0.5) * factor - 0.5
    x0 = np.floor(x).astype(int)
    frac = x - x0
    rows, cols, vals = [], [], []
    for offset, wlin in ((0, 1.0 - frac), (1, frac)):
        centre = _mirror(x0 + offset, n_in)  # the blurred sample the interpolation reads
        src = _mirror(centre[:, None] + taps[None, :], n_in)
        rows.append(np.repeat(np.arange(n_out), taps.size))
        cols.append(src.reshape(-1))
        vals.append((wlin[:, None] * g[None, :]).reshape(-1))
    mat = np.zeros((n_out, n_in))
    np.add.at(mat, (np.concatenate(rows), np.concatenate(cols)), np.concatenate(vals))
    return mat


def _resize_linear_aa(image: np.ndarray, size: int) -> np.ndarray:
    """uint8[H, W, 3] (top-left of a zero-padded S x S square) -> float32[size, size, 3] in [0, 1]."""
    h, w, _ = image.shape
    m = resize_matrix(max(h, w), size).astype(np.float32)
    # Padding is zero, so only the columns of real pixels contribute: skip the padded area.
    img = image.astype(np.float32) * np.float32(1 / 255)
    tmp = (m[:, :h] @ img.reshape(h, -1)).reshape(size, w, 3)  # [size, w, 3]
    # One 2-D matmul (numpy's batched matmul over strided views is ~100x slower).
    rows = np.ascontiguousarray(tmp.transpose(0, 2, 1)).reshape(-1, w)  # [size * 3, w]
    out = (rows @ np.ascontiguousarray(m[:, :w].T)).reshape(size, 3, size)
    return np.ascontiguousarray(out.transpose(0, 2, 1))


def _resize_bicubic(image: np.ndarray, size: int) -> np.ndarray:
    square = pad_to_square(image)
    out = Image.fromarray(square).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(out, np.float32) * np.float32(1 / 255)


def preprocess(image: np.ndarray, size: int, method: str = "linear_aa") -> np.ndarray:
    """uint8[H, W, 3] -> float32[size, size, 3]: pad to square, resize, CLIP-normalize."""
    if method not in METHODS:
        raise ValueError(f"unknown resize method {method!r}; choose one of {METHODS}")
    image = as_rgb(image)
    resize = _resize_linear_aa if method == "linear_aa" else _resize_bicubic
    return (resize(image, size) - CLIP_MEAN) / CLIP_STD
