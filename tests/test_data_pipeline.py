"""The Grain pipeline end to end on tiny ArrayRecord shards written here."""

from __future__ import annotations

import io
import math
import re

import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordWriter
from PIL import Image

from model import tasks
from model import tokenizer as tokenizer_lib
from pipelines import record as record_lib
from training import bad_records, data

NUM_RECORDS = 30
BOX = (0.2, 0.1, 0.6, 0.45)  # the red rectangle of every image, [ymin, xmin, ymax, xmax]


def _jpeg(h: int = 48, w: int = 64) -> bytes:
    image = np.full((h, w, 3), 100, np.uint8)
    y0, x0, y1, x1 = (np.asarray(BOX) * [h, w, h, w]).round().astype(int)
    image[y0:y1, x0:x1] = (255, 0, 0)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def write_shards(directory, num_records: int = NUM_RECORDS, num_shards: int = 3) -> str:
    """Records `i` have caption "item {i} ..." and (unless i % 5 == 0) one region on the rectangle."""
    jpeg = _jpeg()
    for s in range(num_shards):
        writer = ArrayRecordWriter(str(directory / f"part-{s}.array_record"), "group_size:1")
        for i in range(s, num_records, num_shards):
            n = int(i % 5 != 0)
            writer.write(record_lib.encode(record_lib.Record(
                key=f"k{i}", source="test", image=jpeg, height=48, width=64,
                caption=f"item {i} a red box on the left",
                boxes=np.asarray([BOX] * n, np.float32).reshape(-1, 4),
                phrases=("red box on the left",) * n, scores=np.ones(n, np.float32),
                query_ranks=np.zeros(n, np.int64), labeler="test")))
        writer.close()
    return str(directory / "part-*.array_record")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    return write_shards(tmp_path_factory.mktemp("shards"))


@pytest.fixture(scope="module")
def tok() -> tokenizer_lib.Tokenizer:
    sents = [f"item {i} a red box on the left" for i in range(100)] + ["cap aref gcap :"] * 20
    return tokenizer_lib.Tokenizer(tokenizer_lib.train_model(sents, 1400, model_type="bpe"))


def _config(paths: str, **augment) -> object:
    c = data.default_config()
    c.paths, c.image_size, c.text_len, c.read_threads = paths, 32, 24, 2
    c.augment.update(augment)
    return c


def _take(it, n: int) -> list[dict]:
    return [next(it) for _ in range(n)]


def _same(a: list[dict], b: list[dict]) -> bool:
    return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b, strict=True) for k in x)


def _item_ids(batch: dict, tok) -> list[int]:
    out = []
    for row, mask in zip(batch["cap/targets"], batch["cap/loss_mask"], strict=True):
        text = tasks.decode_target("cap", row[mask > 0], tok).text
        out.append(int(re.match(r"item (\d+)", text).group(1)))
    return out


def test_batch_contract(shards, tok):
    it = data.make_train_iter(_config(shards), tok, per_process_batch=6, seed=0,
                              process_index=0, process_count=1)
    b = next(it)
    # uint8 by default: the train step (model_fns.model_images) maps it to [-1, 1].
    assert b["image"].shape == (6, 32, 32, 3) and b["image"].dtype == np.uint8
    assert b["image"].min() < 110 and b["image"].max() > 200  # grey canvas and red rectangle
    for task in tasks.TASKS:
        assert b[f"{task}/inputs"].shape == (6, 24) and b[f"{task}/inputs"].dtype == np.int32
        assert b[f"{task}/targets"].dtype == np.int32
        assert b[f"{task}/loss_mask"].dtype == np.float32
    assert b["has_regions"].dtype == bool
    ids = _item_ids(b, tok)
    assert [i % 5 != 0 for i in ids] == b["has_regions"].tolist()
    for row in range(6):  # without regions the location tasks carry no loss
        has = b["has_regions"][row]
        assert (b["aref/loss_mask"][row].sum() > 0) == has
        assert (b["gcap/loss_mask"][row].sum() > 0) == has


def test_same_seed_same_batches_other_seed_differs(shards, tok):
    def first(seed):
        it = data.make_train_iter(_config(shards, crop=True, flip=True), tok,
                                  per_process_batch=4, seed=seed, process_index=0,
                                  process_count=1)
        return _take(it, 3)

    a, b, c = first(1), first(1), first(2)
    assert _same(a, b)
    assert not _same(a, c)


def _per_example_batches(cfg, tok, batch: int, n: int, **kw) -> list[dict]:
    """The reference: one Grain RandomMap element per example, batched by Grain."""
    ds = data.make_examples(cfg, tok, **kw).batch(batch, drop_remainder=kw.get("train", True))
    return [ds[i] for i in range(min(n, len(ds)))]


def _exactly_same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(x[k].dtype == y[k].dtype and np.array_equal(x[k], y[k])
                                     for k in x)
        for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("augment", [{}, {"crop": True, "flip": True}], ids=["plain", "augment"])
@pytest.mark.parametrize("process_count", [1, 3])
def test_batched_loader_equals_per_example_pipeline(shards, tok, augment, process_count):
    # One Grain element per batch (BatchTransform) must give the batches of the per-example
    # RandomMap pipeline bit for bit: same order, same per-example rng, across epochs.
    cfg = _config(shards, **augment)
    for index in range(process_count):
        kw = {"seed": 7, "process_index": index, "process_count": process_count}
        ref = _per_example_batches(cfg, tok, 4, 8, **kw)  # 8 batches: past the first epoch
        got = _take(data.make_train_iter(cfg, tok, per_process_batch=4, **kw), 8)
        assert _exactly_same(ref, got), index
    assert not _same(ref[:1], _take(data.make_train_iter(
        cfg, tok, per_process_batch=4, seed=8, process_index=index,
        process_count=process_count), 1))  # the seed is not ignored


def test_batched_loader_equals_per_example_float32_and_eval(shards, tok):
    cfg = _config(shards, crop=True)
    cfg.image_dtype, cfg.value_range = "float32", (0.0, 1.0)
    kw = {"seed": 1, "process_index": 1, "process_count": 2}
    ref = _per_example_batches(cfg, tok, 3, 4, **kw)
    assert _exactly_same(ref, _take(data.make_train_iter(cfg, tok, per_process_batch=3, **kw), 4))
    assert ref[0]["image"].dtype == np.float32
    # Eval: one pass, file order, the last short batch kept (15 records per process: 4+4+4+3).
    ref = _per_example_batches(cfg, tok, 4, 10, num_epochs=1, train=False, **kw)
    got = list(data.make_eval_iter(cfg, tok, batch_size=4, **kw))
    assert [len(b["image"]) for b in got] == [4, 4, 4, 3]
    assert _exactly_same(ref, got)


def test_thread_rngs_draw_what_grain_random_map_draws():
    from grain._src.python.dataset.transformations.map import RngPool

    rngs, pool = data._ThreadRngs(1234), RngPool(1234)
    for index in (5, 0, 2**40 + 3, 5):  # out of order and repeated: a full reset each time
        ours = rngs.at(index)
        a = (ours.integers(0, 1000, 3).tolist(), ours.uniform(), ours.random(2).tolist())
        theirs = pool.acquire_rng(index)
        b = (theirs.integers(0, 1000, 3).tolist(), theirs.uniform(), theirs.random(2).tolist())
        assert a == b, index
    import pickle

    assert pickle.loads(pickle.dumps(rngs)).at(7).uniform() == pool.acquire_rng(7).uniform()


def test_read_threads_do_not_change_batches(shards, tok):
    cfg = _config(shards, crop=True, flip=True)
    runs = []
    for threads in (0, 1, 3):
        cfg.read_threads = threads
        runs.append(_take(data.make_train_iter(cfg, tok, per_process_batch=4, seed=3,
                                               process_index=0, process_count=1), 9))
    assert _exactly_same(runs[0], runs[1]) and _exactly_same(runs[0], runs[2])


def test_worker_count_does_not_change_batches(shards, tok):
    cfg = _config(shards, crop=True, flip=True)
    ref = _take(data.make_train_iter(cfg, tok, per_process_batch=4, seed=3, process_index=0,
                                     process_count=1, num_workers=0), 5)
    it = data.make_train_iter(cfg, tok, per_process_batch=4, seed=3, process_index=0,
                              process_count=1, num_workers=2)
    try:
        got = _take(it, 5)
    finally:
        it.close()
    assert _same(ref, got)


@pytest.mark.parametrize("num_workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_state_restore_resumes_at_same_element(shards, tok, num_workers):
    def make():
        return data.make_train_iter(_config(shards, flip=True), tok, per_process_batch=4, seed=5,
                                    process_index=0, process_count=1, num_workers=num_workers)

    it = make()
    _take(it, 3)
    state = it.get_state()
    expected = _take(it, 4)  # crosses the first epoch boundary (30 records, 7 batches per epoch)
    it2 = make()
    it2.set_state(state)
    got = _take(it2, 4)
    if num_workers:
        it.close()
        it2.close()
    assert _same(expected, got)


def test_state_round_trips_through_orbax(shards, tok, tmp_path):
    def make():
        return data.make_train_iter(_config(shards), tok, per_process_batch=4, seed=9,
                                    process_index=0, process_count=1)

    assert _same(*orbax_round_trip(make, 2, 1, tmp_path))


def orbax_round_trip(make, before: int, after: int, tmp_path) -> tuple[list[dict], list[dict]]:
    """Takes `before` batches, saves the iterator with Orbax, takes `after` more; restores a fresh
    iterator from the save: (the batches after the save, the restored iterator's batches)."""
    import grain
    import orbax.checkpoint as ocp

    it = make()
    _take(it, before)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.save(1, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
        expected = _take(it, after)
        it2 = make()
        mngr.restore(1, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointRestore(it2)))
    return expected, _take(it2, after)


@pytest.mark.parametrize("process_count", [1, 2, 3])
def test_one_epoch_covers_every_record_once(shards, tok, process_count):
    seen = []
    for index in range(process_count):
        it = data.make_train_iter(_config(shards), tok, per_process_batch=1, seed=11,
                                  process_index=index, process_count=process_count,
                                  num_epochs=1)
        ids = [i for b in it for i in _item_ids(b, tok)]
        assert abs(len(ids) - NUM_RECORDS / process_count) < 1
        seen += ids
    assert sorted(seen) == list(range(NUM_RECORDS))


def test_float32_images_match_uint8_scaled_in_the_train_step(shards, tok):
    from training import model_fns

    cfg = _config(shards)
    u8 = next(data.make_train_iter(cfg, tok, per_process_batch=6, seed=0, process_index=0,
                                   process_count=1))
    cfg.image_dtype = "float32"
    f32 = next(data.make_train_iter(cfg, tok, per_process_batch=6, seed=0, process_index=0,
                                    process_count=1))
    assert f32["image"].dtype == np.float32
    assert -1.0 <= f32["image"].min() < 0 < f32["image"].max() <= 1.0
    np.testing.assert_allclose(np.asarray(model_fns.model_images(u8["image"])), f32["image"],
                               atol=1e-6)
    assert np.array_equal(u8["cap/targets"], f32["cap/targets"])
    # Float images pass through model_images unchanged.
    assert model_fns.model_images(f32["image"]) is f32["image"]


@pytest.mark.parametrize("field, value, needle", [
    ("image_dtype", "float16", "image_dtype"),
    ("value_range", (0.0, 1.0), "image_dtype=float32"),
])
def test_bad_image_config_is_named(shards, tok, field, value, needle):
    cfg = _config(shards)
    setattr(cfg, field, value)
    with pytest.raises(data.DataError, match=needle):
        data.ExampleTransform(cfg, tok)


def test_fast_and_pillow_resize_give_close_pixels(shards, tok):
    cfg = _config(shards)
    fast = next(data.make_train_iter(cfg, tok, per_process_batch=6, seed=0, process_index=0,
                                     process_count=1))
    cfg.fast_resize = False
    slow = next(data.make_train_iter(cfg, tok, per_process_batch=6, seed=0, process_index=0,
                                     process_count=1))
    diff = np.abs(fast["image"].astype(int) - slow["image"].astype(int))
    assert diff.mean() < 4 and not np.array_equal(fast["image"], slow["image"])


def test_epochs_are_reshuffled(shards, tok):
    it = data.make_train_iter(_config(shards), tok, per_process_batch=NUM_RECORDS, seed=0,
                              process_index=0, process_count=1)
    e1, e2 = _item_ids(next(it), tok), _item_ids(next(it), tok)
    assert sorted(e1) == sorted(e2) == list(range(NUM_RECORDS)) and e1 != e2


def test_augmented_boxes_stay_on_the_red_rectangle(shards, tok):
    cfg = _config(shards, crop=True, crop_area=(0.3, 1.0), flip=True)
    cfg.image_size = 64
    it = data.make_train_iter(cfg, tok, per_process_batch=10, seed=4, process_index=0,
                              process_count=1)
    checked = flipped = 0
    for b in _take(it, 6):
        pixels = b["image"].astype(np.float32)
        for row in range(10):
            mask = b["aref/loss_mask"][row] > 0
            if not mask.any():
                continue
            d = tasks.decode_target("aref", b["aref/targets"][row][mask], tok)
            assert d.box is not None
            y0, x0, y1, x1 = d.box
            dy, dx = (y1 - y0) * 0.2, (x1 - x0) * 0.2
            patch = pixels[row, int(np.ceil((y0 + dy) * 64)) : int((y1 - dy) * 64),
                           int(np.ceil((x0 + dx) * 64)) : int((x1 - dx) * 64)]
            if patch.size == 0:
                continue
            mean = patch.reshape(-1, 3).mean(0)
            assert mean[0] > 200 and mean[1] < 60 and mean[2] < 60, (d, mean)
            flipped += d.text == "red box on the right"  # flip swapped the phrase with the box
            checked += 1
    assert checked >= 10 and 0 < flipped < checked


def test_eval_iter_in_order_without_augmentation(shards, tok):
    cfg = _config(shards, crop=True, flip=True)
    batches = list(data.make_eval_iter(cfg, tok, batch_size=8, process_index=0, process_count=1))
    assert [len(b["image"]) for b in batches] == [8, 8, 8, 6]
    ids = [i for b in batches for i in _item_ids(b, tok)]
    assert sorted(ids) == list(range(NUM_RECORDS))  # every record, once
    assert all(tok.decode(b["aref/targets"][0]).find("right") < 0 for b in batches)


def test_bad_paths_and_batch_sizes(shards, tok, tmp_path):
    with pytest.raises(data.DataError, match=re.escape(str(tmp_path / "nothing-*.rec"))):
        data.make_train_iter(_config(str(tmp_path / "nothing-*.rec")), tok,
                             per_process_batch=2, process_index=0, process_count=1)
    with pytest.raises(data.DataError, match="divisible"):
        data.make_train_iter(_config(shards), tok, global_batch_size=5, process_index=0,
                             process_count=2)
    with pytest.raises(data.DataError, match="process_index"):
        data.make_train_iter(_config(shards), tok, per_process_batch=2, process_index=2,
                             process_count=2)


def test_crop_decode_size_covers_the_most_elongated_smallest_crop(tok):
    cfg = data.default_config()
    cfg.image_size, cfg.augment.crop = 224, True
    cfg.augment.crop_area, cfg.augment.crop_ratio = (0.3, 1.0), (3 / 4, 4 / 3)
    side = data.ExampleTransform(cfg, tok).min_side
    # A square image decoded at `side`: the smallest crop at aspect 4/3 (and 3/4) still has a
    # short side of at least 224 pixels, so the crop is downsampled to 224, never upsampled.
    for aspect in (4 / 3, 3 / 4):
        w, h = math.sqrt(0.3 * aspect) * side, math.sqrt(0.3 / aspect) * side
        assert min(w, h) >= 224 - 1e-6
    assert side < 224 / math.sqrt(0.3 / (4 / 3)) + 1  # and not more than that needs


def test_per_task_region_rows_and_bad_records_share_one_shape(shards, tok):
    """data.aref_regions: aref rows [B, 3, L] beside gcap's [B, 2, L]; an undecodable record's
    stand-in has the same shapes, so a batch holding one still stacks."""
    c = _config(shards)
    c.regions_per_task, c.aref_regions = 2, 3
    b = next(data.make_train_iter(c, tok, per_process_batch=4, seed=0, process_index=0,
                                  process_count=1))
    assert b["aref/inputs"].shape == (4, 3, 24) and b["gcap/inputs"].shape == (4, 2, 24)
    assert b["cap/inputs"].shape == (4, 24)
    bad = bad_records.empty_example(data.ExampleTransform(c, tok), np.random.default_rng(0), "x")
    for key in ("aref/inputs", "gcap/loss_mask", "cap/targets"):
        assert bad[key].shape == b[key].shape[1:]
    c.aref_regions = -1
    with pytest.raises(data.DataError, match="aref_regions"):
        data.ExampleTransform(c, tok)
