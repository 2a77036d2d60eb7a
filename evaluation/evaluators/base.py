"""The evaluator interface and the per-checkpoint context.

    evaluator = evaluators.base.build(type_name, config, run, shared)   # once per job
    for name, value in evaluator.run(ctx):                               # once per checkpoint
        ...  # name "split/metric" (e.g. "val/acc@0.5") or just "metric"

Evaluators load their data in __init__ (once per job, reused for every checkpoint of a watch job)
and report data problems (unknown ids, boxes outside the image, ...) as metrics named
"problems/<reason>" so they show up next to the scores instead of crashing the job.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import ml_collections
import numpy as np
from etils import epath

from evaluation.train_run import TrainRun


@dataclasses.dataclass
class StepContext:
    """One checkpoint under evaluation. params are restored on first use and shared by all
    evaluators of the step (an evaluator that reads only encoder.npz never triggers a restore)."""

    step: int
    step_dir: epath.Path
    run: TrainRun
    _params: Any = None

    @property
    def params(self) -> Any:
        if self._params is None:
            self._params = self.run.restore_params(self.step_dir)
        return self._params


class Evaluator(Protocol):
    def __init__(self, config: ml_collections.ConfigDict, run: TrainRun, shared: dict) -> None: ...

    def run(self, ctx: StepContext) -> Iterator[tuple[str, float]]: ...


def build(type_name: str, config: ml_collections.ConfigDict, run: TrainRun,
          shared: dict) -> Evaluator:
    """Imports evaluation.evaluators.<type_name> and builds its Evaluator. `shared` is a dict the
    evaluators of one job share (the image cache, the predictor) so they don't redo each other's
    work."""
    try:
        module = importlib.import_module(f"evaluation.evaluators.{type_name}")
    except ModuleNotFoundError as e:
        if e.name != f"evaluation.evaluators.{type_name}":
            raise
        raise ValueError(
            f"unknown evaluator type {type_name!r}: expected a module in evaluation/evaluators/"
        ) from None
    return module.Evaluator(config, run, shared)


def problems_metrics(problems: dict[str, int]) -> Iterator[tuple[str, float]]:
    for reason, count in sorted(problems.items()):
        yield f"problems/{reason}", float(count)


def shared_predictor(run: TrainRun, shared: dict, batch_size: int):
    """One Predictor (compiled functions) per job."""
    from evaluation.predict import Predictor

    key = ("predictor", batch_size)
    if key not in shared:
        shared[key] = Predictor(run.model, batch_size=batch_size, eos_id=run.tokenizer.eos_id,
                                pad_id=run.tokenizer.pad_id)
    return shared[key]


def shared_images(run: TrainRun, shared: dict):
    from evaluation.images import ImageCache

    if "images" not in shared:
        shared["images"] = ImageCache(int(run.model_config.image_size))
    return shared["images"]


def encoded_rows(paths: Sequence[str], encode: Callable[[list[str]], np.ndarray],
                 images_per_chunk: int) -> Iterator[tuple[list[int], np.ndarray]]:
    """Encodes each distinct image once, however many rows use it (a RefCOCO split has several
    expressions per image), in chunks of `images_per_chunk` images (sorted by path).

    paths: the image of each row; encode: image paths -> float[B, N, D].
    Yields, per chunk, (row indices, their encoded images float[R, N, D]); rows by path, then index.
    """
    rows_of: dict[str, list[int]] = defaultdict(list)
    for i, path in enumerate(paths):
        rows_of[path].append(i)
    unique = sorted(rows_of)
    for c in range(0, len(unique), images_per_chunk):
        chunk = unique[c : c + images_per_chunk]
        encoded = encode(chunk)
        rows = [i for p in chunk for i in rows_of[p]]
        yield rows, encoded[[j for j, p in enumerate(chunk) for _ in rows_of[p]]]
