"""Clean reference captions (COCO-captions style) for the evaluation images.

Unlike alt-texts these are complete and correct: every object is named with canonical words, in a
natural sentence, so CIDEr against them measures what the model sees.
"""

from __future__ import annotations

import collections

import numpy as np

from pipelines.corpus import vocab
from pipelines.corpus.render import RenderedScene, VisibleObject

BACKGROUND_PHRASES = {
    "plain": "a plain {color} background",
    "gradient": "a {color} gradient background",
    "noise": "a noisy {color} background",
    "texture": "a patterned {color} background",
}


def _noun_phrases(objects: list[VisibleObject]) -> list[str]:
    """'a red star', 'two blue circles', ...: identical colour+shape objects are counted."""
    counts = collections.Counter((o.spec.color, o.spec.shape) for o in objects)
    out = []
    for (color, shape), n in counts.items():
        if n == 1:
            out.append(f"{vocab.article(color)} {color} {shape}")
        else:
            out.append(f"{vocab.NUMBER_WORDS[n]} {color} {vocab.plural(shape)}")
    return out


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _relation(a: VisibleObject, b: VisibleObject) -> str:
    """'a red star to the left of a blue circle', judged on the larger offset axis."""
    (ax, ay), (bx, by) = a.center, b.center
    if abs(ax - bx) >= abs(ay - by):
        rel = "to the left of" if ax < bx else "to the right of"
    else:
        rel = "above" if ay < by else "below"
    na = f"{a.spec.color} {a.spec.shape}"
    nb = f"{b.spec.color} {b.spec.shape}"
    return f"{vocab.article(na)} {na} {rel} {vocab.article(nb)} {nb}"


def _region(x: float, y: float, scene: RenderedScene) -> str:
    """'top left', 'center', 'bottom', ... of a point, in thirds of the image."""
    col = ("left", "", "right")[min(int(3 * x / scene.spec.width), 2)]
    row = ("top", "", "bottom")[min(int(3 * y / scene.spec.height), 2)]
    return " ".join(w for w in (row, col) if w) or "center"


def captions(scene: RenderedScene, rng: np.random.Generator) -> list[str]:
    """2-3 clean captions of the whole image."""
    left_to_right = sorted(scene.objects, key=lambda o: o.center[0])
    nouns = _noun_phrases(left_to_right)
    bg = BACKGROUND_PHRASES[scene.spec.background].format(color=scene.spec.background_color)
    n = len(scene.objects)
    out = [f"{_join(nouns)} on {bg}"]
    if n == 1:
        o = scene.objects[0].spec
        out.append(f"a single {o.size} {o.color} {o.shape}")
    else:
        out.append(f"{vocab.NUMBER_WORDS[n]} shapes: {_join(nouns)}")
    if n >= 2:
        i, j = rng.choice(n, size=2, replace=False)
        out.append(_relation(scene.objects[int(i)], scene.objects[int(j)]))
    elif rng.random() < 0.5:
        o, (x, y) = scene.objects[0].spec, scene.objects[0].center
        out.append(f"{vocab.article(o.color)} {o.color} {o.shape} in the {_region(x, y, scene)}")
    return [c[0].upper() + c[1:] + "." for c in out]
