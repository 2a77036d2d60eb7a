"""loader_throughput: examples/s of the Grain pipeline vs the raw JPEG decode rate, same run.

  .venv/bin/python tests/benchmarks/loader_throughput.py [--variants 224,320,full] [--rounds 3]

Builds ArrayRecord shards from the coco-mini photos (real captions and boxes), once per variant of
the stored image, each made by the annotate stage's own code (pipelines.decode.decode_image with
DecodeConfig(store_max_side=N), i.e. `annotate.py --store_max_side N`: longer side bounded by N,
aspect kept, bicubic, re-encoded at the stage's JPEG quality 90): `224` (640x480 -> 224x168),
`256`, `320` (-> 320x240, the smallest bound that keeps a 4:3 photo's shorter side >= 224) and
`full` (store_max_side 0: the original bytes, ~640x480). The pipeline reads the shard listed
--copies times (52: 4,160 records), because Grain's global shuffle (index_shuffle, a 16-bit-minimum
block cipher walked until it lands in [0, N)) costs ~0.4 ms per example at N = 80 but ~0.01 ms at
N = 4,096 and ~0.004 ms at the millions of records of a real run; 80 records would measure that
artifact rather than the loader. For each variant, measures
  raw:      decode of the stored JPEGs, no Grain, with Pillow and with OpenCV's imdecode (the
            loader's own decoder, so that ratio is the loader's pure overhead). Both decode at the
            DCT scale the loader uses (preprocess._draft_scale for a 224 px output: 1/1 for every
            stored variant, 1/2 for a full-size 640x480 photo); for `full` the decode is followed
            by the resize to 224x224 (Pillow bilinear / OpenCV as preprocess.resize_fast), since
            any loader must bring a full photo down to 224. Stored variants: decode only.
  CPU:      single-process CPU ms/example (process_time, best of 7 interleaved rounds, robust to
            other load) of each raw decode, of the loader's per-example transform alone, of the
            whole Grain pipeline in-process (num_workers=0: reading, shuffling, the transform,
            batching; one Grain element per batch) and of the per-example Grain pipeline it
            replaced (data.make_examples(...).batch: one RandomMap element per example, the
            loader of cefca63; same batches)
  wall:     examples/s on --workers (2) cores: the raw decodes spread over 2 processes, and
            make_train_iter at 224 px, text_len 64, all three tasks, batch 32, with the default
            data config (and with --settings, e.g. `checked`: check_records=True), run two ways:
            2 worker processes (mp_prefetch), and in one process with --threads read threads
            (num_workers=0; cv2.imdecode releases the GIL, so the decodes overlap). Before the
            clock starts each pipeline is drained of prefetch_batches x read_threads (x workers)
            batches, more than its buffers can hold, so no batch made before the clock counts;
            then every side is timed for >= --seconds (2 s) of wall time.
  floor:    single-process CPU ms/example of each step no loader of these records can skip, timed
            alone (read, parse, decode, resize to 224x224, caption tokenize), and decode / their
            sum: the best CPU ratio to the raw reference that a loader with no other cost could
            reach (cpu_breakdown).
  scaling:  the 2-thread / 1-thread speed-up of each loader step and of the whole per-example
            transform in one process, and the ms to pass one image batch to another process as
            Grain's mp_prefetch does vs a plain copy (scaling_breakdown): where the wall rates
            lose to the CPU ones.
The wall rates are measured --rounds times (3), all sides interleaved in each round, and reported
as best of the rounds and as the median of the per-round ratios (pipeline / raw of the same round),
so a burst of load from other jobs does not land on one side only. The goal is >= 0.7.
"""

from __future__ import annotations

import argparse
import json
import math
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
from pipelines import decode as decode_lib  # noqa: E402
from pipelines import record as record_lib  # noqa: E402
from training import data  # noqa: E402
from training import preprocess as pp  # noqa: E402

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


def _records(store_max_side: int) -> list[bytes]:
    """One record per coco-mini photo, its image stored as `annotate.py --store_max_side` would."""
    images, captions, boxes = _load_coco()
    config = decode_lib.DecodeConfig(store_max_side=store_max_side)
    out = []
    for info in images:
        raw = (COCO / "train2017" / info["file_name"]).read_bytes()
        stored = decode_lib.decode_image(raw, config)  # the stage's resize + JPEG encode
        regions = boxes[info["id"]]
        xywh = np.asarray([b for b, _ in regions], np.float64).reshape(-1, 4)
        n = len(regions)
        out.append(
            record_lib.encode(
                record_lib.Record(
                    key=str(info["id"]),
                    source=info["file_name"],
                    image=stored.stored,
                    height=stored.height,
                    width=stored.width,
                    caption=captions[info["id"]][0],
                    boxes=record_lib.boxes_from_xywh(xywh, info["height"], info["width"]),
                    phrases=tuple(p for _, p in regions),
                    scores=np.ones(n, np.float32),
                    query_ranks=np.zeros(n, np.int64),
                    labeler="coco",
                )
            )
        )
    return out


SIZE = 224  # output side of every pipeline here


def _decode_jpegs(args) -> int:
    """Decodes every blob `rounds` times as the loader would, minus the loader: returns the count.

    args: (blobs, rounds, resize, decoder). Each JPEG decodes at the DCT scale the loader picks for
    a SIZE px output (preprocess._draft_scale: Pillow's draft / OpenCV's IMREAD_REDUCED_*), so the
    reference gets the same shortcut the loader takes; `resize` brings it to SIZE x SIZE.
    decoder "pillow_nodct" decodes at full scale (the pre-draft reference of earlier READMEs).
    """
    blobs, rounds, resize, decoder = args
    if decoder == "opencv":
        import cv2

        cv2.setNumThreads(1)  # as the loader does: one decode per thread
    scales = []
    for b in blobs:  # header reads are the loader's overhead, not the reference's: done untimed
        w, h = pp.jpeg_header(b)[:2]
        scales.append(pp._draft_scale(w, h, SIZE))
    for _ in range(rounds):
        for b, scale in zip(blobs, scales, strict=True):
            if decoder == "opencv":
                flags = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION
                arr = cv2.imdecode(
                    np.frombuffer(b, np.uint8), flags | (8 * scale if scale > 1 else 0)
                )
                if resize:
                    h, w = arr.shape[:2]
                    area = h > 2 * SIZE or w > 2 * SIZE  # preprocess.resize_fast's choice
                    arr = cv2.resize(
                        arr,
                        (SIZE, SIZE),
                        interpolation=cv2.INTER_AREA if area else cv2.INTER_LINEAR,
                    )
            else:  # preprocess._open: Pillow's draft at the same scale, then RGB
                img = pp._open(b, None if decoder == "pillow_nodct" else SIZE)
                if resize:
                    img = img.resize((SIZE, SIZE), Image.Resampling.BILINEAR)
                np.asarray(img)
    return rounds * len(blobs)


DECODERS = ("pillow", "opencv")


def raw_decode_rate(
    pool, blobs: list[bytes], workers: int, resize: bool, decoder: str, passes: int
) -> float:
    """JPEG decodes/s of the stored images (+ resize to 224), spread over `workers` processes."""
    t = time.perf_counter()
    n = sum(pool.map(_decode_jpegs, [(blobs, passes, resize, decoder)] * workers))
    return n / (time.perf_counter() - t)


def wall_rates(
    blobs: list[bytes],
    resize: bool,
    paths: str,
    tok,
    workers: int,
    overrides: dict,
    rounds: int,
    threads: tuple[int, ...] = (),
    seconds: float = 2.0,
) -> dict[str, list[float]]:
    """Wall examples/s of the raw decodes and of the pipeline, `rounds` times, interleaved.

    Keys: the decoders (raw, `workers` processes), "pipeline" (`workers` worker processes) and
    "threads{t}" (one process with t read threads) for each t in `threads`; one rate per round.
    Every side runs for >= `seconds` of wall time per round.
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
            # CPU seconds of one pass in this process: each process then runs >= `seconds`.
            passes[d] = max(1, math.ceil(seconds / max(time.process_time() - t, 1e-3)))
        for _ in range(rounds):
            for d in DECODERS:
                rates[d].append(raw_decode_rate(pool, blobs, workers, resize, d, passes[d]))
            rates["pipeline"].append(pipeline_rate(paths, tok, workers, overrides, seconds))
            for t in threads:
                rates[f"threads{t}"].append(
                    pipeline_rate(paths, tok, 0, {**overrides, "read_threads": t}, seconds)
                )
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


def cpu_ms_per_example(
    records: list[bytes], paths: str, tok, resize: bool, overrides: dict, batch: int = 32
) -> dict[str, float]:
    """Single-process CPU ms/example: raw decodes, the transform alone, the in-process pipeline."""
    transform = data.ExampleTransform(_config(**overrides), tok)
    blobs = [record_lib.decode(r).image for r in records]
    rng = np.random.default_rng(0)
    for r in records[:4]:  # one-time costs (OpenCV's import, caches) are not per-example
        transform.random_map(r, rng)
    # read_threads=0: synchronous, so no prefetch thread burns CPU while the others are timed
    # (process_time counts every thread of the process).
    cfg = _config(paths=paths, **{**overrides, "read_threads": 0})
    it = data.make_train_iter(
        cfg, tok, per_process_batch=batch, seed=0, process_index=0, process_count=1, num_workers=0
    )
    steps = max(1, len(records) // batch)
    for _ in range(2 * steps):  # readers opened, buffers filled
        next(it)

    def run_transform():
        for r in records:
            transform.random_map(r, rng)

    def run_pipeline():
        for _ in range(steps):
            next(it)

    decoders = (*DECODERS, "pillow_nodct") if resize else DECODERS
    fns = {
        f"raw_{d}": ((lambda d=d: _decode_jpegs((blobs, 1, resize, d))), len(blobs))
        for d in decoders
    }
    # The per-example graph this loader replaced (cefca63's make_train_iter), same batches.
    ref = iter(
        data._to_iter(
            data.make_examples(cfg, tok, seed=0, process_index=0, process_count=1).batch(
                batch, drop_remainder=True
            ),
            cfg,
            0,
        )
    )
    for _ in range(2 * steps):
        next(ref)

    def run_per_example():
        for _ in range(steps):
            next(ref)

    fns["transform"] = (run_transform, len(records))
    fns["pipeline"] = (run_pipeline, steps * batch)
    fns["per_example"] = (run_per_example, steps * batch)
    return {k: v * 1e3 for k, v in _best_of_interleaved(fns).items()}


def _format(tok, rng: np.random.Generator, fields: record_lib.TrainingFields) -> None:
    """The loader's task formatting of one record's fields (all three tasks, text_len 64)."""
    from model import tasks

    tasks.format_example(
        tok, rng, caption=fields.caption, boxes=fields.boxes, phrases=fields.phrases, max_len=64
    )


def cpu_breakdown(records: list[bytes], paths: str, tok) -> dict[str, float]:
    """Single-process CPU ms/example of each step the loader cannot skip, measured alone.

    read (ArrayRecord lookup), parse (record.decode_training_fields), decode (the loader's
    preprocess.decode_image at the 224 px DCT scale), resize (to 224x224, resize_fast), tokenize
    (the caption's SentencePiece encode; phrases are cached) and format (tasks.format_example, all
    three tasks, tokenize included). read + parse + decode + resize + tokenize is the floor of any
    loader that reads these records and feeds 224x224 pixels and caption ids: decode / floor is
    the best CPU ratio to a decode-only reference that even a loader with zero other overhead
    could reach.
    """
    import grain

    source = grain.sources.ArrayRecordDataSource(paths.split(",")[:1])
    fields = [record_lib.decode_training_fields(r) for r in records]
    images = [pp.decode_image(f.image, SIZE) for f in fields]
    rng = np.random.default_rng(0)
    n = len(records)

    def format_all():
        for f in fields:
            _format(tok, rng, f)

    fns = {
        "read": (lambda: [source[i] for i in range(n)], n),
        "parse": (lambda: [record_lib.decode_training_fields(r) for r in records], n),
        "decode": (lambda: [pp.decode_image(f.image, SIZE) for f in fields], n),
        "resize": (lambda: [pp.resize(im, SIZE, fast=True) for im in images], n),
        "tokenize": (lambda: [tok.encode(f.caption) for f in fields], n),
        "format": (format_all, n),
    }
    for fn, _ in fns.values():  # caches (phrase ids, OpenCV import) are not per-example
        fn()
    ms = {k: v * 1e3 for k, v in _best_of_interleaved(fns).items()}
    ms["floor"] = sum(ms[k] for k in ("read", "parse", "decode", "resize", "tokenize"))
    return ms


def _threaded_rate(fn, items: list, threads: int, seconds: float) -> float:
    """Items/s of fn(item) over all items, repeated, in `threads` Python threads at once."""
    import threading

    counts = [0] * threads
    stop = time.perf_counter() + seconds

    def loop(k: int) -> None:
        while time.perf_counter() < stop:
            for item in items:
                fn(item)
            counts[k] += len(items)

    workers = [threading.Thread(target=loop, args=(k,)) for k in range(threads)]
    t = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(counts) / (time.perf_counter() - t)


def scaling_breakdown(records: list[bytes], tok, seconds: float = 1.0) -> dict[str, float]:
    """Why the wall rates fall short of the CPU ones: two measurements the wall figures hide.

    threads: items/s of each loader step (decode, resize, parse, format) and of the whole
    per-example transform in 1 and in 2 Python threads of one process (the in-process loader's
    parallelism): 2-thread / 1-thread speed-up per step, ~2 for the OpenCV calls (they release
    the GIL), ~1 for the Python ones. shm: ms to hand one 32 x 224 x 224 x 3 uint8 image batch to
    another process the way Grain's mp_prefetch does (`copy_to_shm`: a new shared-memory segment
    per batch, so every page is touched for the first time) against copying it into an existing
    array; per example it is what a worker pays on top of the in-process transform.
    """
    from grain._src.python.ipc import shared_memory_array  # Grain's own transfer (0.2.18)

    transform = data.ExampleTransform(_config(), tok)
    fields = [record_lib.decode_training_fields(r) for r in records]
    blobs = [f.image for f in fields]
    images = [pp.decode_image(b, SIZE) for b in blobs]
    rng = np.random.default_rng(0)
    rngs = data._ThreadRngs(0)  # one generator per thread, as the loader's BatchTransform

    steps = {
        "decode": (lambda b: pp.decode_image(b, SIZE), blobs),
        "resize": (lambda im: pp.resize(im, SIZE, fast=True), images),
        "parse": (record_lib.decode_training_fields, records),
        "format": (lambda f: _format(tok, rng, f), fields),
        "transform": (lambda r: transform.random_map(r, rngs.at(0)), records),
    }
    out = {}
    for name, (fn, items) in steps.items():
        for item in items[:4]:
            fn(item)
        one = _threaded_rate(fn, items, 1, seconds)
        two = _threaded_rate(fn, items, 2, seconds)
        out[name] = two / one
    batch = np.random.default_rng(0).integers(0, 255, (32, SIZE, SIZE, 3), dtype=np.uint8)
    into = np.empty_like(batch)
    shm, copy = float("inf"), float("inf")
    for _ in range(5):
        t = time.perf_counter()
        metas = [shared_memory_array.copy_to_shm(batch) for _ in range(10)]
        shm = min(shm, (time.perf_counter() - t) / 10)
        shared_memory_array.unlink_shm(metas)
        t = time.perf_counter()
        for _ in range(10):
            np.copyto(into, batch)
        copy = min(copy, (time.perf_counter() - t) / 10)
    out["shm_ms"], out["copy_ms"] = shm * 1e3, copy * 1e3
    return out


def _print_scaling(name: str, s: dict[str, float]) -> None:
    steps = ", ".join(f"{k} {s[k]:.2f}x" for k in ("decode", "resize", "parse", "format"))
    print(
        f"{name:4s} scaling: 2 threads vs 1 in one process: {steps}; whole transform "
        f"{s['transform']:.2f}x. Batch handed to another process: Grain copy_to_shm "
        f"{s['shm_ms']:.2f} ms vs copy into an existing array {s['copy_ms']:.2f} ms "
        f"({s['shm_ms'] / 32:.3f} ms/example)",
        flush=True,
    )


def _print_breakdown(name: str, ms: dict[str, float], resize: bool) -> None:
    """resize: the raw reference includes the resize (full-size photos), as in the wall figures."""
    steps = ", ".join(
        f"{k} {ms[k]:.3f}" for k in ("read", "parse", "decode", "resize", "tokenize", "format")
    )
    ref = ms["decode"] + (ms["resize"] if resize else 0.0)
    what = "decode + resize" if resize else "decode only"
    print(
        f"{name:4s} floor: CPU ms/example {steps}; floor (read+parse+decode+resize+tokenize) "
        f"{ms['floor']:.3f}: best possible CPU ratio vs {what} {ref / ms['floor']:.2f}",
        flush=True,
    )


def pipeline_rate(
    paths: str, tok, workers: int, overrides: dict, seconds: float = 2.0, batch: int = 32
) -> float:
    """Wall examples/s of make_train_iter, after draining more batches than it can buffer."""
    cfg = _config(paths=paths, **overrides)
    it = data.make_train_iter(
        cfg,
        tok,
        per_process_batch=batch,
        seed=0,
        process_index=0,
        process_count=1,
        num_workers=workers,
    )
    # Each process's (or worker's) reader keeps up to prefetch_batches batches ready or in flight
    # (Grain 0.2.18's PrefetchDatasetIterator) and mp_prefetch one more per worker; draining
    # prefetch_batches x read_threads (x workers) + workers + 2, several times that, before the
    # clock starts means every timed batch was made while the clock ran.
    readers = max(int(cfg.read_threads), 1) * max(workers, 1)
    warmup = int(cfg.prefetch_batches) * readers + max(workers, 1) + 2
    try:
        for _ in range(warmup):
            next(it)
        n, t = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - t) < seconds:
            b = next(it)
            n += 1
        assert b["image"].shape == (batch, SIZE, SIZE, 3)
        return n * batch / elapsed
    finally:
        if workers:
            it.close()


def _print_cpu(name: str, setting: str, ms: dict[str, float]) -> None:
    nodct = f" (no DCT scaling: {ms['raw_pillow_nodct']:.3f})" if "raw_pillow_nodct" in ms else ""
    print(
        f"{name:4s} {setting}: CPU ms/example (1 process): raw pillow {ms['raw_pillow']:.3f}"
        f"{nodct}, raw opencv {ms['raw_opencv']:.3f}, transform {ms['transform']:.3f}, "
        f"pipeline {ms['pipeline']:.3f}, per-example graph {ms['per_example']:.3f}; "
        f"CPU ratio pipeline vs pillow {ms['raw_pillow'] / ms['pipeline']:.2f}, vs opencv "
        f"{ms['raw_opencv'] / ms['pipeline']:.2f} (transform alone: "
        f"{ms['raw_pillow'] / ms['transform']:.2f} / {ms['raw_opencv'] / ms['transform']:.2f};"
        f" per-example graph: {ms['raw_pillow'] / ms['per_example']:.2f} / "
        f"{ms['raw_opencv'] / ms['per_example']:.2f})",
        flush=True,
    )


def _print_wall(name: str, setting: str, workers: int, rates: dict[str, list[float]]) -> None:
    """Best-of-rounds rates, and per loader the ratios: best / best and median of paired rounds."""
    best = {k: max(v) for k, v in rates.items()}
    head = (
        f"{name:4s} {setting}: wall on {workers} cores, {len(rates['pillow'])} rounds: raw "
        f"pillow {workers} processes {best['pillow']:.0f}/s, raw opencv {best['opencv']:.0f}"
        "/s (best)"
    )
    print(head, flush=True)
    for k in rates:
        if k in DECODERS:
            continue
        label = f"{workers} workers" if k == "pipeline" else f"1 process, {k[7:]} read threads"
        parts = []
        for d in DECODERS:
            paired = np.median([p / r for p, r in zip(rates[k], rates[d], strict=True)])
            parts.append(f"vs {d} {best[k] / best[d]:.2f} (paired median {paired:.2f})")
        print(
            f"     {label}: {best[k]:.0f}/s best; ratio best/best " + ", ".join(parts), flush=True
        )
    runs = "; ".join(f"{k} " + ", ".join(f"{x:.0f}" for x in v) for k, v in rates.items())
    print(f"     rounds: {runs}; load average {os.getloadavg()[0]:.1f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2, help="cores: raw processes, pipeline workers")
    ap.add_argument("--seconds", type=float, default=2.0, help="minimum timed wall per side")
    ap.add_argument("--copies", type=int, default=52, help="times the shard is listed (see top)")
    ap.add_argument("--settings", default="default", help=f"comma-separated, of {list(SETTINGS)}")
    ap.add_argument(
        "--variants",
        default="224,320,full",
        help="annotate --store_max_side values, comma-separated; 'full' = 0",
    )
    ap.add_argument("--rounds", type=int, default=3, help="interleaved wall rounds")
    ap.add_argument(
        "--threads",
        default="2,4",
        help="read_threads of the in-process (num_workers=0) wall runs; '' for none",
    )
    args = ap.parse_args()
    if not COCO.exists():
        raise SystemExit(f"loader_throughput: {COCO} not found; it needs ../shared/data/coco-mini")
    from absl import flags

    flags.FLAGS.mark_as_parsed()
    print(f"load average {os.getloadavg()[0]:.1f} at start", flush=True)
    threads = tuple(int(t) for t in args.threads.split(",") if t.strip())
    with tempfile.TemporaryDirectory() as tmp:
        tok = None
        for name in args.variants.split(","):
            store_max_side = 0 if name == "full" else int(name)
            records = _records(store_max_side)
            path = Path(tmp) / f"{name}.array_record"
            writer = ArrayRecordWriter(str(path), "group_size:1")
            for r in records:
                writer.write(r)
            writer.close()
            paths = ",".join([str(path)] * args.copies)
            if tok is None:
                texts = [record_lib.decode(r).caption for r in records] + ["cap aref gcap :"] * 9
                tok = tokenizer_lib.Tokenizer(tokenizer_lib.train_model(texts, 1600))
            decoded = [record_lib.decode(r) for r in records]
            blobs = [d.image for d in decoded]
            sizes = {(d.width, d.height) for d in decoded}
            common = max(sizes, key=[(d.width, d.height) for d in decoded].count)
            print(
                f"{name:4s}: store_max_side {store_max_side}, {len(blobs)} images, "
                f"{np.mean([len(b) for b in blobs]) / 1e3:.1f} kB mean, most common "
                f"{common[0]}x{common[1]} ({len(sizes)} sizes)",
                flush=True,
            )
            # Stored variants: decode only; full size: decode + resize to 224 (see the top).
            resize = store_max_side == 0
            _print_breakdown(name, cpu_breakdown(records, paths, tok), resize)
            _print_scaling(name, scaling_breakdown(records, tok))
            for setting in args.settings.split(","):
                overrides = SETTINGS[setting]
                _print_cpu(
                    name, setting, cpu_ms_per_example(records, paths, tok, resize, overrides)
                )
                rates = wall_rates(
                    blobs,
                    resize,
                    paths,
                    tok,
                    args.workers,
                    overrides,
                    args.rounds,
                    threads,
                    args.seconds,
                )
                _print_wall(name, setting, args.workers, rates)


if __name__ == "__main__":
    main()
