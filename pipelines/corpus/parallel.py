"""Ordered map over sample indices, in this process or in spawned worker processes."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")


def ordered_map(
    fn: Callable[[int, int], T], seed: int, count: int, workers: int = 1
) -> Iterator[T]:
    """Yields fn(seed, i) for i in 0..count-1, in order.

    Every sample is a pure function of (seed, index), so the worker count never changes the output.
    `fn` must be a module-level function (it is pickled by name for the workers).
    """
    if workers <= 1 or count < 2:
        for i in range(count):
            yield fn(seed, i)
        return
    # spawn, not fork: the caller may have started threads (JAX, Beam) that fork would copy broken.
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        yield from pool.map(fn, [seed] * count, range(count), chunksize=16)
