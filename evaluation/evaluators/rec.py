"""REC with the pretrained decoder itself: `aref` + expression -> 4 location tokens -> Acc@0.5.

Config (ConfigDict): refs (refs(unc).p / refs(umd).p / refs(google).p or refs.json), instances
(COCO instances.json), images (image dir), splits (default val/testA/testB), constrained (force
4 location tokens + EOS; default True), batch_size, max_per_split (0: all).
Yields "{split}/acc@0.5", "{split}/miou", "{split}/malformed", "{split}/count", "problems/*".
"""

from __future__ import annotations

from collections.abc import Iterator

import ml_collections

from evaluation.checkpoint import TrainRun
from evaluation.data.refcoco import load_rec
from evaluation.evaluators import base
from evaluation.evaluators.rec_common import predict_boxes, split_metrics
from evaluation.predict import box_constraint


class Evaluator:
    def __init__(self, config: ml_collections.ConfigDict, run: TrainRun, shared: dict):
        self.config = config
        self.run_ = run
        splits = tuple(config.get("splits", ("val", "testA", "testB")))
        self.data = load_rec(config.refs, config.instances, config.images, splits=splits)
        limit = int(config.get("max_per_split", 0))
        self.splits = {}
        for s in splits:
            ex = self.data.split(s)
            if ex:
                self.splits[s] = ex[:limit] if limit else ex
        self.predictor = base.shared_predictor(run, shared, int(config.get("batch_size", 32)))
        self.images = base.shared_images(run, shared)
        tok = run.tokenizer
        self.allowed = (box_constraint(tok.vocab_size, tok.loc_start, tok.eos_id)
                        if config.get("constrained", True) else None)

    def run(self, ctx: base.StepContext) -> Iterator[tuple[str, float]]:
        params = ctx.params
        tok = self.run_.tokenizer

        def encode(paths):
            return self.predictor.encode(params, self.images.batch(paths))

        def gen(encoded, prompts):
            return self.predictor.generate(params, encoded, prompts, allowed=self.allowed)

        for split, examples in self.splits.items():
            preds = predict_boxes(examples, encode, gen, tok, self.predictor.batch_size)
            yield from split_metrics(split, examples, preds)
        yield from base.problems_metrics(self.data.problems)
