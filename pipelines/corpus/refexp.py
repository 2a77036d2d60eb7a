"""RefCOCO-style referring expressions that each identify exactly one object of the image.

Descriptions are tried from simplest to most specific: colour+shape ("the red star"), + size
("the large blue circle"), + position among the same-looking objects ("the red star on the left",
"the leftmost square"), then a relation to a uniquely described anchor ("the blue circle above the
green heart"). Positions are judged on the centres of the visible boxes (what instances.json holds)
and only used with a clear margin, so a reader of the image agrees on which object is meant.
"""

from __future__ import annotations

import numpy as np

from pipelines.corpus.render import VisibleObject

# A position word is only used when the referent leads the runner-up by this fraction of the image.
MARGIN = 0.08
# "On the left" of the image, for the optional position added to an already-unique description.
SIDE = 0.35

_EXTREME = {
    "left": ("the {d} on the left", "the leftmost {d}", "left {d}"),
    "right": ("the {d} on the right", "the rightmost {d}", "right {d}"),
    "top": ("the {d} at the top", "the top {d}", "the upper {d}"),
    "bottom": ("the {d} at the bottom", "the bottom {d}", "the lower {d}"),
}
_RELATION = {
    "above": ("the {d} above the {a}",),
    "below": ("the {d} below the {a}",),
    "left": ("the {d} left of the {a}", "the {d} to the left of the {a}"),
    "right": ("the {d} right of the {a}", "the {d} to the right of the {a}"),
}
# direction -> (axis, sign): sign * coordinate is smallest for the extreme object.
_AXIS = {
    "left": (0, 1),
    "right": (0, -1),
    "top": (1, 1),
    "bottom": (1, -1),
    "above": (1, 1),
    "below": (1, -1),
}


def _matching(objs: list[VisibleObject], color=None, shape=None, size=None) -> list[int]:
    return [
        i
        for i, o in enumerate(objs)
        if (color is None or o.spec.color == color)
        and (shape is None or o.spec.shape == shape)
        and (size is None or o.spec.size == size)
    ]


def _is_extreme(t: int, group: list[int], objs, direction: str, dims: tuple[int, int]) -> bool:
    """Whether object t leads every other member of `group` in `direction` by MARGIN."""
    axis, sign = _AXIS[direction]
    margin = MARGIN * dims[axis]
    key_t = sign * objs[t].center[axis]
    return all(sign * objs[j].center[axis] - key_t >= margin for j in group if j != t)


def _on_side(obj: VisibleObject, direction: str, dims: tuple[int, int]) -> bool:
    axis, sign = _AXIS[direction]
    frac = obj.center[axis] / dims[axis]
    return frac < SIDE if sign > 0 else frac > 1 - SIDE


def _relation_ok(t, group, anchor, objs, direction, dims) -> bool:
    """t is clearly on `direction` of the anchor and every other group member clearly is not."""
    axis, sign = _AXIS[direction]
    margin = MARGIN * dims[axis]
    a = sign * objs[anchor].center[axis]
    if sign * objs[t].center[axis] > a - margin:
        return False
    return all(sign * objs[j].center[axis] >= a + margin for j in group if j != t)


def _forms(t: int, objs: list[VisibleObject], dims, rng) -> tuple[list[str], list[str]]:
    """(plain descriptions, position descriptions) that identify object t, simplest first."""
    o = objs[t].spec
    cs = f"{o.color} {o.shape}"
    same_cs = _matching(objs, o.color, o.shape)
    same_shape = _matching(objs, shape=o.shape)
    plain, positional = [], []
    if len(same_cs) == 1:
        plain.append(f"the {cs}")
        if len(same_shape) == 1:
            plain.append(f"the {o.shape}")
    elif len(_matching(objs, o.color, o.shape, o.size)) == 1:
        plain.append(f"the {o.size} {cs}")

    def pick(templates, **kw):
        return str(rng.choice(templates)).format(**kw)

    for direction in ("left", "right", "top", "bottom"):
        if len(same_cs) == 1:
            # Not needed for uniqueness: only said when the object really is on that side.
            if _on_side(objs[t], direction, dims):
                positional.append(pick(_EXTREME[direction], d=cs))
        elif _is_extreme(t, same_cs, objs, direction, dims):
            positional.append(pick(_EXTREME[direction], d=cs))
        if len(same_shape) > 1 and _is_extreme(t, same_shape, objs, direction, dims):
            positional.append(pick(_EXTREME[direction], d=o.shape))
    anchors = [
        a
        for a in range(len(objs))
        if a != t and len(_matching(objs, objs[a].spec.color, objs[a].spec.shape)) == 1
    ]
    for a in anchors:
        for direction in ("above", "below", "left", "right"):
            if _relation_ok(t, same_cs, a, objs, direction, dims):
                anchor = f"{objs[a].spec.color} {objs[a].spec.shape}"
                positional.append(pick(_RELATION[direction], d=cs, a=anchor))
    return plain, positional


def referring_expressions(
    objs: list[VisibleObject], width: int, height: int, rng: np.random.Generator
) -> list[list[str]]:
    """Per object, 0-2 lowercase expressions that each single it out ([] when none is safe).

    The first expression is the simplest unique one; one time in five a position form is used
    even though colour+shape would do, as annotators do.
    """
    dims = (width, height)
    out = []
    for t in range(len(objs)):
        plain, positional = _forms(t, objs, dims, rng)
        if plain and positional and rng.random() < 0.2:
            ordered = positional[:1] + plain + positional[1:]
        else:
            ordered = plain + positional
        if not ordered:
            out.append([])
            continue
        sentences = [ordered[0]]
        rest = ordered[1:]
        if rest and rng.random() < 0.6:
            sentences.append(rest[int(rng.integers(len(rest)))])
        out.append(sentences)
    return out
