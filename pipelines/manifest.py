"""The run's manifest: counts that add up, box statistics, configuration, labeler, shard list.

`BoxStatsFn` is a mergeable Beam CombineFn over per-record summaries, so the statistics cost one small
accumulator per worker at any scale. `build_manifest` assembles the JSON document and checks the
invariant `read == written + dead_lettered + filtered`; `write_json` writes it atomically through
Beam FileSystems (temp name, then rename).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems

SCORE_BINS = 10  # score histogram over [0, 1]
AREA_EDGES = (0.0, 0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0001)  # box area as a fraction of the image


def record_summary(scores: np.ndarray, boxes: np.ndarray, phrases: tuple[str, ...]) -> dict:
    """One record's regions -> the small dict BoxStatsFn accumulates."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return {
        "n": int(len(phrases)),
        "score_hist": np.histogram(np.clip(scores, 0, 1), SCORE_BINS, (0.0, 1.0))[0].tolist(),
        "area_hist": np.histogram(areas, AREA_EDGES)[0].tolist(),
        "phrase_words": [len(p.split()) for p in phrases],
    }


class BoxStatsFn(beam.CombineFn):
    """Accumulates boxes-per-image, score, area and phrase-length histograms."""

    def create_accumulator(self) -> dict:
        return {
            "images": 0,
            "boxes": 0,
            "per_image": {},
            "score_hist": [0] * SCORE_BINS,
            "area_hist": [0] * (len(AREA_EDGES) - 1),
            "phrase_words": {},
        }

    def add_input(self, acc: dict, s: dict) -> dict:
        acc["images"] += 1
        acc["boxes"] += s["n"]
        acc["per_image"][s["n"]] = acc["per_image"].get(s["n"], 0) + 1
        acc["score_hist"] = [a + b for a, b in zip(acc["score_hist"], s["score_hist"], strict=True)]
        acc["area_hist"] = [a + b for a, b in zip(acc["area_hist"], s["area_hist"], strict=True)]
        for w in s["phrase_words"]:
            acc["phrase_words"][w] = acc["phrase_words"].get(w, 0) + 1
        return acc

    def merge_accumulators(self, accs) -> dict:
        out = self.create_accumulator()
        for a in accs:
            out["images"] += a["images"]
            out["boxes"] += a["boxes"]
            for field in ("per_image", "phrase_words"):
                for k, v in a[field].items():
                    out[field][k] = out[field].get(k, 0) + v
            for field in ("score_hist", "area_hist"):
                out[field] = [x + y for x, y in zip(out[field], a[field], strict=True)]
        return out

    def extract_output(self, acc: dict) -> dict:
        return {
            "total": acc["boxes"],
            "images_with_boxes": sum(v for k, v in acc["per_image"].items() if k > 0),
            "mean_per_image": acc["boxes"] / acc["images"] if acc["images"] else 0.0,
            "per_image_histogram": {str(k): v for k, v in sorted(acc["per_image"].items())},
            "score_histogram": {"edges": np.linspace(0, 1, SCORE_BINS + 1).round(2).tolist(),
                                "counts": acc["score_hist"]},
            "area_histogram": {"edges": [round(e, 4) for e in AREA_EDGES[:-1]] + [1.0],
                               "counts": acc["area_hist"]},
            "phrase_words_histogram": {str(k): v for k, v in sorted(acc["phrase_words"].items())},
        }


def build_manifest(
    *,
    read: int,
    shards: list[dict],
    dead_lettered: dict[str, int],
    filtered: dict[str, int],
    boxes: dict,
    config: dict[str, Any],
    labelers: list[str],
    notes: dict[str, int],
) -> dict:
    """The manifest document. `balanced` is the read = written + dead + filtered check."""
    written = sum(s["records"] for s in shards)
    dead = sum(dead_lettered.values())
    filt = sum(filtered.values())
    return {
        "schema_version": 1,
        "counts": {
            "read": read,
            "written": written,
            "dead_lettered": dead,
            "filtered": filt,
            "balanced": read == written + dead + filt,
            "dead_lettered_by_reason": dict(sorted(dead_lettered.items())),
            "filtered_by_reason": dict(sorted(filtered.items())),
            "notes": dict(sorted(notes.items())),
        },
        "boxes": boxes,
        "labeler": labelers[0] if len(labelers) == 1 else labelers,
        "shards": shards,
        "config": config,
    }


def write_atomic(path: str, payload: bytes) -> None:
    """Writes `payload` at `path` via a temp name + rename, on any Beam filesystem: a reader
    never sees half a file, and a retried write replaces the earlier one."""
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    with FileSystems.create(tmp) as f:
        f.write(payload)
    if FileSystems.exists(path):
        FileSystems.delete([path])
    FileSystems.rename([tmp], [path])


def write_json(path: str, document: Any) -> None:
    """Writes JSON at `path` atomically (write_atomic)."""
    write_atomic(path, json.dumps(document, indent=2, sort_keys=False, default=str).encode("utf-8"))
