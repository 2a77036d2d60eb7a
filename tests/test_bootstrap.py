"""Image-level bootstrap intervals (evaluation/bootstrap.py)."""

import numpy as np
import pytest

from evaluation.bootstrap import image_bootstrap


def test_interval_holds_the_mean_and_is_deterministic():
    rng = np.random.default_rng(0)
    hits = rng.random(300) < 0.4
    images = np.arange(300) // 3
    lo, hi = image_bootstrap(hits, images)
    assert lo < hits.mean() < hi
    assert (lo, hi) == image_bootstrap(hits, images)
    # Independent expressions: close to the normal approximation's 95% half-width.
    half = 1.96 * np.sqrt(0.4 * 0.6 / 300)
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.35)


def test_images_not_expressions_are_resampled():
    """10 expressions per image that all agree: the evidence is 30 images, not 300 expressions,
    so the interval is as wide as 30 independent draws give, about 3x 300's."""
    per_image = np.random.default_rng(1).random(30) < 0.5
    hits = np.repeat(per_image, 10)
    clustered = image_bootstrap(hits, np.repeat(np.arange(30), 10))
    independent = image_bootstrap(hits, np.arange(300))
    ratio = (clustered[1] - clustered[0]) / (independent[1] - independent[0])
    assert 2.3 < ratio < 4.0  # sqrt(10) = 3.16


def test_edge_cases():
    assert image_bootstrap([], []) == (0.0, 0.0)
    assert image_bootstrap([1.0, 0.0], [7, 7]) == (0.5, 0.5)  # one image: no spread to show
    with pytest.raises(ValueError, match="3 values for 2"):
        image_bootstrap([1, 0, 1], [1, 2])
