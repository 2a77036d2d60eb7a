"""REC transfer with a frozen encoder (the paper's main protocol): a fresh decoder is trained on the
REC train split over frozen features, then scored (Acc@0.5) on the other splits.

Config: refs, instances, images; train_split ("train"), splits (("val", "testA", "testB"));
encoder ("checkpoint" or an .npz path, see features.py); decoder: width, depth, num_heads,
mlp_dim, max_len (0: fit the data, transfer_decoder.fit_max_len), steps, batch_size,
learning_rate, warmup, seed (transfer_decoder.DecoderSpec);
report_untrained (also score the decoder before training: the floor the protocol must beat).
Yields "{split}/acc@0.5", "{split}/miou", "{split}/malformed", "{split}/pointing", "{split}/count",
"train/loss_first", "train/loss_last", "train/examples", "train/max_len" (the decoder's length),
optional "{split}/acc@0.5_untrained".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import ml_collections
import numpy as np

from evaluation import transfer_decoder as td
from evaluation.data.refcoco import load_rec
from evaluation.evaluators import base
from evaluation.evaluators.features import features
from evaluation.evaluators.rec_common import predict_boxes, split_metrics, write_predictions
from evaluation.metrics import rec_scores
from evaluation.train_run import TrainRun


class Evaluator:
    def __init__(self, config: ml_collections.ConfigDict, run: TrainRun, shared: dict):
        self.config = config
        self.run_ = run
        self.shared = shared
        self.train_split = config.get("train_split", "train")
        self.splits = tuple(config.get("splits", ("val", "testA", "testB")))
        self.data = load_rec(config.refs, config.instances, config.images,
                             splits=(self.train_split, *self.splits))
        self.train = self.data.split(self.train_split)
        if not self.train:
            raise ValueError(f"{config.refs} has no '{self.train_split}' refs to train on")
        dec = config.get("decoder", ml_collections.ConfigDict()).to_dict()
        self.spec = td.DecoderSpec(**dec)
        tok = run.tokenizer
        if self.spec.max_len <= 0:  # fit the decoder to this data's longest expression
            sentences = [e.sentence for s in (self.train_split, *self.splits)
                         for e in self.data.split(s)]
            self.spec = dataclasses.replace(self.spec, max_len=td.fit_max_len(tok, sentences))
        self.source = config.get("encoder", "checkpoint")
        self.batch_size = int(config.get("batch_size", 32))
        self.images = base.shared_images(run, shared)
        self.decoder = td.make_decoder(self.spec, tok.vocab_size, tok.pad_id)
        self.data_train = td.format_aref(tok, [e.sentence for e in self.train],
                                         [e.box for e in self.train], self.spec.max_len)
        self.generate = td.make_generate(self.decoder, tok, self.batch_size)
        self.report_untrained = bool(config.get("report_untrained", False))

    def _scores(self, params, ctx, split) -> tuple[list, list[np.ndarray | None]]:
        examples = self.data.split(split)
        paths = sorted({e.image_path for e in examples})
        feats = features(self.source, paths, ctx, self.shared, self.images, self.batch_size)
        row = {p: i for i, p in enumerate(paths)}

        def encode(chunk):
            return feats[[row[p] for p in chunk]]

        def gen(encoded, prompts):
            return self.generate(params, encoded, prompts)

        return examples, predict_boxes(examples, encode, [gen], self.run_.tokenizer,
                                       self.decoder.max_len, self.batch_size)[0]

    def run(self, ctx: base.StepContext) -> Iterator[tuple[str, float]]:
        paths = sorted({e.image_path for e in self.train})
        feats = features(self.source, paths, ctx, self.shared, self.images, self.batch_size)
        row = {p: i for i, p in enumerate(paths)}
        index = np.asarray([row[e.image_path] for e in self.train], np.int32)
        if self.report_untrained:
            untrained = td.init(self.decoder, feats.shape[1:], self.spec.seed)
            for split in self.splits:
                examples, preds = self._scores(untrained, ctx, split)
                if examples:
                    s = rec_scores(preds, [e.box for e in examples])
                    yield f"{split}/acc@0.5_untrained", s["acc"]
                    yield f"{split}/miou_untrained", s["miou"]
        params, losses = td.train(self.decoder, self.spec, feats, index, self.data_train)
        yield "train/loss_first", losses[0]
        yield "train/loss_last", float(np.mean(losses[-10:]))
        yield "train/examples", float(len(self.train))
        yield "train/max_len", float(self.spec.max_len)
        for split in self.splits:
            examples, preds = self._scores(params, ctx, split)
            if examples:
                yield from split_metrics(split, examples, preds)
                # Per expression, so two runs' transfer can be compared with a paired bootstrap.
                write_predictions(self.run_.workdir, f"{self.config.get('name', 'rec_transfer')}"
                                  f"_{split}", ctx.step, examples, preds)
        yield from base.problems_metrics(self.data.problems)
