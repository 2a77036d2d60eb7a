"""Undecodable training records: skipped the same way every time, counted, and a stop past a rate.

At billions of records read over object storage for weeks, one record that does not parse (or
whose image does not decode) must not end a pod run. The loader turns it into an example with a
blank image and all-zero loss masks ("bad": True): it keeps its slot in the batch, so batch shapes,
the example order and every later rng are unchanged and a resumed run sees exactly the same
batches; it adds nothing to the loss. The trainer counts them per logging step (`data/bad_records`
in metrics.jsonl) and stops with one line when, since the run (re)started, they exceed
`data.max_bad_fraction` of the examples read (one bad record is always allowed, so the first
batch does not decide alone).

Example fields added here: "bad" bool (per example; bool[B] per batch) and "bad_reason" str.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from model import tasks
from training import preprocess as pp


def mark_good(example: dict[str, Any]) -> dict[str, Any]:
    example["bad"] = False
    example["bad_reason"] = ""
    return example


def empty_example(transform: Any, rng: np.random.Generator, reason: str) -> dict[str, Any]:
    """What an undecodable record trains as: same keys, shapes and dtypes, no loss."""
    size = transform.fused_resize or next(op.size for op in transform.ops
                                          if isinstance(op, pp.Resize))
    features = {"image": np.zeros((size, size, 3), np.uint8), "boxes": np.zeros((0, 4), np.float32),
                "phrases": [], "caption": ""}
    # Only dtype/range ops: a crop or flip of a blank image is the blank image.
    features = pp.apply([op for op in transform.ops if isinstance(op, pp.ValueRange)], features, rng)
    out = tasks.format_example(transform.tokenizer, rng, caption="", boxes=features["boxes"],
                               phrases=[], max_len=transform.text_len, task_mix=transform.task_mix,
                               task_weights=transform.task_weights,
                               regions_per_task=transform.regions_per_task,
                               aref_unambiguous=transform.aref_unambiguous,
                               aref_regions=transform.aref_regions)
    for key in out:
        if key.endswith("/loss_mask"):
            out[key] = np.zeros_like(out[key])
    out["image"] = features["image"]
    out["bad"] = True
    out["bad_reason"] = reason[:300]
    return out


class BadRecordBudget:
    """Counts bad examples this process read since (re)start; raises past the allowed fraction."""

    def __init__(self, max_fraction: float):
        if not 0.0 <= float(max_fraction) <= 1.0:
            raise SystemExit(f"--config.data.max_bad_fraction must be in [0, 1], got {max_fraction}")
        self.max_fraction = float(max_fraction)
        self.seen = 0
        self.bad = 0
        self.since_log = 0
        self.first_reason = ""

    def add(self, batch: dict[str, np.ndarray], step: int) -> None:
        """Takes "bad" / "bad_reason" out of a host batch and counts them."""
        bad = np.asarray(batch.pop("bad", np.zeros(0, bool)), bool)
        reasons = batch.pop("bad_reason", None)
        self.seen += int(bad.size)
        n = int(bad.sum())
        self.bad += n
        self.since_log += n
        if n and not self.first_reason and reasons is not None:
            self.first_reason = str(np.asarray(reasons)[bad][0])
        if self.bad > max(1.0, self.max_fraction * self.seen):
            raise SystemExit(
                f"stopping at step {step}: {self.bad} of {self.seen} training records read since "
                f"the start could not be decoded, more than data.max_bad_fraction="
                f"{self.max_fraction:g} (first: {self.first_reason}); check the shards or raise it")

    def take_count(self) -> int:
        """Bad examples since the last call (the metrics row's data/bad_records)."""
        n, self.since_log = self.since_log, 0
        return n
