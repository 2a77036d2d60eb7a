"""Ground truth of a rendered scene: region dicts and the per-image scene label.

The region dict is the contract with the `reference` labeler and the tests:
  {"bbox": [ymin, xmin, ymax, xmax] normalized visible extent, "phrase": "red star",
   "names": every phrase naming the object (`vocab.names_for`, then the referring expressions),
   "expressions": the referring expressions the image's alt-text uses for it, lowercase (mostly []),
   "shape", "color", "size", "occluded_fraction"}.
Listing the expressions in `names` lets the labeler match "the red star on the left" as a whole:
an exact match scores by its word count, so it wins over the "red star" inside it.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Any

from pipelines.corpus import vocab
from pipelines.corpus.render import RenderedScene, VisibleObject


def normalized_box(obj: VisibleObject, width: int, height: int) -> list[float]:
    """[ymin, xmin, ymax, xmax] in [0, 1], rounded to 6 decimals (sub-pixel at 640 px)."""
    x0, y0, x1, y1 = obj.box
    return [
        round(y0 / height, 6),
        round(x0 / width, 6),
        round(y1 / height, 6),
        round(x1 / width, 6),
    ]


def region(
    obj: VisibleObject, width: int, height: int, expressions: Sequence[str] = ()
) -> dict[str, Any]:
    """The region dict of `obj`; `expressions`: what the alt-text calls it beyond its plain names."""
    o = obj.spec
    names = vocab.names_for(o.color, o.shape, o.size)
    expressions = [e.lower() for e in expressions]
    return {
        "bbox": normalized_box(obj, width, height),
        "phrase": f"{o.color} {o.shape}",
        "names": names + [e for e in expressions if e not in names],
        "expressions": expressions,
        "shape": o.shape,
        "color": o.color,
        "size": o.size,
        "occluded_fraction": obj.occluded_fraction,
    }


def dominant_shape(scene: RenderedScene) -> str:
    """The shape covering the most visible pixels (ties: the earlier shape in vocab.SHAPES)."""
    area: collections.Counter[str] = collections.Counter()
    for obj in scene.objects:
        area[obj.spec.shape] += obj.visible_pixels
    return max(vocab.SHAPES, key=lambda s: (area[s], -vocab.SHAPES.index(s)))


def scene_label(scene: RenderedScene) -> dict[str, Any]:
    """Per-image labels for a linear probe: background kind/colour, object count, dominant shape."""
    return {
        "background": scene.spec.background,
        "background_color": scene.spec.background_color,
        "num_objects": len(scene.objects),
        "dominant_shape": dominant_shape(scene),
    }
