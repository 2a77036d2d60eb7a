"""Sampling a scene layout: image size, background, and 1-6 objects (shape, colour, size, pose).

Each sample owns its random streams, seeded from (seed, stream, index, purpose), so a sample's
content depends neither on how many samples are written nor on the other samples; `purpose` keeps
the layout, the pixels and the texts independent (changing an alt-text template moves no pixel).
REFEXP is the training alt-texts' referring form, kept apart from TEXT so that adding that form
left the plain alt-texts as they were.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from pipelines.corpus import vocab

# Stream ids: the training ("web") images and the held-out evaluation images never share a seed.
STREAMS = {"web": 0, "eval": 1}
# Purpose ids inside one sample.
LAYOUT, PIXELS, TEXT, REFEXP = 0, 1, 2, 3

MIN_SIDE, MAX_SIDE = 160, 640
MAX_OBJECTS = 6


def sample_rng(seed: int, stream: str, index: int, purpose: int) -> np.random.Generator:
    """The generator for one purpose of one sample: independent of every other sample."""
    return np.random.default_rng([seed, STREAMS[stream], index, purpose])


@dataclasses.dataclass(frozen=True)
class ObjectSpec:
    """One object to draw. Geometry in pixels; angle in radians."""

    shape: str
    color: str
    size: str
    cx: float
    cy: float
    radius: float
    angle: float


@dataclasses.dataclass(frozen=True)
class SceneSpec:
    """A layout; `objects` are in drawing order (back to front)."""

    width: int
    height: int
    background: str  # one of vocab.BACKGROUND_KINDS
    background_color: str  # one of vocab.BACKGROUND_COLORS
    objects: tuple[ObjectSpec, ...]


def _image_size(rng: np.random.Generator) -> tuple[int, int]:
    if rng.random() < 0.25:
        side = int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
        return side, side
    width = int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
    # Aspect ratios of web photos: mostly between 1:2 and 2:1.
    height = int(np.clip(round(width * np.exp(rng.uniform(-0.7, 0.7))), MIN_SIDE, MAX_SIDE))
    return width, height


def _attributes(rng: np.random.Generator, placed: list[ObjectSpec]) -> tuple[str, str, str]:
    size = str(rng.choice(list(vocab.SIZES)))
    # Repeating an earlier object's colour+shape now and then makes scenes where referring
    # expressions need a size or a position to be unique, as in RefCOCO.
    if placed and rng.random() < 0.25:
        twin = placed[int(rng.integers(len(placed)))]
        return twin.shape, twin.color, size
    return str(rng.choice(vocab.SHAPES)), str(rng.choice(list(vocab.COLORS))), size


def _position(
    rng: np.random.Generator, radius: float, width: int, height: int, placed: list[ObjectSpec]
) -> tuple[float, float]:
    lo_x, hi_x = radius, width - radius
    lo_y, hi_y = radius, height - radius
    if placed and rng.random() < 0.4:
        # Next to an earlier object, close enough to overlap it: occlusion is part of the data.
        other = placed[int(rng.integers(len(placed)))]
        theta = rng.uniform(0, 2 * np.pi)
        dist = (other.radius + radius) * rng.uniform(0.55, 1.1)
        cx, cy = other.cx + dist * np.cos(theta), other.cy + dist * np.sin(theta)
    else:
        cx, cy = rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y)
    # Whole objects only: an object cut by the border would need a second notion of "visible".
    return float(np.clip(cx, lo_x, hi_x)), float(np.clip(cy, lo_y, hi_y))


def sample_scene(rng: np.random.Generator, max_objects: int = MAX_OBJECTS) -> SceneSpec:
    """Draws a layout from `rng` (use `sample_rng(seed, stream, index, LAYOUT)`) with 1 to
    `max_objects` objects (the default draws exactly what earlier versions drew)."""
    if not 1 <= max_objects <= MAX_OBJECTS:
        raise ValueError(f"max_objects must be in [1, {MAX_OBJECTS}], got {max_objects}")
    width, height = _image_size(rng)
    background = str(rng.choice(vocab.BACKGROUND_KINDS))
    background_color = str(rng.choice(list(vocab.BACKGROUND_COLORS)))
    num = int(rng.integers(1, max_objects + 1))
    placed: list[ObjectSpec] = []
    for _ in range(num):
        shape, color, size = _attributes(rng, placed)
        lo, hi = vocab.SIZES[size]
        radius = float(rng.uniform(lo, hi) * min(width, height))
        cx, cy = _position(rng, radius, width, height, placed)
        angle = 0.0 if shape == "circle" else float(rng.uniform(-0.3, 0.3))
        if shape == "arrow":
            angle += float(rng.integers(4)) * np.pi / 2
        placed.append(ObjectSpec(shape, color, size, cx, cy, radius, angle))
    return SceneSpec(width, height, background, background_color, tuple(placed))
