"""The loader's fast paths give exactly what the plain paths give (issue #5).

OpenCV JPEG decode vs Pillow (pixels), record.decode_training_fields vs record.decode (fields and
errors), the one-block format_example vs per-task format_task/empty (ids and masks), and
data.check_records on/off (whole batches).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from test_data_pipeline import write_shards

from model import tasks
from model import tokenizer as tokenizer_lib
from pipelines import record as record_lib
from pipelines.example_proto import Example
from training import data
from training import preprocess as pp

MIN_SIDES = (None, 8, 20, 50, 120, 224, 479)


def _pixels(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth random colour image (JPEG-like content, so every DCT coefficient matters)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (h // 8 + 2, w // 8 + 2, 3), np.uint8)
    img = Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC)
    noise = rng.integers(-20, 21, (h, w, 3))
    return np.clip(np.asarray(img).astype(int) + noise, 0, 255).astype(np.uint8)


def _jpeg(pixels: np.ndarray, mode: str = "RGB", **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buf, "JPEG", **save)
    return buf.getvalue()


def _pillow(blob: bytes, min_side: int | None) -> np.ndarray:
    return np.asarray(pp._open(blob, min_side))  # the Pillow path decode_image falls back to


@pytest.mark.parametrize("shape", [(480, 640), (37, 53), (481, 639), (224, 224), (1000, 333)])
@pytest.mark.parametrize(
    "save",
    [
        {},
        {"subsampling": 0},
        {"subsampling": 1},
        {"progressive": True},
        {"quality": 100},
    ],
    ids=["420", "444", "422", "progressive", "q100"],
)
def test_opencv_decode_equals_pillow(shape, save):
    pixels = _pixels(*shape)
    for mode in ("RGB", "L"):
        blob = _jpeg(pixels, mode, **save)
        for min_side in MIN_SIDES:
            fast = pp.decode_jpeg_fast(blob, min_side)
            assert fast is not None, (mode, min_side)
            want = _pillow(blob, min_side)
            assert fast.dtype == np.uint8 and fast.shape == want.shape, (mode, min_side)
            assert np.array_equal(fast, want), (mode, min_side)
            assert np.array_equal(pp.decode_image(blob, min_side), want)


def test_opencv_decode_equals_pillow_on_photos(coco_mini):
    fast_count = 0
    for path in sorted((coco_mini / "train2017").glob("*.jpg"))[:6]:
        blob = path.read_bytes()
        for min_side in (None, 224, 100):
            fast = pp.decode_jpeg_fast(blob, min_side)
            if fast is not None:  # a photo with trailing bytes or an Adobe marker uses Pillow
                fast_count += 1
                assert np.array_equal(fast, _pillow(blob, min_side)), (path.name, min_side)
    # Without this the test would pass with every photo declined to Pillow (nothing compared).
    assert fast_count > 0, "no coco-mini photo took the OpenCV path"


def test_exif_orientation_is_ignored_like_pillow():
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW": OpenCV would apply it by default, Pillow's decode does not
    buf = io.BytesIO()
    Image.fromarray(_pixels(40, 64)).save(buf, "JPEG", exif=exif.tobytes())
    fast = pp.decode_jpeg_fast(buf.getvalue())
    assert fast is not None and fast.shape == (40, 64, 3)
    assert np.array_equal(fast, _pillow(buf.getvalue(), None))


def test_fast_decode_declines_what_it_cannot_match():
    pixels = _pixels(48, 64)
    png = io.BytesIO()
    Image.fromarray(pixels).save(png, "PNG")
    cmyk = _jpeg(pixels, "CMYK")
    truncated = _jpeg(pixels)[:-200]
    for blob in (png.getvalue(), cmyk, truncated, b"", b"\xff\xd8\xff"):
        assert pp.decode_jpeg_fast(blob) is None
    # Declined inputs still decode (or fail) exactly as before, through Pillow.
    assert np.array_equal(pp.decode_image(cmyk), _pillow(cmyk, None))
    assert np.array_equal(pp.decode_image(png.getvalue()), pixels)
    with pytest.raises(OSError):
        pp.decode_image(truncated)


def test_jpeg_header():
    blob = _jpeg(_pixels(37, 53))
    assert pp.jpeg_header(blob) == (53, 37, 3, False)
    assert pp.jpeg_header(_jpeg(_pixels(20, 30), "L"))[2] == 1
    assert pp.jpeg_header(b"not a jpeg") is None


@pytest.mark.parametrize("min_side", [1, 7, 8, 30, 59, 60, 61, 119, 120, 121, 239, 240, 479, 480])
def test_draft_scale_follows_pillow(min_side):
    blob = _jpeg(_pixels(480, 640))
    assert pp.decode_jpeg_fast(blob, min_side).shape == _pillow(blob, min_side).shape


def _record(n: int = 2, **overrides) -> record_lib.Record:
    fields = dict(
        key="k",
        source="s",
        image=_jpeg(_pixels(16, 16)),
        height=16,
        width=16,
        caption="a dog and a cat",
        boxes=np.tile([[0.1, 0.2, 0.5, 0.6]], (n, 1)),
        phrases=("dog", "ein Kätzchen")[:n],
        scores=np.ones(n, np.float32),
        query_ranks=np.arange(n),
        labeler="test",
    )
    fields.update(overrides)
    return record_lib.Record(**fields)


@pytest.mark.parametrize("n", [0, 1, 2])
def test_training_fields_equal_full_decode(n):
    blob = record_lib.encode(_record(n))
    full = record_lib.decode(blob)
    got = record_lib.decode_training_fields(blob)
    assert got.image == full.image and got.caption == full.caption
    assert got.phrases == full.phrases
    assert got.boxes.dtype == np.float32 and np.array_equal(got.boxes, full.boxes)
    assert got.boxes.shape == (n, 4)
    via = record_lib.TrainingFields.from_record(full)  # what data.check_records=True uses
    assert via.image == got.image and via.caption == got.caption and via.phrases == got.phrases
    assert np.array_equal(via.boxes, got.boxes)


def _tamper(blob: bytes, edit) -> bytes:
    ex = Example()
    ex.ParseFromString(blob)
    edit(ex.features.feature)
    return ex.SerializeToString()


@pytest.mark.parametrize(
    "edit, field",
    [
        (lambda f: f["regions/phrase"].bytes_list.value.append(b"extra"), "regions/phrase"),
        (lambda f: f["regions/bbox"].float_list.value.append(0.5), "regions/bbox"),
        (lambda f: f["schema_version"].int64_list.value.__setitem__(0, 99), "schema_version"),
        (lambda f: f.__delitem__("caption"), "caption"),
        (lambda f: f["caption"].bytes_list.value.__setitem__(0, b"\xff\xfe"), "caption"),
        (lambda f: f["image/encoded"].bytes_list.value.__setitem__(0, b""), "image/encoded"),
        # Read naively, these would be a record with zero regions or the first of two captions.
        (lambda f: (f.__delitem__("regions/bbox"), f.__delitem__("regions/phrase")),
         "regions/bbox"),
        (lambda f: f["regions/bbox"].bytes_list.value.append(b"0.1"), "regions/bbox"),
        (lambda f: f["caption"].bytes_list.value.append(b"a second caption"), "caption"),
    ],
)
def test_training_fields_reject_what_the_loader_cannot_use(edit, field):
    bad = _tamper(record_lib.encode(_record(2)), edit)
    with pytest.raises(record_lib.RecordError) as e:
        record_lib.decode_training_fields(bad)
    assert e.value.field == field


@pytest.fixture(scope="module")
def tok() -> tokenizer_lib.Tokenizer:
    words = "a red blue dog cat on the left right of small big man woman table".split()
    rng = np.random.default_rng(0)
    sents = [" ".join(rng.choice(words, rng.integers(2, 9))) for _ in range(600)]
    return tokenizer_lib.Tokenizer(
        tokenizer_lib.train_model(sents + ["cap aref gcap :"] * 20, 1400, model_type="bpe")
    )


def _reference_example(tok, rng, *, caption, boxes, phrases, max_len, task_mix, task_weights):
    """format_example as it was written before the one-block version: per task, format_task."""
    has_regions = len(phrases) > 0
    chosen = tasks.choose_tasks(rng, has_regions, task_mix, task_weights)
    picks = rng.integers(0, len(phrases), size=2) if has_regions else (0, 0)
    out = {"has_regions": np.bool_(has_regions)}
    for task in tasks.TASKS:
        if task not in chosen:
            f = tasks.empty(task, tok, max_len)
        elif task == "cap":
            f = tasks.format_task("cap", tok, max_len=max_len, caption=caption)
        else:
            i = int(picks[0 if task == "aref" else 1])
            f = tasks.format_task(task, tok, max_len=max_len, phrase=phrases[i], box=boxes[i])
        out[f"{task}/inputs"], out[f"{task}/targets"] = f.inputs, f.targets
        out[f"{task}/loss_mask"] = f.loss_mask
    return out


@pytest.mark.parametrize("max_len", [1, 3, 5, 7, 9, 12, 24, 64])
@pytest.mark.parametrize("task_mix", ["all", "sample"])
def test_format_example_equals_per_task_formatting(tok, max_len, task_mix):
    words = "a red blue dog cat on the left right of small big man woman table".split()
    gen = np.random.default_rng(max_len)
    weights = {"cap": 1.0, "aref": 2.0, "gcap": 1.0}
    for seed in range(40):
        n = int(gen.integers(0, 4))
        y, x = np.sort(gen.uniform(size=(2, n, 2)), -1)
        boxes = np.stack([y[:, 0], x[:, 0], y[:, 1], x[:, 1]], -1).astype(np.float32)
        phrases = tuple(" ".join(gen.choice(words, gen.integers(1, 6))) for _ in range(n))
        caption = " ".join(gen.choice(words, gen.integers(0, 30)))
        kw = dict(
            caption=caption,
            boxes=boxes,
            phrases=phrases,
            max_len=max_len,
            task_mix=task_mix,
            task_weights=weights,
        )
        got = tasks.format_example(tok, np.random.default_rng(seed), **kw)
        want = _reference_example(tok, np.random.default_rng(seed), **kw)
        assert got.keys() == want.keys()
        for k in want:
            assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
            assert np.array_equal(got[k], want[k]), (k, seed)


def test_phrase_cache_is_exact_and_not_mutated(tok):
    box = [0.1, 0.2, 0.3, 0.4]
    first = tasks.target_ids("aref", tok, phrase="red dog on the left", box=box, budget=6)
    again = tasks.target_ids("aref", tok, phrase="red dog on the left", box=box, budget=6)
    full = tasks.target_ids("gcap", tok, phrase="red dog on the left", box=box)
    assert first == again
    sep = len(tok.encode(tasks.SEPARATOR))
    assert full[4 + sep :] == tok.encode("red dog on the left")  # the cached ids were not cut
    cached = tok.__dict__["_locca_phrase_cache"]["red dog on the left"]
    assert cached == tok.encode("red dog on the left")


def test_check_records_switch_gives_the_same_batches(tmp_path, tok):
    shards = write_shards(tmp_path, num_records=20, num_shards=2)
    for augment in ({}, {"crop": True, "flip": True}):
        batches = []
        for check in (False, True):
            cfg = data.default_config()
            cfg.paths, cfg.image_size, cfg.text_len, cfg.read_threads = shards, 32, 24, 1
            cfg.augment.update(augment)
            cfg.check_records = check
            it = data.make_train_iter(
                cfg, tok, per_process_batch=5, seed=2, process_index=0, process_count=1
            )
            batches.append([next(it) for _ in range(5)])  # crosses an epoch
        for a, b in zip(*batches, strict=True):
            assert a.keys() == b.keys()
            assert all(np.array_equal(a[k], b[k]) for k in a)
