"""loader_throughput: examples/s of the Grain pipeline vs the raw JPEG decode rate, same run.

  .venv/bin/python tests/benchmarks/loader_throughput.py [--workers 2] [--batches 30]

Builds ArrayRecord shards from the coco-mini photos (real captions and boxes) three times: stored
squashed to 224x224 (the pipeline's resize is then a no-op), resized to a 256 px shorter side, and
at full size (~640x480). For each, measures
  raw:      PIL decode of the stored JPEGs, one process per worker, no Grain; for full size the
            decode is followed by PIL's bilinear resize to 224x224 (no draft), since any loader
            must bring a full photo down to 224
  pipeline: make_train_iter at 224 px, text_len 64, all three tasks, batch 32, N workers, with
            the default data config (uint8 images, OpenCV resize) and with the previous one
            (image_dtype=float32, fast_resize=False: host float conversion, Pillow resize)
and prints pipeline / raw. The goal is >= 0.7.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from array_record.python.array_record_module import ArrayRecordWriter  # noqa: E402

from model import tokenizer as tokenizer_lib  # noqa: E402
from pipelines import record as record_lib  # noqa: E402
from training import data  # noqa: E402

COCO = REPO.parent / "shared" / "data" / "coco-mini"


def _load_coco():
    caps = json.loads((COCO / "annotations" / "captions_train2017.json").read_text())
    inst = json.loads((COCO / "annotations" / "instances_train2017.json").read_text())
    names = {c["id"]: c["name"] for c in inst["categories"]}
    captions, boxes = defaultdict(list), defaultdict(list)
    for a in caps["annotations"]:
        captions[a["image_id"]].append(a["caption"].strip())
    for a in inst["annotations"]:
        boxes[a["image_id"]].append((a["bbox"], names[a["category_id"]]))
    return caps["images"], captions, boxes


def _records(short_side: int | None, square: bool = False) -> list[bytes]:
    images, captions, boxes = _load_coco()
    out = []
    for info in images:
        raw = (COCO / "train2017" / info["file_name"]).read_bytes()
        h, w = info["height"], info["width"]
        if short_side is not None:  # re-encode smaller, as an annotate job storing ~256 px would
            img = Image.open(io.BytesIO(raw)).convert("RGB")
            s = short_side / min(h, w)
            size = (short_side, short_side) if square else (round(w * s), round(h * s))
            img = img.resize(size, Image.Resampling.BILINEAR)
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=90)
            raw, (w, h) = buf.getvalue(), img.size
        regions = boxes[info["id"]]
        xywh = np.asarray([b for b, _ in regions], np.float64).reshape(-1, 4)
        n = len(regions)
        out.append(record_lib.encode(record_lib.Record(
            key=str(info["id"]), source=info["file_name"], image=raw, height=h, width=w,
            caption=captions[info["id"]][0],
            boxes=record_lib.boxes_from_xywh(xywh, info["height"], info["width"]),
            phrases=tuple(p for _, p in regions), scores=np.ones(n, np.float32),
            query_ranks=np.zeros(n, np.int64), labeler="coco")))
    return out


def _decode_jpegs(args) -> int:
    blobs, rounds, resize = args
    for _ in range(rounds):
        for b in blobs:
            img = Image.open(io.BytesIO(b)).convert("RGB")
            if resize:
                img = img.resize((224, 224), Image.Resampling.BILINEAR)
            np.asarray(img)
    return rounds * len(blobs)


def raw_decode_rate(records: list[bytes], workers: int, resize: bool,
                    seconds: float = 3.0) -> float:
    """JPEG decodes/s of the stored images (+ resize to 224), spread over `workers` processes."""
    blobs = [record_lib.decode(r).image for r in records]
    t = time.perf_counter()
    _decode_jpegs((blobs, 1, resize))
    rounds = max(1, round(seconds / (time.perf_counter() - t) / max(workers, 1)))
    with mp.get_context("spawn").Pool(max(workers, 1)) as pool:
        pool.map(_decode_jpegs, [(blobs[:2], 1, resize)] * max(workers, 1))  # start-up not timed
        t = time.perf_counter()
        n = sum(pool.map(_decode_jpegs, [(blobs, rounds, resize)] * max(workers, 1)))
        return n / (time.perf_counter() - t)


def _config(**overrides):
    cfg = data.default_config()
    cfg.image_size, cfg.text_len = 224, 64
    cfg.update(overrides)
    return cfg


# Data-config overrides compared: the defaults, and the pre-optimisation loader.
SETTINGS = {"default": {}, "previous": {"image_dtype": "float32", "fast_resize": False}}


def cpu_ms_per_example(records: list[bytes], tok, resize: bool,
                       overrides: dict) -> tuple[float, float]:
    """Single-process CPU ms (process_time, robust to other load) of raw decode vs our transform."""
    transform = data.ExampleTransform(_config(**overrides), tok)
    blobs = [record_lib.decode(r).image for r in records]
    rng = np.random.default_rng(0)
    for r in records[:4]:  # one-time costs (OpenCV's import, caches) are not per-example
        transform.random_map(r, rng)
    t = time.process_time()
    for _ in range(3):
        _decode_jpegs((blobs, 1, resize))
    raw = (time.process_time() - t) / (3 * len(blobs))
    t = time.process_time()
    for _ in range(3):
        for r in records:
            transform.random_map(r, rng)
    ours = (time.process_time() - t) / (3 * len(records))
    return raw * 1e3, ours * 1e3


def pipeline_rate(paths: str, tok, workers: int, batches: int, overrides: dict,
                  batch: int = 32) -> float:
    cfg = _config(paths=paths, **overrides)
    it = data.make_train_iter(cfg, tok, per_process_batch=batch, seed=0, process_index=0,
                              process_count=1, num_workers=workers)
    try:
        for _ in range(3):  # worker start-up and first buffers are not timed
            next(it)
        t = time.perf_counter()
        for _ in range(batches):
            b = next(it)
        assert b["image"].shape == (batch, 224, 224, 3)
        return batches * batch / (time.perf_counter() - t)
    finally:
        if workers:
            it.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batches", type=int, default=30)
    args = ap.parse_args()
    if not COCO.exists():
        raise SystemExit(f"loader_throughput: {COCO} not found; it needs ../shared/data/coco-mini")
    from absl import flags

    flags.FLAGS.mark_as_parsed()
    with tempfile.TemporaryDirectory() as tmp:
        tok = None
        variants = (("224sq", 224, True), ("256px", 256, False), ("full", None, False))
        for name, side, square in variants:
            records = _records(side, square)
            path = Path(tmp) / f"{name}.array_record"
            writer = ArrayRecordWriter(str(path), "group_size:1")
            for r in records:
                writer.write(r)
            writer.close()
            if tok is None:
                texts = [record_lib.decode(r).caption for r in records] + ["cap aref gcap :"] * 9
                tok = tokenizer_lib.Tokenizer(tokenizer_lib.train_model(texts, 1600))
            resize = side is None  # full-size photos: the raw reference resizes to 224 too
            raw = raw_decode_rate(records, args.workers, resize)
            for setting, overrides in SETTINGS.items():
                raw_ms, ours_ms = cpu_ms_per_example(records, tok, resize, overrides)
                pipe = pipeline_rate(str(path), tok, args.workers, args.batches, overrides)
                print(f"{name:5s} {setting:8s} CPU ms/example (1 process): raw {raw_ms:.2f}, "
                      f"transform {ours_ms:.2f}, ratio {raw_ms / ours_ms:.2f} | raw "
                      f"{raw:5.0f}/s, pipeline {pipe:5.0f}/s, ratio {pipe / raw:.2f} "
                      f"({args.workers} workers)", flush=True)


if __name__ == "__main__":
    main()
