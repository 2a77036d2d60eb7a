"""Boxes of photos that carry an EXIF orientation tag, turned into the upright frame.

The annotate stage stores every image upright (EXIF orientation applied, pipelines/decode.py),
so region boxes must be upright too. A dataset's boxes were drawn on one of two frames:
- the upright image, when its JSON width x height is the upright size; nothing to do;
- the stored pixels (tools of COCO's and Visual Genome's era ignored the tag), when the JSON size is
  the stored one, or for a flip or half turn (orientations 2-4), where sizes cannot tell.
`to_upright` maps a normalized [ymin, xmin, ymax, xmax] box from the stored frame to the upright
one for each of the eight EXIF orientations (the transposes Pillow's ImageOps.exif_transpose
applies).
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

# Orientation -> the upright (y', x') of a stored point (y, x), normalized coordinates.
_MAPS = {
    1: lambda y, x: (y, x),
    2: lambda y, x: (y, 1 - x),
    3: lambda y, x: (1 - y, 1 - x),
    4: lambda y, x: (1 - y, x),
    5: lambda y, x: (x, y),
    6: lambda y, x: (x, 1 - y),
    7: lambda y, x: (1 - x, 1 - y),
    8: lambda y, x: (1 - x, y),
}


def read_orientation(path: Path) -> tuple[int, tuple[int, int]]:
    """(EXIF orientation, stored (width, height)) of an image file; 1 when untagged or unreadable."""
    try:
        with Image.open(path) as im:
            orientation = int(im.getexif().get(0x0112, 1))
            return (orientation if orientation in _MAPS else 1), im.size
    except Exception:  # noqa: BLE001 - annotate decodes (and dead-letters) the image itself
        return 1, (0, 0)


def boxes_are_stored_frame(orientation: int, stored: tuple[int, int],
                           json_size: tuple[float, float]) -> bool:
    """Whether a dataset's boxes (for an image of JSON size width x height) need turning upright."""
    if orientation == 1:
        return False
    if orientation in (2, 3, 4):
        return True
    return (round(json_size[0]), round(json_size[1])) == tuple(stored)


def to_upright(box: list[float], orientation: int) -> list[float]:
    """Normalized [ymin, xmin, ymax, xmax] on the stored pixels -> the same box upright."""
    f = _MAPS[orientation]
    (ya, xa), (yb, xb) = f(box[0], box[1]), f(box[2], box[3])
    return [min(ya, yb), min(xa, xb), max(ya, yb), max(xa, xb)]


def upright_frame(path: Path, width: float, height: float):
    """(box fixer, upright (width, height), orientation) for one image file and its JSON size.

    The fixer maps a normalized box as the dataset drew it to the upright frame (identity when it
    already is)."""
    orientation, stored = read_orientation(path)
    turned = orientation in (5, 6, 7, 8)
    if stored == (0, 0):
        size = (int(width), int(height))
    else:
        size = (stored[1], stored[0]) if turned else stored
    if boxes_are_stored_frame(orientation, stored, (width, height)):
        return (lambda box: to_upright(box, orientation)), size, orientation
    return (lambda box: list(box)), size, orientation
