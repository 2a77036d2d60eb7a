"""Checkpoint sanity numbers without running the model: parameter count and RMS per top-level
group ("img", "txt"). Cheap (no compilation), so it is also what the watch tests exercise; a NaN or
an exploding RMS here flags a broken checkpoint before the costly evaluators run.
Yields "{group}/rms", "{group}/count", "all/nonfinite".
"""

from __future__ import annotations

from collections.abc import Iterator

import jax
import ml_collections
import numpy as np

from evaluation.evaluators import base
from evaluation.train_run import TrainRun


class Evaluator:
    def __init__(self, config: ml_collections.ConfigDict, run: TrainRun, shared: dict):
        del config, run, shared

    def run(self, ctx: base.StepContext) -> Iterator[tuple[str, float]]:
        nonfinite = 0
        for group, tree in sorted(ctx.params.items()):
            leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]
            count = sum(x.size for x in leaves)
            nonfinite += sum(int((~np.isfinite(x)).sum()) for x in leaves)
            sq = sum(float(np.square(np.nan_to_num(x)).sum()) for x in leaves)
            yield f"{group}/rms", (sq / max(count, 1)) ** 0.5
            yield f"{group}/count", float(count)
        yield "all/nonfinite", float(nonfinite)
