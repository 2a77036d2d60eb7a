"""The grounding toy's examples: each phrase's box holds exactly the square of the named colour,
the other candidates hold other colours (or, with one square, nothing)."""

from __future__ import annotations

import numpy as np
import pytest

from training import grounding_toy as toy


def _pixels(image: np.ndarray, box) -> np.ndarray:
    y1, x1, y2, x2 = (int(round(v * toy.SIZE)) for v in box)
    return image[y1:y2, x1:x2].reshape(-1, 3)


@pytest.mark.parametrize("objects", [1, 2, 3])
def test_each_phrase_names_the_square_in_its_box(objects):
    images, rows, candidates = toy.sample(np.random.default_rng(3), 20, objects)
    assert images.shape == (20, toy.SIZE, toy.SIZE, 3)
    for image, (phrase, box), cands in zip(images, rows, candidates, strict=True):
        colour = np.array(toy.COLOURS[phrase.split()[0]], np.uint8)
        assert cands[0] == box and len(cands) == max(objects, 2)
        assert (_pixels(image, box) == colour).all(axis=1).all()
        for other in cands[1:]:
            inside = _pixels(image, other)
            assert not (inside == colour).all(axis=1).any()
            if objects == 1:
                assert (inside == 128).all()
            else:
                assert len({tuple(px) for px in inside}) == 1  # one other colour fills it
