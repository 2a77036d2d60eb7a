"""Unit polygons for every shape kind, and placing them in an image.

Every shape is a polygon inside the unit disk (so an object's radius bounds its extent), which keeps
drawing to one `ImageDraw.polygon` call per object and makes placement inside the image trivial.
"""

from __future__ import annotations

import functools

import numpy as np


def _regular(n: int, phase: float = -np.pi / 2) -> np.ndarray:
    t = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([np.cos(t), np.sin(t)], axis=1)


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    t = -np.pi / 2 + np.pi * np.arange(2 * points) / points
    r = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _heart(n: int = 48) -> np.ndarray:
    # The classic parametric heart, flipped so the point is at the bottom (image y grows down).
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    pts = np.stack([x, y], axis=1)
    pts -= (pts.max(0) + pts.min(0)) / 2
    return pts / np.abs(pts).max() * 0.98


def _cross(arm: float = 0.34) -> np.ndarray:
    a, b = arm, 0.95
    return np.array(
        [
            (-a, -b),
            (a, -b),
            (a, -a),
            (b, -a),
            (b, a),
            (a, a),
            (a, b),
            (-a, b),
            (-a, a),
            (-b, a),
            (-b, -a),
            (-a, -a),
        ]
    )


def _arrow() -> np.ndarray:
    return np.array(
        [
            (-0.95, -0.3),
            (0.15, -0.3),
            (0.15, -0.7),
            (0.95, 0.0),
            (0.15, 0.7),
            (0.15, 0.3),
            (-0.95, 0.3),
        ]
    )


@functools.cache
def unit_polygon(shape: str) -> np.ndarray:
    """float64[P, 2] (x, y) vertices inside the unit disk, centred on the origin."""
    table = {
        "circle": lambda: _regular(64),
        "square": lambda: _regular(4, np.pi / 4) / np.sqrt(2) * 1.25,
        "triangle": lambda: _regular(3) * 0.9 + np.array([0.0, 0.15]),
        "star": _star,
        "hexagon": lambda: _regular(6, 0.0),
        "diamond": lambda: np.array([(0.0, -1.0), (0.62, 0.0), (0.0, 1.0), (-0.62, 0.0)]),
        "cross": _cross,
        "heart": _heart,
        "pentagon": lambda: _regular(5),
        "arrow": _arrow,
    }
    if shape not in table:
        raise KeyError(f"unknown shape {shape!r}")
    pts = np.asarray(table[shape](), dtype=np.float64)
    pts.setflags(write=False)
    return pts


def place(
    shape: str, cx: float, cy: float, radius: float, angle: float
) -> list[tuple[float, float]]:
    """Pixel vertices of `shape` centred at (cx, cy), scaled by radius, rotated by angle (radians)."""
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    pts = unit_polygon(shape) @ rot.T * radius + np.array([cx, cy])
    return [(float(x), float(y)) for x, y in pts]
