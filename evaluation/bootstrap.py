"""95% bootstrap intervals that resample images, not expressions.

Expressions of one image are not independent (same picture, often the same object), so the
RefCOCO-style intervals here resample whole images with replacement and take the mean over the
expressions of the drawn images. A paired difference (e.g. LocCa's transfer hits minus the
captioner's on the same expressions) uses the same routine on the per-expression differences.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

NUM_RESAMPLES = 2000
LEVEL = 0.95


def image_bootstrap(values: Sequence[float], groups: Sequence, *, num: int = NUM_RESAMPLES,
                    level: float = LEVEL, seed: int = 0) -> tuple[float, float]:
    """values float[N] per expression, groups[N] their image ids -> (lo, hi): the percentile
    interval of the mean of `values` over `num` resamples of the images with replacement.

    Deterministic for a seed. One image (or none) gives a zero-width interval at the mean.
    """
    v = np.asarray(values, np.float64).reshape(-1)
    if len(v) != len(groups):
        raise ValueError(f"{len(v)} values for {len(groups)} group ids")
    if len(v) == 0:
        return 0.0, 0.0
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    sums = np.bincount(inverse, weights=v)
    counts = np.bincount(inverse).astype(np.float64)
    if len(sums) == 1:
        return float(v.mean()), float(v.mean())
    draws = np.random.default_rng(seed).integers(0, len(sums), size=(num, len(sums)))
    means = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    tail = (1.0 - level) / 2
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    return float(lo), float(hi)
