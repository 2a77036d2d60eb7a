"""Captioning: `cap` prompt, greedy and beam decoding, CIDEr-D and BLEU-4 (pycocoevalcap).

Config: captions (COCO captions json), images (dir), split (label for the results, default "val"),
refs + refs_split (optional: restrict to the images of one REC split, e.g. the sample corpus's val),
beam_sizes (default (1,): 1 is greedy), max_images (0: all), batch_size.
Yields "{split}/cider", "{split}/bleu4" for greedy and "{split}/cider_beam{k}", ... for beams.
"""

from __future__ import annotations

from collections.abc import Iterator

import ml_collections

from evaluation.data.coco import load_captions
from evaluation.data.refcoco import load_refs
from evaluation.evaluators import base
from evaluation.metrics import caption_scores
from evaluation.train_run import TrainRun
from model import tasks


class Evaluator:
    def __init__(self, config: ml_collections.ConfigDict, run: TrainRun, shared: dict):
        self.config = config
        self.run_ = run
        ids = None
        if config.get("refs") and config.get("refs_split"):
            ids = {r["image_id"] for r in load_refs(config.refs) if r.get("split") == config.refs_split}
        self.data = load_captions(config.captions, config.images, image_ids=ids)
        limit = int(config.get("max_images", 0))
        self.image_ids = sorted(self.data.image_paths)[: limit or None]
        self.split = config.get("split", "val")
        self.beam_sizes = tuple(config.get("beam_sizes", (1,)))
        self.predictor = base.shared_predictor(run, shared, int(config.get("batch_size", 32)))
        self.images = base.shared_images(run, shared)

    def captions(self, params, beam_size: int) -> dict[int, str]:
        tok = self.run_.tokenizer
        prompt = tasks.make_prompt("cap", tok)
        out: dict[int, str] = {}
        step = self.predictor.batch_size
        for i in range(0, len(self.image_ids), step):
            ids = self.image_ids[i : i + step]
            enc = self.predictor.encode(params, self.images.batch(
                [self.data.image_paths[k] for k in ids]))
            gen = self.predictor.generate(params, enc, [prompt] * len(ids), beam_size=beam_size)
            out.update({k: tok.decode(g) for k, g in zip(ids, gen, strict=True)})
        return out

    def run(self, ctx: base.StepContext) -> Iterator[tuple[str, float]]:
        refs = {k: self.data.references[k] for k in self.image_ids}
        for k in self.beam_sizes:
            scores = caption_scores(refs, self.captions(ctx.params, int(k)))
            suffix = "" if k == 1 else f"_beam{k}"
            yield f"{self.split}/cider{suffix}", scores["cider"]
            yield f"{self.split}/bleu4{suffix}", scores["bleu4"]
        yield f"{self.split}/count", float(len(self.image_ids))
        yield from base.problems_metrics(self.data.problems)
