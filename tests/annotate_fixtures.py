"""Tiny inputs for the annotate-stage tests: webdataset tars, parquet and TFRecord files built in a
tmp dir, with coloured-rectangle images whose ground-truth regions ship in the sample JSON."""

from __future__ import annotations

import io
import json
import struct
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

COLORS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 160, 60)}
SHAPES = ("square", "block", "tile")


def scene(index: int, size: tuple[int, int] = (96, 128)) -> tuple[bytes, str, dict]:
    """(jpeg, alt-text, metadata) of a synthetic image with 1-3 rectangles named in the alt-text."""
    rng = np.random.default_rng(index)
    h, w = size
    im = np.full((h, w, 3), 235, np.uint8)
    regions, words = [], []
    n = 1 + index % 3
    for k in range(n):
        color = list(COLORS)[(index + k) % len(COLORS)]
        shape = SHAPES[(index + k) % len(SHAPES)]
        # Objects sit in separate horizontal slots, so they never overlap (NMS keeps all of them).
        x0 = int(k * w / 3 + rng.integers(2, 8))
        x1 = int((k + 1) * w / 3 - rng.integers(2, 8))
        y0, y1 = int(rng.integers(5, h // 3)), int(rng.integers(2 * h // 3, h - 5))
        im[y0:y1, x0:x1] = COLORS[color]
        regions.append({"bbox": [y0 / h, x0 / w, y1 / h, x1 / w], "phrase": f"{color} {shape}",
                        "names": [f"{color} {shape}", shape, f"big {color} {shape}"]})
        words.append(f"a {color} {shape}")
    caption = "Stock photo: " + " and ".join(words) + " on a grey wall"
    buf = io.BytesIO()
    Image.fromarray(im).save(buf, "JPEG", quality=92)
    return buf.getvalue(), caption, {"key": f"{index:09d}", "regions": regions}


def jpeg(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", **kw)
    return buf.getvalue()


def png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def write_tar(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> Path:
    """samples: (key, {ext: bytes}) in order; members are written as `{key}.{ext}`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for key, parts in samples:
            for ext, data in parts.items():
                add_member(tar, f"{key}.{ext}", data)
    return path


def clean_samples(start: int, count: int,
                  size: tuple[int, int] = (96, 128)) -> list[tuple[str, dict[str, bytes]]]:
    out = []
    for i in range(start, start + count):
        image, caption, meta = scene(i, size)
        out.append((f"{i:09d}", {"jpg": image, "txt": caption.encode(), "json":
                                 json.dumps(meta).encode()}))
    return out


def write_tfrecord(path: Path, payloads: list[bytes]) -> Path:
    """TFRecord framing: the length's masked CRC as TensorFlow writes it (the reader checks it),
    zero for the data's (not checked)."""
    from pipelines.sources import masked_crc32c

    with open(path, "wb") as f:
        for p in payloads:
            length = struct.pack("<Q", len(p))
            f.write(length + struct.pack("<I", masked_crc32c(length)) + p + b"\0" * 4)
    return path


def load_shards(out_dir: Path):
    """All records of all shards in out_dir, decoded with pipelines.record."""
    return load_shards_of(sorted(out_dir.glob("*.array_record")))


def load_shards_of(shards):
    """The records of these shard files, in file order, decoded with pipelines.record."""
    from array_record.python.array_record_module import ArrayRecordReader

    from pipelines import record

    recs = []
    for shard in shards:
        reader = ArrayRecordReader(str(shard))
        recs += [record.decode(r) for r in reader.read_all()]
        reader.close()
    return recs
