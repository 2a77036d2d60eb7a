"""Weighted mixtures of named shard sets (e.g. GRIT 0.5, Visual Genome 0.2, web 0.3).

Config: `data.mixture = (("grit", "gs://B/grit/train-*.array_record", 0.5), ("vg", ..., 0.2),
...)`: a name, a shard glob and a weight per source; an empty tuple trains on `data.train_glob`.

Mixing is Grain's own (`grain.MapDataset.mix`): each source is shuffled and repeated on its own,
then the mixture takes source i at a fixed, deterministic interleave in proportion to the weights
(Grain scales them to integers, the smallest to 100). So the mixture is a MapDataset like the
single-source pipeline: its iterator state is a position, and resume is exact. Because the
interleave is fixed, how many examples of each source the first K global positions hold is a
closed form (`examples_seen`); the trainer logs it as `examples_seen/<name>`, exact across
restarts without extra checkpoint state. Each batch also carries `source` int32[B] (the source
index of each example, from the record's position in the concatenated shard list).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class Part:
    name: str
    paths: tuple[str, ...]
    weight: float


def parts(config: Any, expand_paths, error: type[Exception]) -> list[Part]:
    """data.mixture -> the checked parts (globs expanded); [] when there is no mixture."""
    spec = config.get("mixture") or ()
    out: list[Part] = []
    for entry in spec:
        if len(entry) != 3:
            raise error(f"data.mixture entry {entry!r} must be (name, shard_glob, weight)")
        name, glob, weight = str(entry[0]), entry[1], float(entry[2])
        if not weight > 0:
            raise error(f"data.mixture weight of {name!r} must be > 0, got {entry[2]!r}")
        if any(p.name == name for p in out):
            raise error(f"data.mixture names {name!r} twice; give each source its own name")
        out.append(Part(name, tuple(expand_paths(glob)), weight))
    return out


def int_proportions(weights: Sequence[float]) -> list[int]:
    """The integer proportions Grain's mix uses for these weights (smallest scaled to 100)."""
    scale = 100 / min(weights)
    return [int(w * scale) for w in weights]


def examples_seen(weights: Sequence[float], positions: int) -> list[int]:
    """How many of the mixture's first `positions` elements come from each source.

    The counting form of Grain 0.2.18's interleave (mix._dataset_and_key_of_next_element): source
    i takes, of the positions left to sources i, i+1, ..., those where floor(k * (rest - p_i) /
    rest) steps; tests/test_mixture.py checks it against the mixed dataset itself.
    """
    props = int_proportions(weights)
    remaining, k, counts = sum(props), positions, []
    for p in props:
        nxt = (k * (remaining - p)) // remaining
        counts.append(k - nxt)
        remaining -= p
        k = nxt
    return counts


def mixed_indices(part_list: list[Part], sizes: list[int], *, seed: int, shuffle: bool,
                  num_epochs: int | None):
    """Record indices into the concatenated shard list, mixed by weight (a grain.MapDataset).

    sizes: records per part. Each part is shuffled (seeded per part) and repeated on its own.
    """
    import grain

    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    datasets = []
    for i, n in enumerate(sizes):
        if n == 0:
            raise ValueError(f"data.mixture source {part_list[i].name!r} has no records")
        ds = grain.MapDataset.range(int(offsets[i]), int(offsets[i + 1])).seed(seed + 7919 * i)
        if shuffle:
            ds = ds.shuffle()
        datasets.append(ds.repeat(num_epochs))
    return grain.MapDataset.mix(datasets, [p.weight for p in part_list]), offsets[:-1]


def source_of(records: Sequence[int], offsets: np.ndarray) -> np.ndarray:
    """Record indices into the concatenated shards -> int32[B] source index of each."""
    return (np.searchsorted(offsets, np.asarray(records), side="right") - 1).astype(np.int32)
