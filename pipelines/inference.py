"""Beam RunInference glue: the element handed to the labeler and the ModelHandler that runs it.

The labeler is loaded once per worker process by `load_model` (RunInference's shared-model idiom) and
called on the batches stages.PrepareFn cut (`.with_no_batching()`: Beam's BatchElements emits its
last batch from finish_bundle, which Beam 2.77's DaskRunner drops). Decoding and validation happen
before, in a ParDo with its own dead letters, because a labeler error fails the whole batch: the
handler catches it and passes each sample on marked as a `stages.LabelerError` (RunInference's
own `with_exception_handling` routes errors through a tagged output, which the DaskRunner
mixes up). The OWL-ViT labeler is imported only when it is asked for, so the pipeline runs
without it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Sequence
from typing import Any

from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from pipelines.labelers.base import Detections, Labeler, LabelerInput
from pipelines.stages import LabelerError, Prepared, describe_error

LABELERS = ("reference", "owlvit", "grit")  # keep in step with pipelines.annotate.LABELERS


@dataclasses.dataclass(frozen=True)
class LabelerSpec:
    """What to load on each worker: a labeler name and, for owlvit, a checkpoint path or hub id;
    for grit, which span lists become regions."""

    name: str = "reference"
    checkpoint: str | None = None
    grit_spans: str = "noun_chunks"


def load_labeler(spec: LabelerSpec) -> Labeler:
    """Builds the labeler; raises SystemExit with the fix when it cannot."""
    if spec.name == "reference":
        from pipelines.labelers.reference import ReferenceLabeler

        return ReferenceLabeler()
    if spec.name == "grit":
        from pipelines.labelers.grit import GritLabeler

        return GritLabeler(spec.grit_spans)
    if spec.name == "owlvit":
        try:
            from pipelines.owlvit.labeler import OwlVitLabeler
        except ImportError as e:
            raise SystemExit(
                f"annotate: --labeler=owlvit needs pipelines.owlvit ({e}); install the [annotate] "
                "extra or use --labeler=reference"
            ) from None
        if not spec.checkpoint:
            raise SystemExit("annotate: --labeler=owlvit needs --owlvit_checkpoint PATH_OR_HUB_ID")
        return OwlVitLabeler.from_checkpoint(spec.checkpoint)
    raise SystemExit(f"annotate: unknown --labeler {spec.name!r}; use one of {LABELERS}")


class LabelerModelHandler(ModelHandler[Prepared, PredictionResult, Labeler]):
    """RunInference handler (use `.with_no_batching()` on PrepareFn's batches): Prepared ->
    PredictionResult(example, (Detections, fingerprint)), or (example, LabelerError) for every
    sample of a batch the labeler failed on."""

    def __init__(self, spec: LabelerSpec, *, large_model: bool = False):
        super().__init__(large_model=large_model)
        self._spec = spec
        self._detect_us = Metrics.counter("annotate", "time_us/detect")

    def load_model(self) -> Labeler:
        return load_labeler(self._spec)

    def run_inference(self, batch: Sequence[Prepared], model: Labeler,
                      inference_args: dict[str, Any] | None = None) -> Iterable[PredictionResult]:
        start = time.perf_counter()
        inputs = [
            LabelerInput(key=p.key, image=p.pixels, queries=p.queries, metadata=p.metadata,
                         caption=p.caption)
            for p in batch
        ]
        try:
            detections: list[Detections] = model.detect(inputs)
            if len(detections) != len(batch):
                raise RuntimeError(f"labeler returned {len(detections)} results for {len(batch)} "
                                   "inputs")
            answers = [(d, model.fingerprint) for d in detections]
        except Exception as e:  # noqa: BLE001 - one bad batch must not fail the whole job
            answers = [LabelerError(describe_error(e))] * len(batch)
        self._detect_us.inc(int((time.perf_counter() - start) * 1e6))
        # The labeler is done with the pixels: don't carry them downstream.
        return [PredictionResult(example=dataclasses.replace(p, pixels=None), inference=a)
                for p, a in zip(batch, answers, strict=True)]

    def get_num_bytes(self, batch: Sequence[Prepared]) -> int:
        return sum(len(p.image) + (p.pixels.nbytes if p.pixels is not None else 0) for p in batch)

    def get_metrics_namespace(self) -> str:
        return "annotate_inference"
