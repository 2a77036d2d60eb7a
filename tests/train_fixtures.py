"""A tiny learnable corpus (shards + tokenizer) for smoke tests of the trainer: no network, seconds.

Each image is a grey canvas with 1-2 coloured rectangles; the caption names them ("a red box and a
blue box") and each rectangle is a region whose phrase is "<colour> box". Enough signal that the
Cap loss falls quickly and ARef learns where a named colour is.

    write_shards("/tmp/d", num_records=64)          # /tmp/d/train-0000{0,1}-of-00002.array_record
    write_tokenizer("/tmp/d/tok.model")
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from pipelines import record as record_lib

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220),
           "yellow": (230, 210, 40)}


def _example(rng: np.random.Generator, index: int, size: int) -> record_lib.Record:
    canvas = np.full((size, size, 3), 128, np.uint8)
    names = list(rng.choice(list(COLOURS), size=int(rng.integers(1, 3)), replace=False))
    boxes, phrases = [], []
    for name in names:
        h, w = rng.uniform(0.25, 0.5, size=2)
        y0, x0 = rng.uniform(0.0, 1.0 - h), rng.uniform(0.0, 1.0 - w)
        box = np.asarray([y0, x0, y0 + h, x0 + w], np.float32)
        py0, px0, py1, px1 = (box * size).astype(int)
        canvas[py0:py1, px0:px1] = COLOURS[name]
        boxes.append(box)
        phrases.append(f"{name} box")
    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, format="JPEG", quality=95)
    caption = " and ".join(f"a {p}" for p in phrases)
    return record_lib.Record(
        key=f"fake-{index:06d}", source="tests/train_fixtures.py", image=buf.getvalue(),
        height=size, width=size, caption=caption, boxes=np.stack(boxes),
        phrases=tuple(phrases), scores=np.ones(len(phrases), np.float32),
        query_ranks=np.arange(len(phrases), dtype=np.int64), labeler="fake",
    )


def write_shards(directory: str, *, num_records: int = 64, num_shards: int = 2, size: int = 64,
                 seed: int = 0) -> list[str]:
    """Writes `num_shards` ArrayRecord files of serialized records; returns their paths."""
    from array_record.python.array_record_module import ArrayRecordWriter

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    records = [record_lib.encode(_example(rng, i, size)) for i in range(num_records)]
    paths = []
    for s in range(num_shards):
        path = out / f"train-{s:05d}-of-{num_shards:05d}.array_record"
        writer = ArrayRecordWriter(str(path), "group_size:1")
        for rec in records[s::num_shards]:
            writer.write(rec)
        writer.close()
        paths.append(str(path))
    return paths


def write_tokenizer(path: str, vocab_size: int = 1400) -> None:
    """A SentencePiece model over the fake captions with LocCa's specials and location tokens."""
    from model import tokenizer

    sentences = [f"a {c} box and a {d} box" for c in COLOURS for d in COLOURS]
    sentences += ["cap", "aref", "gcap", ":"] * 10
    tokenizer.save(tokenizer.train_model(sentences * 20, vocab_size), path)
