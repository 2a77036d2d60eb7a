"""REC with the pretrained decoder itself: `aref` + expression -> 4 location tokens -> Acc@0.5.

Config (ConfigDict): refs (refs(unc).p / refs(umd).p / refs(google).p or refs.json), instances
(COCO instances.json), images (image dir), splits (default val/testA/testB), constrained (force
4 location tokens + EOS with y2 >= y1, x2 >= x1; default True), beam_size (default 1, greedy; k > 1
searches the k most likely boxes and reports "{split}/acc@0.5_beam{k}", ...), batch_size,
max_per_split (0: all), loc_decodes (default ("argmax",), the paper's greedy decoding; add
"expected" for expected-bin location tokens, model/generate.py, reported as
"{split}/acc@0.5_expected", ...; greedy only).
prior_split (default "train"; "" = off): the mean box of its referred objects, answered for every
expression, is reported as "{split}/acc@0.5_prior", "{split}/miou_prior", "{split}/pointing_prior",
the floor a model must beat to show it localises anything.
choice (default True): "{split}/choice", the share of expressions whose referent's box the model
finds more likely (teacher-forced) than every other annotated object's box of the image, and
"{split}/choice_chance" (1 / objects, averaged): grounding without the box-precision part of
Acc@0.5 (rec_common.choice); "{split}/choice_blind", the same with every image swapped for another
of the split: what the words alone pick (a choice no higher than its blind one reads no image).
With `constrained`, decoding cannot produce a malformed box (4 location tokens, ordered edges), so
"malformed" is ~0 by construction; figures from before box_order (2026-11-30) could be malformed
where the same model now gets its best well-formed box.
Yields "{split}/acc@0.5", "{split}/miou", "{split}/malformed", "{split}/pointing",
"{split}/count", "problems/*" and the prior rows.
Also writes every prediction to WORKDIR/eval/predictions/rec_{split}_step{step}.jsonl
(rec_{split}_beam{k}_step{step}.jsonl with beam_size k > 1, rec_{split}_expected_step{step}.jsonl
for expected-bin decoding; image,
sentence, predicted and true boxes, IoU) for galleries and error analysis.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import ml_collections
import numpy as np

from evaluation.data.refcoco import load_rec, load_refs
from evaluation.evaluators import base
from evaluation.evaluators.rec_common import (
    box_decoding,
    box_generate,
    choice,
    predict_boxes,
    split_metrics,
    write_predictions,
)
from evaluation.train_run import TrainRun

# How location tokens are chosen: the argmax (the paper) or the expected bin (model/generate.py).
LOC_DECODES = ("argmax", "expected")


def _prior_box(config: ml_collections.ConfigDict, split: str) -> np.ndarray | None:
    """The floor a model must beat to show it localises anything: one constant box, the mean box
    of the referred objects of `split` (each object once), answered for every expression.

    Loaded on its own (no image files needed, its problems not counted with the scored splits').
    None when the split is off ("") or the file has no refs in it.
    """
    if not split:
        return None
    if split not in {r.get("split") for r in load_refs(config.refs)}:
        return None  # e.g. a refs file of eval splits only: no floor rather than no evaluation
    prior = load_rec(config.refs, config.instances, config.images, splits=(split,),
                     check_images=False)
    boxes = {e.ref_id: e.box for e in prior.examples}
    return np.mean(list(boxes.values()), axis=0) if boxes else None


class Evaluator:
    def __init__(self, config: ml_collections.ConfigDict, run: TrainRun, shared: dict):
        self.config = config
        self.run_ = run
        splits = tuple(config.get("splits", ("val", "testA", "testB")))
        self.data = load_rec(config.refs, config.instances, config.images, splits=splits)
        self.prior_box = _prior_box(config, config.get("prior_split", "train"))
        limit = int(config.get("max_per_split", 0))
        self.splits = {}
        for s in splits:
            ex = self.data.split(s)
            if ex:
                self.splits[s] = ex[:limit] if limit else ex
        self.predictor = base.shared_predictor(run, shared, int(config.get("batch_size", 32)))
        self.images = base.shared_images(run, shared)
        self.decoding = box_decoding(run.tokenizer, bool(config.get("constrained", True)))
        self.beam_size = int(config.get("beam_size", 1))
        if self.beam_size < 1:
            raise ValueError(f"rec: beam_size must be >= 1, got {self.beam_size}")
        self.loc_decodes = tuple(config.get("loc_decodes", ("argmax",)))
        unknown = sorted(set(self.loc_decodes) - set(LOC_DECODES))
        if unknown or not self.loc_decodes:
            raise ValueError(f"rec: loc_decodes must be a non-empty subset of {LOC_DECODES}, "
                             f"got {self.loc_decodes}")
        if "expected" in self.loc_decodes and self.beam_size > 1:
            raise ValueError("rec: loc_decodes 'expected' decodes greedily; use beam_size 1")
        self.choice = bool(config.get("choice", True))

    def run(self, ctx: base.StepContext) -> Iterator[tuple[str, float]]:
        params = ctx.params
        tok = self.run_.tokenizer

        def encode(paths):
            return self.predictor.encode(params, self.images.batch(paths))

        generates = [box_generate(self.predictor, params, tok, self.decoding,
                                  beam_size=self.beam_size, mode=mode)
                     for mode in self.loc_decodes]
        for split, examples in self.splits.items():
            per_mode = predict_boxes(examples, encode, generates, tok, self.predictor.max_len,
                                     self.predictor.batch_size)
            for i, (mode, preds) in enumerate(zip(self.loc_decodes, per_mode, strict=True)):
                suffix = ("_expected" if mode == "expected" else
                          "" if self.beam_size == 1 else f"_beam{self.beam_size}")
                for name, value in split_metrics(split, examples, preds):
                    if not name.endswith("/count"):
                        yield name + suffix, value
                    elif i == 0:  # the same expressions whatever the decoding
                        yield name, value
                self._write_predictions(ctx.step, split + suffix, examples, preds)
            if self.choice:
                yield from self._choice(split, examples, encode, params)
            if self.prior_box is not None:
                for name, value in split_metrics(split, examples, [self.prior_box] * len(examples)):
                    if name.endswith(("/acc@0.5", "/miou", "/pointing")):
                        yield f"{name}_prior", value
        yield from base.problems_metrics(self.data.problems)

    def _choice(self, split: str, examples: Sequence, encode, params
                ) -> Iterator[tuple[str, float]]:
        """choice, its chance level, and choice_blind: the same test with every image swapped
        for another of the split, so choice - choice_blind is what the image adds to the pick
        (0 when the model picks from the expression's words alone, e.g. "left" -> a left box)."""
        tok, pred = self.run_.tokenizer, self.predictor
        picked, chance = choice(examples, encode, pred, params, tok, pred.max_len,
                                pred.batch_size)
        if np.isnan(picked).all():
            return
        yield f"{split}/choice", float(np.nanmean(picked))
        yield f"{split}/choice_chance", chance
        order = sorted({e.image_path for e in examples})
        if len(order) > 1:
            other = dict(zip(order, order[1:] + order[:1], strict=True))
            blind, _ = choice(examples, lambda paths: encode([other[p] for p in paths]), pred,
                              params, tok, pred.max_len, pred.batch_size)
            yield f"{split}/choice_blind", float(np.nanmean(blind))

    def _write_predictions(
        self, step: int, split: str, examples: Sequence, preds: Sequence[np.ndarray | None]
    ) -> None:
        write_predictions(self.run_.workdir, f"{self.config.get('name', 'rec')}_{split}", step,
                          examples, preds)
