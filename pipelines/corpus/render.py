"""Drawing a scene: background, objects, and each object's visible extent after occlusion.

Backgrounds are built with whole-array numpy ops and objects with one `ImageDraw.polygon` each, so
an image costs a few milliseconds. Objects hidden beyond `MAX_OCCLUDED` are removed from the scene
(not just from the labels) so no unlabelled object is left in the picture.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
from PIL import Image, ImageDraw

from pipelines.corpus import shapes, vocab
from pipelines.corpus.scene import (
    LAYOUT,
    PIXELS,
    ObjectSpec,
    Preset,
    SceneSpec,
    sample_rng,
    sample_scene,
)

MAX_OCCLUDED = 0.6
MIN_VISIBLE_PIXELS = 24
JPEG_QUALITY = 90


@dataclasses.dataclass(frozen=True)
class VisibleObject:
    """A drawn object. box: (x0, y0, x1, y1) integer pixels of the visible part, x1/y1 exclusive."""

    spec: ObjectSpec
    box: tuple[int, int, int, int]
    occluded_fraction: float
    visible_pixels: int

    @property
    def center(self) -> tuple[float, float]:
        """(x, y) pixel centre of the visible box: what positions in texts are judged by."""
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2, (y0 + y1) / 2


@dataclasses.dataclass(frozen=True)
class RenderedScene:
    """The RGB image and its objects in drawing order, occluded-away ones removed."""

    spec: SceneSpec
    image: Image.Image
    objects: tuple[VisibleObject, ...]

    @property
    def pixels(self) -> np.ndarray:
        """uint8[H, W, 3]."""
        return np.asarray(self.image)

    def jpeg(self) -> bytes:
        buf = io.BytesIO()
        self.image.save(buf, format="JPEG", quality=JPEG_QUALITY)
        return buf.getvalue()


def _background(spec: SceneSpec, rng: np.random.Generator) -> Image.Image:
    """RGB image. Built in Pillow and from small grids and lookup tables: no [H, W, 3] arithmetic."""
    h, w = spec.height, spec.width
    base = np.asarray(vocab.BACKGROUND_COLORS[spec.background_color], np.int16)
    if spec.background == "plain":
        return Image.new("RGB", (w, h), tuple(base.tolist()))
    if spec.background == "gradient":
        # A linear ramp is exactly representable on a 2x2 grid; bilinear resizing fills the rest.
        theta = rng.uniform(0, 2 * np.pi)
        # The second tone is another muted background colour, never a saturated object colour.
        other = np.asarray(vocab.BACKGROUND_COLORS[str(rng.choice(list(vocab.BACKGROUND_COLORS)))])
        corners = np.array([[0.0, np.cos(theta)], [np.sin(theta), np.cos(theta) + np.sin(theta)]])
        t = (corners - corners.min()) / max(float(np.ptp(corners)), 1e-6)
        grid = (base + t[..., None] * (other - base)).round().astype(np.uint8)
        return Image.fromarray(grid).resize((w, h), Image.BILINEAR)
    if spec.background == "noise":
        amp = int(rng.integers(12, 48))
        # Luminance noise (shared by the channels), like sensor grain: uniform random bytes mapped
        # through one lookup table per channel, which is far cheaper than arithmetic on [H, W, 3].
        grain = Image.frombytes("L", (w, h), rng.bytes(w * h))
        offsets = np.arange(256) * (2 * amp + 1) // 256 - amp
        channels = [grain.point(np.clip(b + offsets, 0, 255).tolist()) for b in base.tolist()]
        return Image.merge("RGB", channels)
    # texture: stripes, checkerboard or dots in a second tone of the same colour.
    period = int(rng.integers(8, 29))
    xx, yy = np.arange(w)[None, :], np.arange(h)[:, None]
    kind = int(rng.integers(3))
    if kind == 0:
        on = ((xx + yy * int(rng.integers(-1, 2))) // max(period // 2, 1)) % 2 == 0
    elif kind == 1:
        on = ((xx // period) + (yy // period)) % 2 == 0
    else:
        dx, dy = xx % period - period / 2, yy % period - period / 2
        on = dx * dx + dy * dy < (period * 0.3) ** 2
    tone = np.clip(base + (-28 if base.mean() > 128 else 28), 0, 255).astype(np.uint8)
    mask = Image.fromarray(on.astype(np.uint8) * 255)
    solid = [Image.new("RGB", (w, h), tuple(c.tolist())) for c in (tone, base.astype(np.uint8))]
    return Image.composite(solid[0], solid[1], mask)


def _outline_width(obj: ObjectSpec) -> int:
    return max(1, round(obj.radius / 22))


@dataclasses.dataclass(frozen=True)
class _Mask:
    """bool[h, w] pixels of one object inside its bounding crop at (x0, y0)."""

    x0: int
    y0: int
    bits: np.ndarray

    def slice(self) -> tuple[slice, slice]:
        h, w = self.bits.shape
        return slice(self.y0, self.y0 + h), slice(self.x0, self.x0 + w)


def _mask(poly: list[tuple[float, float]], outline: int, width: int, height: int) -> _Mask:
    """The polygon drawn exactly as the object is (fill + outline), in a crop around it."""
    pts = np.asarray(poly)
    pad = outline + 2
    x0, y0 = (max(int(np.floor(v)) - pad, 0) for v in pts.min(0))
    x1 = min(int(np.ceil(pts[:, 0].max())) + pad, width)
    y1 = min(int(np.ceil(pts[:, 1].max())) + pad, height)
    img = Image.new("L", (x1 - x0, y1 - y0), 0)
    # An integer shift keeps the rasterization as in the full image (up to float rounding at
    # exact half pixels, a pixel at most).
    shifted = [(x - x0, y - y0) for x, y in poly]
    ImageDraw.Draw(img).polygon(shifted, fill=1, outline=1, width=outline)
    return _Mask(x0, y0, np.asarray(img, dtype=bool))


def _visibility(masks: list[_Mask], width: int, height: int) -> list[_Mask]:
    """Visible part of each mask: what no later-drawn (front) mask covers."""
    out: list[_Mask] = [None] * len(masks)  # type: ignore[list-item]
    cover = np.zeros((height, width), dtype=bool)
    for i in range(len(masks) - 1, -1, -1):
        m = masks[i]
        region = cover[m.slice()]
        out[i] = _Mask(m.x0, m.y0, m.bits & ~region)
        region |= m.bits
    return out


def render(spec: SceneSpec, rng: np.random.Generator) -> RenderedScene:
    """Draws `spec` (rng: `sample_rng(..., PIXELS)`); drops objects hidden beyond MAX_OCCLUDED.

    Removing an object can only reduce how much the others are covered, so one pass of dropping
    followed by one recomputation leaves every kept object within the limit.
    """
    w, h = spec.width, spec.height
    polys = [shapes.place(o.shape, o.cx, o.cy, o.radius, o.angle) for o in spec.objects]
    masks = [_mask(p, _outline_width(o), w, h) for p, o in zip(polys, spec.objects, strict=True)]
    visible = _visibility(masks, w, h)
    keep = [
        i
        for i, (m, v) in enumerate(zip(masks, visible, strict=True))
        if (n := np.count_nonzero(v.bits)) >= MIN_VISIBLE_PIXELS
        and 1 - n / max(np.count_nonzero(m.bits), 1) <= MAX_OCCLUDED
    ]
    if not keep:  # the front object is never covered; this only guards degenerate tiny shapes
        keep = [len(masks) - 1]
    if len(keep) < len(masks):
        masks, polys = [masks[i] for i in keep], [polys[i] for i in keep]
        spec = dataclasses.replace(spec, objects=tuple(spec.objects[i] for i in keep))
        visible = _visibility(masks, w, h)

    image = _background(spec, rng)
    draw = ImageDraw.Draw(image)
    objects = []
    for obj, poly, mask, vis in zip(spec.objects, polys, masks, visible, strict=True):
        # A little colour jitter per object, so a colour word names a range, not one RGB value.
        rgb = np.clip(np.asarray(vocab.COLORS[obj.color]) + rng.integers(-14, 15, size=3), 0, 255)
        # A darker outline keeps touching objects of the same colour apart, as real edges do.
        dark = tuple(int(c) for c in rgb * 0.55)
        draw.polygon(poly, fill=tuple(int(c) for c in rgb), outline=dark, width=_outline_width(obj))
        cols = np.flatnonzero(vis.bits.any(axis=0))
        rows = np.flatnonzero(vis.bits.any(axis=1))
        box = (
            vis.x0 + int(cols[0]),
            vis.y0 + int(rows[0]),
            vis.x0 + int(cols[-1]) + 1,
            vis.y0 + int(rows[-1]) + 1,
        )
        n_visible = np.count_nonzero(vis.bits)
        occluded = float(1 - n_visible / np.count_nonzero(mask.bits))
        objects.append(VisibleObject(obj, box, round(occluded, 4), int(n_visible)))
    return RenderedScene(spec, image, tuple(objects))


def render_sample(seed: int, stream: str, index: int,
                  preset: Preset = Preset()) -> RenderedScene:
    """The image of sample `index` of `stream`; depends on nothing but these arguments."""
    spec = sample_scene(sample_rng(seed, stream, index, LAYOUT), preset)
    return render(spec, sample_rng(seed, stream, index, PIXELS))
