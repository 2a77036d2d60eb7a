"""The annotate DoFns' one output: (tag, value) pairs, split into branches by plain steps.

A multi-output ParDo (Beam's `TaggedOutput` + `with_outputs`) is routed wrongly by Beam 2.77's
DaskRunner: every consumer of any of the step's outputs gets all of them. So each DoFn of the
pipeline has a single main output of `(tag, value)` pairs, and a branch is a `FlatMap(values_of,
TAG)` over it, which every runner executes the same way. `FACTS` are the small pairs the manifest
is built from (manifest.ManifestFn); the others carry data (samples, batches, records).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

SAMPLES = "samples"  # a list of RawSample from one input file (at most --max_batch_size)
PREPARED = "prepared"  # a list of stages.Prepared: one labeler batch
RECORD = "record"  # (shard index, (record key, serialized record))
DEAD = "dead"  # a DeadLetter
READ = "read"  # units read from one file (records + dead letters)
NOTE = "note"  # a kept-but-changed sample or a dropped labeler candidate, by kind
FILTERED = "filtered"  # a reason string: dropped on purpose (--require_boxes)
SUMMARY = "summary"  # one written record's box statistics (manifest.record_summary)
LABELER = "labeler"  # the labeler fingerprint of one written record
PREVIEW = "preview"  # (hash rank, record bytes): preview candidates
SHARD = "shard"  # (shard index, records written to it)
DEAD_WRITTEN = "dead_written"  # {reason: count} of the dead letters written to dead_letters.jsonl

FACTS = frozenset({READ, NOTE, FILTERED, SUMMARY, LABELER, PREVIEW, SHARD, DEAD_WRITTEN})


def values_of(item: tuple[str, Any], tag: str) -> Iterator[Any]:
    """FlatMap body: the value of a pair with this tag, nothing for any other pair."""
    if item[0] == tag:
        yield item[1]


def is_fact(item: tuple[str, Any]) -> bool:
    return item[0] in FACTS
