"""loader_throughput: examples/s of the Grain pipeline vs the raw JPEG decode rate, same run.

  .venv/bin/python tests/benchmarks/loader_throughput.py [--workers 2] [--batches 30]

Builds ArrayRecord shards from the coco-mini photos (real captions and boxes) three times: stored
squashed to 224x224 (the pipeline's resize is then a no-op), resized to a 256 px shorter side, and
at full size (~640x480). The pipeline reads the shard listed --copies times (52: 4,160 records),
because Grain's global shuffle (index_shuffle, a 16-bit-minimum block cipher walked until it lands
in [0, N)) costs ~0.4 ms per example at N = 80 but ~0.01 ms at N = 4,096 and ~0.004 ms at the
millions of records of a real run; 80 records would measure that artifact rather than the loader.
For each, measures
  raw:      decode of the stored JPEGs, one process per worker, no Grain: with Pillow (the
            reference the goal is stated against) and with OpenCV's imdecode (the fastest decode
            available here: the loader's own decoder, so that ratio is the loader's pure
            overhead). For full size the decode is followed by a resize to 224x224 (Pillow
            bilinear / OpenCV INTER_AREA, no DCT scaling), since any loader must bring a full
            photo down to 224
  CPU:      single-process CPU ms/example (process_time, best of 7 interleaved rounds, robust to
            other load) of each raw decode, of the loader's per-example transform alone, of the
            whole Grain pipeline in-process (num_workers=0: reading, shuffling, the transform,
            batching; one Grain element per batch) and of the per-example Grain pipeline it
            replaced (data.make_examples(...).batch: one RandomMap element per example, the
            loader of cefca63; same batches)
  pipeline: make_train_iter at 224 px, text_len 64, all three tasks, batch 32, with the default
            data config (and with --settings, e.g. `checked`: check_records=True), run two ways:
            N worker processes (mp_prefetch), and in one process with --threads read threads
            (num_workers=0; cv2.imdecode releases the GIL, so the decodes overlap)
and prints the ratios (raw time / loader time, or pipeline rate / raw rate). The goal is >= 0.7.
The wall rates are measured --rounds times (3), raw and pipelines interleaved, and the best of
each is compared, so a burst of load from other jobs does not land on one side only.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
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
    blobs, rounds, resize, decoder = args
    if decoder == "opencv":
        import cv2

        cv2.setNumThreads(1)  # as the loader does: one decode per thread
    for _ in range(rounds):
        for b in blobs:
            if decoder == "opencv":
                arr = cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR_RGB)
                if resize:
                    arr = cv2.resize(arr, (224, 224), interpolation=cv2.INTER_AREA)
            else:
                img = Image.open(io.BytesIO(b)).convert("RGB")
                if resize:
                    img = img.resize((224, 224), Image.Resampling.BILINEAR)
                np.asarray(img)
    return rounds * len(blobs)


DECODERS = ("pillow", "opencv")


def raw_decode_rates(pool, blobs: list[bytes], workers: int, resize: bool, decoder: str,
                     passes: int) -> float:
    """JPEG decodes/s of the stored images (+ resize to 224), spread over `workers` processes."""
    t = time.perf_counter()
    n = sum(pool.map(_decode_jpegs, [(blobs, passes, resize, decoder)] * workers))
    return n / (time.perf_counter() - t)


def two_worker_rates(blobs: list[bytes], resize: bool, paths: str, tok, workers: int,
                     batches: int, overrides: dict, rounds: int, threads: tuple[int, ...] = (),
                     seconds: float = 2.0) -> dict[str, list[float]]:
    """Examples/s of the raw decodes and of the pipeline, `rounds` times, interleaved.

    Keys: the decoders, "pipeline" (`workers` processes) and "threads{t}" (one process with t
    read threads) for each t in `threads`.

    Interleaving and taking each one's best round keeps a burst of load from other jobs on the
    shared machine from landing on one side of the ratio only.
    """
    workers = max(workers, 1)
    rates: dict[str, list[float]] = {d: [] for d in (*DECODERS, "pipeline")}
    rates.update({f"threads{t}": [] for t in threads})
    with mp.get_context("spawn").Pool(workers) as pool:
        passes = {}
        for d in DECODERS:
            pool.map(_decode_jpegs, [(blobs[:2], 1, resize, d)] * workers)  # start-up not timed
            t = time.process_time()
            _decode_jpegs((blobs, 1, resize, d))
            passes[d] = max(1, round(seconds / max(time.process_time() - t, 1e-3)))
        for _ in range(rounds):
            for d in DECODERS:
                rates[d].append(raw_decode_rates(pool, blobs, workers, resize, d, passes[d]))
            rates["pipeline"].append(pipeline_rate(paths, tok, workers, batches, overrides))
            for t in threads:
                rates[f"threads{t}"].append(
                    pipeline_rate(paths, tok, 0, batches, {**overrides, "read_threads": t}))
    return rates


def _config(**overrides):
    cfg = data.default_config()
    cfg.image_size, cfg.text_len = 224, 64
    cfg.update(overrides)
    return cfg


# Data-config overrides that --settings can compare with the default.
SETTINGS = {
    "default": {},
    "checked": {"check_records": True},  # full record decode + validate per example
    "float32_pillow": {"image_dtype": "float32", "fast_resize": False},  # the loader before 77f0cbe
}


def _best_of_interleaved(fns: dict, rounds: int = 7) -> dict[str, float]:
    """CPU seconds per call of each fn (best of `rounds`); the fns alternate within each round,
    so a burst of load from other jobs hits all of them alike."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, (fn, count) in fns.items():
            t = time.process_time()
            fn()
            best[name] = min(best[name], (time.process_time() - t) / count)
    return best


def cpu_ms_per_example(records: list[bytes], paths: str, tok, resize: bool, overrides: dict,
                       batch: int = 32) -> dict[str, float]:
    """Single-process CPU ms/example: raw decodes, the transform alone, the in-process pipeline."""
    transform = data.ExampleTransform(_config(**overrides), tok)
    blobs = [record_lib.decode(r).image for r in records]
    rng = np.random.default_rng(0)
    for r in records[:4]:  # one-time costs (OpenCV's import, caches) are not per-example
        transform.random_map(r, rng)
    # read_threads=0: synchronous, so no prefetch thread burns CPU while the others are timed
    # (process_time counts every thread of the process).
    cfg = _config(paths=paths, **{**overrides, "read_threads": 0})
    it = data.make_train_iter(cfg, tok, per_process_batch=batch, seed=0, process_index=0,
                              process_count=1, num_workers=0)
    steps = max(1, len(records) // batch)
    for _ in range(2 * steps):  # readers opened, buffers filled
        next(it)

    def run_transform():
        for r in records:
            transform.random_map(r, rng)

    def run_pipeline():
        for _ in range(steps):
            next(it)

    fns = {f"raw_{d}": ((lambda d=d: _decode_jpegs((blobs, 1, resize, d))), len(blobs))
           for d in DECODERS}
    # The per-example graph this loader replaced (cefca63's make_train_iter), same batches.
    ref = iter(data._to_iter(data.make_examples(cfg, tok, seed=0, process_index=0,
                                                process_count=1).batch(batch, drop_remainder=True),
                             cfg, 0))
    for _ in range(2 * steps):
        next(ref)

    def run_per_example():
        for _ in range(steps):
            next(ref)

    fns["transform"] = (run_transform, len(records))
    fns["pipeline"] = (run_pipeline, steps * batch)
    fns["per_example"] = (run_per_example, steps * batch)
    return {k: v * 1e3 for k, v in _best_of_interleaved(fns).items()}


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
    ap.add_argument("--copies", type=int, default=52, help="times the shard is listed (see top)")
    ap.add_argument("--settings", default="default", help=f"comma-separated, of {list(SETTINGS)}")
    ap.add_argument("--variants", default="224sq,256px,full")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved 2-worker rounds (best)")
    ap.add_argument("--threads", default="2,4",
                    help="read_threads of the in-process (num_workers=0) wall runs; '' for none")
    args = ap.parse_args()
    if not COCO.exists():
        raise SystemExit(f"loader_throughput: {COCO} not found; it needs ../shared/data/coco-mini")
    from absl import flags

    flags.FLAGS.mark_as_parsed()
    print(f"load average {os.getloadavg()[0]:.1f} at start", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tok = None
        variants = {"224sq": (224, True), "256px": (256, False), "full": (None, False)}
        for name in args.variants.split(","):
            side, square = variants[name]
            records = _records(side, square)
            path = Path(tmp) / f"{name}.array_record"
            writer = ArrayRecordWriter(str(path), "group_size:1")
            for r in records:
                writer.write(r)
            writer.close()
            paths = ",".join([str(path)] * args.copies)
            if tok is None:
                texts = [record_lib.decode(r).caption for r in records] + ["cap aref gcap :"] * 9
                tok = tokenizer_lib.Tokenizer(tokenizer_lib.train_model(texts, 1600))
            resize = side is None  # full-size photos: the raw reference resizes to 224 too
            blobs = [record_lib.decode(r).image for r in records]
            for setting in args.settings.split(","):
                overrides = SETTINGS[setting]
                ms = cpu_ms_per_example(records, paths, tok, resize, overrides)
                print(f"{name:5s} {setting}: CPU ms/example (1 process): raw pillow "
                      f"{ms['raw_pillow']:.3f}, raw opencv {ms['raw_opencv']:.3f}, transform "
                      f"{ms['transform']:.3f}, pipeline {ms['pipeline']:.3f} (per-example "
                      f"graph {ms['per_example']:.3f}); CPU ratio vs "
                      f"pillow: transform {ms['raw_pillow'] / ms['transform']:.2f}, pipeline "
                      f"{ms['raw_pillow'] / ms['pipeline']:.2f} (per-example graph "
                      f"{ms['raw_pillow'] / ms['per_example']:.2f}) (vs opencv: transform "
                      f"{ms['raw_opencv'] / ms['transform']:.2f}, pipeline "
                      f"{ms['raw_opencv'] / ms['pipeline']:.2f})", flush=True)
                threads = tuple(int(t) for t in args.threads.split(",") if t.strip())
                rates = two_worker_rates(blobs, resize, paths, tok, args.workers, args.batches,
                                         overrides, args.rounds, threads)
                best = {k: max(v) for k, v in rates.items()}
                runs = "; ".join(f"{k} " + ", ".join(f"{x:.0f}" for x in v)
                                 for k, v in rates.items())
                print(f"{name:5s} {setting}: {args.workers} workers, best of {args.rounds}: "
                      f"raw pillow {best['pillow']:.0f}/s, raw opencv {best['opencv']:.0f}/s, "
                      f"pipeline {best['pipeline']:.0f}/s, ratio vs pillow "
                      f"{best['pipeline'] / best['pillow']:.2f} (vs opencv "
                      f"{best['pipeline'] / best['opencv']:.2f}); "
                      + "".join(f"1 process, {t} read threads: {best[f'threads{t}']:.0f}/s, ratio "
                                f"vs pillow {best[f'threads{t}'] / best['pillow']:.2f}; "
                                for t in threads)
                      + f"[rounds: {runs}]; load average {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
