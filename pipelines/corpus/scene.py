"""Sampling a scene layout: image size, background, and 1-6 objects (shape, colour, size, pose).

Two presets draw scenes (`PRESETS`):
  refcoco  the default, shaped like RefCOCO where REC depends on it: one shape (the "category")
           appears 2-4 times in most images, with an occasional other shape; objects are large
           (a referent covers about a fifth of the image, almost never under 4%)
  hard     the earlier generator: 1-6 objects of any shape, sizes from 1% of the image up; many
           referents fit inside one or two patches of a small ViT

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

# refcoco preset: how many objects share the scene's shape (RefCOCO's REC images mostly hold 2-4
# objects of the referent's category), and how many objects of other shapes stand beside them.
_SAME_SHAPE_COUNTS, _SAME_SHAPE_P = (1, 2, 3, 4), (0.1, 0.35, 0.35, 0.2)
_OTHER_COUNTS, _OTHER_P = (0, 1, 2), (0.55, 0.35, 0.1)
# A new object may overlap each earlier one's box by at most this IoU; placement retries, then
# shrinks the object, so crowded scenes get smaller objects as photos do.
_MAX_PLACEMENT_IOU = 0.3
_PLACEMENT_TRIES = 24


@dataclasses.dataclass(frozen=True)
class Preset:
    """A scene distribution: `name` in PRESETS; objects per image at most `max_objects`."""

    name: str = "refcoco"
    max_objects: int = MAX_OBJECTS

    def __post_init__(self):
        if self.name not in PRESETS:
            raise ValueError(f"unknown preset {self.name!r}; choose one of {', '.join(PRESETS)}")
        if not 1 <= self.max_objects <= MAX_OBJECTS:
            raise ValueError(f"max_objects must be in [1, {MAX_OBJECTS}], got {self.max_objects}")


PRESETS = ("refcoco", "hard")


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


def _image_size(rng: np.random.Generator, max_log_aspect: float = 0.7) -> tuple[int, int]:
    if rng.random() < 0.25:
        side = int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
        return side, side
    width = int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
    # Aspect ratios of web photos: mostly between 1:2 and 2:1 (COCO's: mostly 4:3 and 3:4).
    height = int(np.clip(round(width * np.exp(rng.uniform(-max_log_aspect, max_log_aspect))),
                         MIN_SIDE, MAX_SIDE))
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


def sample_scene(rng: np.random.Generator, preset: Preset = Preset()) -> SceneSpec:
    """Draws a layout from `rng` (use `sample_rng(seed, stream, index, LAYOUT)`) from `preset`."""
    if preset.name == "refcoco":
        return _refcoco_scene(rng, preset.max_objects)
    return _hard_scene(rng, preset.max_objects)


def _hard_scene(rng: np.random.Generator, max_objects: int) -> SceneSpec:
    """1 to `max_objects` objects of any shape and size (the generator of earlier versions: the
    same draws, so `Preset("hard")` gives the same bytes as before presets existed)."""
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


def _box(cx: float, cy: float, r: float) -> tuple[float, float, float, float]:
    return cx - r, cy - r, cx + r, cy + r


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _refcoco_attributes(rng: np.random.Generator, shape: str, same: list[ObjectSpec]
                        ) -> tuple[str, str]:
    """(colour, size class) of a new object of `shape` given the earlier ones of that shape.

    Mostly a colour no earlier one has ("the red star" is then unique); one time in five a
    repeated colour with a size class its twins do not have, so size or position must tell them
    apart, as in RefCOCO's "left man" / "bigger dog".
    """
    used = {o.color for o in same}
    if same and rng.random() < 0.2:
        color = str(rng.choice(sorted(used)))
        taken = {o.size for o in same if o.color == color}
        sizes = [s for s in vocab.REFCOCO_SIZES if s not in taken] or list(vocab.REFCOCO_SIZES)
        return color, str(rng.choice(sizes))
    free = [c for c in vocab.COLORS if c not in used] or list(vocab.COLORS)
    return str(rng.choice(free)), str(rng.choice(list(vocab.REFCOCO_SIZES)))


def _place(rng: np.random.Generator, radius: float, width: int, height: int,
           boxes: list[tuple[float, ...]]) -> tuple[float, float, float]:
    """(cx, cy, radius): a position whose box overlaps no earlier box beyond the IoU limit,
    shrinking the object a little after every few failed tries."""
    for attempt in range(_PLACEMENT_TRIES):
        if attempt and attempt % 6 == 0:
            radius *= 0.9
        cx = float(rng.uniform(radius, width - radius))
        cy = float(rng.uniform(radius, height - radius))
        if all(_iou(_box(cx, cy, radius), b) <= _MAX_PLACEMENT_IOU for b in boxes):
            break
    return cx, cy, radius


def _refcoco_scene(rng: np.random.Generator, max_objects: int) -> SceneSpec:
    """One shape repeated 2-4 times (mostly), plus 0-2 objects of other shapes, all large."""
    width, height = _image_size(rng, max_log_aspect=0.35)
    background = str(rng.choice(vocab.BACKGROUND_KINDS))
    background_color = str(rng.choice(list(vocab.BACKGROUND_COLORS)))
    category = str(rng.choice(vocab.SHAPES))
    n_same = int(rng.choice(_SAME_SHAPE_COUNTS, p=_SAME_SHAPE_P))
    n_other = int(rng.choice(_OTHER_COUNTS, p=_OTHER_P))
    n_same = min(n_same, max_objects)
    n_other = min(n_other, max_objects - n_same)
    others = [s for s in vocab.SHAPES if s != category]
    shapes_ = [category] * n_same + [str(rng.choice(others)) for _ in range(n_other)]
    placed: list[ObjectSpec] = []
    boxes: list[tuple[float, ...]] = []
    side = min(width, height)
    for shape in shapes_:
        color, size = _refcoco_attributes(rng, shape, [o for o in placed if o.shape == shape])
        lo, hi = vocab.REFCOCO_SIZES[size]
        cx, cy, radius = _place(rng, float(rng.uniform(lo, hi) * side), width, height, boxes)
        angle = 0.0 if shape == "circle" else float(rng.uniform(-0.3, 0.3))
        if shape == "arrow":
            angle += float(rng.integers(4)) * np.pi / 2
        placed.append(ObjectSpec(shape, color, size, cx, cy, radius, angle))
        boxes.append(_box(cx, cy, radius))
    # Drawing order is random, so the scene's shape is not always in front.
    order = rng.permutation(len(placed))
    return SceneSpec(width, height, background, background_color,
                     tuple(placed[int(i)] for i in order))
