"""Preprocessing ops on their own: every op moves the boxes with the pixels."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training import preprocess as pp

COCO = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco-mini" / "train2017"
RED = np.array([255, 0, 0])


def _scene(h: int = 60, w: int = 80) -> dict:
    """Grey image, a red rectangle on the left and a blue one on the right, with their boxes."""
    image = np.full((h, w, 3), 128, np.uint8)
    image[10:40, 5:30] = (255, 0, 0)
    image[20:50, 50:75] = (0, 0, 255)
    boxes = np.asarray([[10 / h, 5 / w, 40 / h, 30 / w], [20 / h, 50 / w, 50 / h, 75 / w]],
                       np.float32)
    return {"image": image, "boxes": boxes, "phrases": ("red left box", "blue right box"),
            "caption": "a red box on the Left and a blue one on the RIGHT"}


def _inside(image: np.ndarray, box: np.ndarray, shrink: float = 0.15) -> np.ndarray:
    """Mean colour of the box's interior (shrunk a little so resampled edges don't count)."""
    h, w = image.shape[:2]
    y0, x0, y1, x1 = box
    dy, dx = (y1 - y0) * shrink, (x1 - x0) * shrink
    rows = slice(int(np.ceil((y0 + dy) * h)), int(np.floor((y1 - dy) * h)))
    cols = slice(int(np.ceil((x0 + dx) * w)), int(np.floor((x1 - dx) * w)))
    patch = image[rows, cols].reshape(-1, 3).astype(np.float64)
    assert len(patch), "box interior is empty"
    return patch.mean(0)


def _assert_colours(f: dict) -> None:
    for box, phrase in zip(f["boxes"], f["phrases"], strict=True):
        want = RED if phrase.startswith("red") else np.array([0, 0, 255])
        assert np.abs(_inside(f["image"], box) - want).max() < 30, (phrase, box)


def test_decode_image_and_draft():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (480, 640, 3), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG")
    full = pp.decode_image(buf.getvalue())
    assert full.shape == (480, 640, 3) and full.dtype == np.uint8
    small = pp.decode_image(buf.getvalue(), min_side=224)
    assert small.shape == (240, 320, 3)  # DCT scale 1/2: shorter side still >= 224
    assert pp.decode_image(buf.getvalue(), min_side=479).shape == (480, 640, 3)
    png = io.BytesIO()
    Image.fromarray(pixels[:10, :10, 0]).save(png, "PNG")  # greyscale -> RGB
    assert pp.decode_image(png.getvalue(), min_side=4).shape == (10, 10, 3)


def test_resize_keeps_boxes_on_objects():
    f = pp.Resize(32)(_scene())
    assert f["image"].shape == (32, 32, 3)
    assert np.array_equal(f["boxes"], _scene()["boxes"])
    _assert_colours(f)


def test_crop_moves_clips_and_drops_boxes():
    s = _scene()
    # Rows 0..45, cols 0..40: the red box is whole, the blue one falls outside.
    f = pp.crop(s, 0, 0, 45, 40, min_visible=0.5)
    assert f["image"].shape == (45, 40, 3) and f["phrases"] == ("red left box",)
    np.testing.assert_allclose(f["boxes"][0], [10 / 45, 5 / 40, 40 / 45, 30 / 40], atol=1e-6)
    _assert_colours(f)
    # Cols 20..80 keep 10/25 of the red box's width: dropped at min_visible 0.5, clipped at 0.3.
    assert pp.crop(s, 0, 20, 60, 60, min_visible=0.5)["phrases"] == ("blue right box",)
    g = pp.crop(s, 0, 20, 60, 60, min_visible=0.3)
    assert g["phrases"] == ("red left box", "blue right box")
    np.testing.assert_allclose(g["boxes"][0], [10 / 60, 0.0, 40 / 60, 10 / 60], atol=1e-6)
    _assert_colours(g)


def test_random_resized_crop_keeps_boxes_on_objects():
    kept = 0
    for seed in range(30):
        rng = np.random.default_rng(seed)
        f = pp.Resize(48)(pp.RandomResizedCrop(area=(0.2, 1.0), min_visible=0.6)(_scene(), rng))
        assert len(f["boxes"]) == len(f["phrases"])
        assert np.all((f["boxes"] >= 0) & (f["boxes"] <= 1))
        _assert_colours(f)
        kept += len(f["boxes"])
    assert 0 < kept < 60  # some crops dropped boxes, some kept them


def test_random_resized_crop_deterministic_per_rng():
    a = pp.RandomResizedCrop()(_scene(), np.random.default_rng(7))
    b = pp.RandomResizedCrop()(_scene(), np.random.default_rng(7))
    assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["boxes"], b["boxes"])


def test_flip_moves_boxes_and_swaps_words():
    f = pp.hflip(_scene())
    assert np.array_equal(f["image"], _scene()["image"][:, ::-1])
    assert f["phrases"] == ("red right box", "blue left box")
    assert f["caption"] == "a red box on the Right and a blue one on the LEFT"
    _assert_colours(f)
    # The red box now lies right of the blue one.
    assert f["boxes"][0][1] > f["boxes"][1][3]
    assert pp.hflip(_scene(), swap_words=False)["phrases"] == _scene()["phrases"]
    assert pp.swap_left_right("leftover rightmost left-hand") == "leftover leftmost right-hand"


def test_random_flip_probability():
    flips = sum(
        pp.RandomFlip(0.5)(_scene(), np.random.default_rng(s))["phrases"][0] == "red right box"
        for s in range(200)
    )
    assert 70 < flips < 130
    assert pp.RandomFlip(0.0)(_scene(), np.random.default_rng(0))["phrases"][0] == "red left box"


def test_value_range():
    f = pp.ValueRange(-1, 1)(_scene())
    assert f["image"].dtype == np.float32
    assert f["image"].min() == -1.0 and f["image"].max() == 1.0
    np.testing.assert_allclose(pp.to_value_range(np.array([0, 255], np.uint8), 0, 1), [0, 1])


def test_real_photo_crop_flip_resize():
    photos = sorted(COCO.glob("*.jpg"))[:3]
    if not photos:
        pytest.skip(f"real photos not found at {COCO} (../shared/data is absent)")
    ops = (pp.RandomResizedCrop(area=(0.6, 1.0)), pp.Resize(64), pp.RandomFlip(), pp.ValueRange())
    for i, path in enumerate(photos):
        image = pp.decode_image(path.read_bytes(), min_side=64)
        f = {"image": image, "boxes": np.asarray([[0.0, 0.0, 1.0, 1.0]], np.float32),
             "phrases": ("everything",), "caption": "a photo"}
        out = pp.apply(ops, f, np.random.default_rng(i))
        assert out["image"].shape == (64, 64, 3) and out["image"].dtype == np.float32
        assert -1 <= out["image"].min() and out["image"].max() <= 1
        # The whole-image box survives any crop and covers the whole output.
        np.testing.assert_allclose(out["boxes"], [[0, 0, 1, 1]], atol=1e-6)


def test_decode_resized_equals_decode_then_resize():
    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (300, 500, 3), np.uint8)).save(buf, "JPEG")
    fused = pp.decode_resized(buf.getvalue(), 64)
    two_ops = pp.Resize(64)({"image": pp.decode_image(buf.getvalue(), 64)})["image"]
    assert fused.shape == (64, 64, 3) and np.array_equal(fused, two_ops)


@pytest.mark.parametrize("shape", [(256, 341), (300, 500), (480, 640), (100, 90)])
def test_resize_fast_is_close_to_pillow_and_keeps_boxes(shape):
    # Smooth content (a resize of noise is all aliasing) with two coloured boxes.
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.stack([128 + 60 * np.sin(yy / 9), 128 + 60 * np.cos(xx / 13),
                      np.full((h, w), 90)], -1).astype(np.uint8)
    image[h // 5 : h // 2, w // 10 : w // 3] = (255, 0, 0)
    image[h // 2 : 4 * h // 5, 2 * w // 3 : 9 * w // 10] = (0, 0, 255)
    boxes = np.asarray([[1 / 5, 1 / 10, 1 / 2, 1 / 3], [1 / 2, 2 / 3, 4 / 5, 9 / 10]], np.float32)
    f = {"image": image, "boxes": boxes, "phrases": ("red box", "blue box"), "caption": ""}
    fast, slow = pp.Resize(64, fast=True)(f), pp.Resize(64)(f)
    assert fast["image"].shape == (64, 64, 3) and fast["image"].dtype == np.uint8
    diff = np.abs(fast["image"].astype(int) - slow["image"].astype(int))
    assert diff.mean() < 3, diff.mean()
    _assert_colours(fast)
    assert np.array_equal(fast["boxes"], boxes)


def test_decode_resized_fast_equals_decode_then_fast_resize():
    rng = np.random.default_rng(2)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (300, 500, 3), np.uint8)).save(buf, "JPEG")
    fused = pp.decode_resized(buf.getvalue(), 64, fast=True)
    two_ops = pp.Resize(64, fast=True)({"image": pp.decode_image(buf.getvalue(), 64)})["image"]
    assert fused.shape == (64, 64, 3) and np.array_equal(fused, two_ops)
