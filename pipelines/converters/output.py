"""Where converted samples go: webdataset tars in img2dataset's layout, plus a report that adds up.

Per sample `{key}.jpg` (the original image bytes, not re-encoded; `.png` for PNG files),
`{key}.json` and `{key}.txt`, in that order, as the sample corpus writes them
(pipelines/corpus/web.py); `shard-00000.tar`, ... of `shard_size` samples each. The JSON carries
img2dataset's fields (key, caption, width, height, status) and the ground truth the `reference`
labeler reads: `regions = [{"bbox": [ymin, xmin, ymax, xmax] normalized, "phrase", "names"}]`.

Every input image is counted once as written or dead-lettered (by reason, also in
`dead_letters.jsonl`), and every input region as kept or dropped (by reason): `convert.json` holds
both tallies and `read == written + dead_lettered`.
"""

from __future__ import annotations

import collections
import json
import math
from pathlib import Path
from typing import Any

from pipelines.corpus import writers

# A box may overhang its image by a rounding error; beyond this many pixels it is invalid.
BOX_SLACK_PX = 1.0


def box_problem(xywh: list[Any], width: float, height: float) -> str | None:
    """Why a pixel [x, y, w, h] box cannot be a region (None: it can)."""
    try:
        x, y, w, h = (float(v) for v in xywh)
    except (TypeError, ValueError):
        return "box_not_numeric"
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return "box_not_finite"
    if w <= 0 or h <= 0:
        return "box_empty"
    s = BOX_SLACK_PX
    if x < -s or y < -s or x + w > width + s or y + h > height + s:
        return "box_outside_image"
    return None


class SampleWriter:
    """Collects samples into tar shards and tallies what was written and dropped."""

    def __init__(self, out_dir: str | Path, shard_size: int, source: str):
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.shard_size, self.source = shard_size, source
        self.members: list[tuple[str, bytes]] = []
        self.shards: list[str] = []
        self.read = self.written = self.regions = 0
        self.dead: collections.Counter = collections.Counter()
        self.dropped: collections.Counter = collections.Counter()
        self._dead_file = (self.out / "dead_letters.jsonl").open("w")

    def dead_letter(self, source: str, reason: str, detail: str = "") -> None:
        self.read += 1
        self.dead[reason] += 1
        self._dead_file.write(json.dumps({"source": source, "reason": reason,
                                          "detail": detail[:300]}) + "\n")

    def drop_region(self, reason: str) -> None:
        self.dropped[reason] += 1

    def add(self, key: str, image: bytes, ext: str, caption: str, meta: dict[str, Any]) -> None:
        """One sample; meta must hold `regions` (and whatever else the source offers)."""
        self.read += 1
        self.written += 1
        self.regions += len(meta["regions"])
        meta = {"key": key, "caption": caption, "status": "success", "error_message": None,
                "box_source": self.source} | meta
        self.members += [(f"{key}.{ext}", image),
                         (f"{key}.json", writers.dumps(meta).encode("utf-8")),
                         (f"{key}.txt", caption.encode("utf-8"))]
        if self.written % self.shard_size == 0:
            self._flush()

    def _flush(self) -> None:
        if self.members:
            path = self.out / f"shard-{len(self.shards):05d}.tar"
            writers.write_tar(path, self.members)
            self.shards.append(path.name)
            self.members = []

    def close(self, config: dict[str, Any]) -> dict[str, Any]:
        """Writes the last shard and `convert.json`; returns that report."""
        self._flush()
        self._dead_file.close()
        dead = sum(self.dead.values())
        report = {
            "source": self.source,
            "counts": {"read": self.read, "written": self.written, "dead_lettered": dead,
                       "dead_by_reason": dict(sorted(self.dead.items())),
                       "balanced": self.read == self.written + dead},
            "regions": {"written": self.regions, "dropped": sum(self.dropped.values()),
                        "dropped_by_reason": dict(sorted(self.dropped.items()))},
            "shards": self.shards,
            "config": config,
        }
        writers.write_json(self.out / "convert.json", report)
        return report


def image_ext(path: Path) -> str:
    """The webdataset extension for an image file (the annotate reader takes jpg/png/webp)."""
    ext = path.suffix.lower().lstrip(".")
    return "jpg" if ext in ("jpg", "jpeg") else ext
