"""The run's manifest: counts that add up, box statistics, configuration, labeler, shard list.

`ManifestFn` is one mergeable Beam CombineFn over the pipeline's facts (pipelines/tags.py: units
read, dead letters written by reason, filtered, notes, per-record box summaries via `BoxStatsFn`,
labeler fingerprints, preview candidates, shard counts), so the whole manifest costs one small
accumulator per worker at any scale and reaches the last step as its one main input (no side
inputs, which Beam 2.77's DaskRunner computes again inside the consuming task). `build_manifest`
assembles the JSON document and checks the invariant `read == written + dead_lettered + filtered`;
`write_json` writes it atomically through Beam FileSystems (temp name, then rename).
"""

from __future__ import annotations

import heapq
import json
import uuid
from collections.abc import Iterable
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems

from pipelines import shard_sink, tags

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


def _add_counts(into: dict[str, int], counts: dict[str, int]) -> None:
    for k, v in counts.items():
        into[k] = into.get(k, 0) + v


class ManifestFn(beam.CombineFn):
    """(tag, value) facts -> everything Finalize needs, as one dict: `read`, `dead_lettered`,
    `filtered` and `notes` (by reason), `boxes` (BoxStatsFn's output), `labelers` (sorted),
    `previews` (the `preview_size` smallest (rank, record) pairs, sorted), `shards` ({index:
    records}), `dead_letters_written` (whether dead_letters.jsonl was written)."""

    def __init__(self, preview_size: int):
        self._n = preview_size
        self._boxes = BoxStatsFn()

    def create_accumulator(self) -> dict:
        return {"read": 0, "dead": {}, "filtered": {}, "notes": {}, "dead_written": False,
                "boxes": self._boxes.create_accumulator(), "labelers": set(), "previews": [],
                "shards": {}}

    def _keep_previews(self, acc: dict) -> None:
        if len(acc["previews"]) > 2 * self._n:  # trim now and then, not at every record
            acc["previews"] = heapq.nsmallest(self._n, acc["previews"])

    def add_input(self, acc: dict, fact: tuple[str, Any]) -> dict:
        tag, value = fact
        if tag == tags.READ:
            acc["read"] += value
        elif tag == tags.DEAD_WRITTEN:
            _add_counts(acc["dead"], value)
            acc["dead_written"] = True
        elif tag in (tags.FILTERED, tags.NOTE):
            _add_counts(acc["filtered" if tag == tags.FILTERED else "notes"], {value: 1})
        elif tag == tags.SUMMARY:
            acc["boxes"] = self._boxes.add_input(acc["boxes"], value)
        elif tag == tags.LABELER:
            acc["labelers"].add(value)
        elif tag == tags.PREVIEW:
            acc["previews"].append(value)
            self._keep_previews(acc)
        elif tag == tags.SHARD:
            index, count = value  # a retried shard write reports the same count twice
            acc["shards"][index] = max(acc["shards"].get(index, 0), count)
        else:
            raise ValueError(f"not a manifest fact: {tag!r}")
        return acc

    def merge_accumulators(self, accs: Iterable[dict]) -> dict:
        out = self.create_accumulator()
        accs = list(accs)
        for a in accs:
            out["read"] += a["read"]
            for field in ("dead", "filtered", "notes"):
                _add_counts(out[field], a[field])
            out["dead_written"] |= a["dead_written"]
            out["labelers"] |= a["labelers"]
            out["previews"] += a["previews"]
            self._keep_previews(out)
            for index, count in a["shards"].items():
                out["shards"][index] = max(out["shards"].get(index, 0), count)
        out["boxes"] = self._boxes.merge_accumulators([a["boxes"] for a in accs])
        return out

    def extract_output(self, acc: dict) -> dict:
        return {"read": acc["read"], "dead_lettered": acc["dead"], "filtered": acc["filtered"],
                "notes": acc["notes"], "dead_letters_written": acc["dead_written"],
                "boxes": self._boxes.extract_output(acc["boxes"]),
                "labelers": sorted(acc["labelers"]),
                "previews": sorted(heapq.nsmallest(self._n, acc["previews"])),
                "shards": acc["shards"]}


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


def write_atomic(path: str, payload: bytes | Iterable[bytes]) -> None:
    """Writes `payload` (bytes, or chunks of it, streamed) at `path` via a temp name + rename, on
    any Beam filesystem (in place on an object store: shard_sink.writes_in_place): a reader
    never sees half a file, and a retried write replaces the earlier one."""
    tmp = path if shard_sink.writes_in_place(path) else f"{path}.tmp-{uuid.uuid4().hex}"
    with FileSystems.create(tmp) as f:
        for chunk in [payload] if isinstance(payload, bytes) else payload:
            f.write(chunk)
    if tmp == path:
        return
    if FileSystems.exists(path):
        FileSystems.delete([path])
    FileSystems.rename([tmp], [path])


def write_json(path: str, document: Any) -> None:
    """Writes JSON at `path` atomically (write_atomic)."""
    write_atomic(path, json.dumps(document, indent=2, sort_keys=False, default=str).encode("utf-8"))
