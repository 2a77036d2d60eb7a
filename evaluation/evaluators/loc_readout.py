"""How well the decoder reads a box out of the image, one edge at a time (teacher-forced).

REC Acc@0.5 needs four generated edges right at once, so early in training or at small scale it
sits near 0 and hides whether localisation is being learned at all. This scores each location
token of the `aref` target `{expression} : <y1><x1><y2><x2>` given the expression and the TRUE
earlier edges: at each of the four positions the softmax over the 1,024 location logits alone
gives an expected bin and an argmax bin, compared with the true bin. It is the per-edge view of
the gap between "the encoder has the box" (a linear probe reads it) and "the decoder writes it".

Yields per split:
  "{split}/r2_{y1,x1,y2,x2}"  1 - SSE / SST of the expected bin against the true bin over the
                              split: 0 = no better than answering each edge's mean over the split,
                              1 = exact, < 0 = worse than that mean (no fit: the raw readout).
                              Over all 1,024 bins, unconstrained: restricting y2 to bins >= the
                              true y1 would by itself give y2 and x2 an R^2 of ~0.5 (a captioner
                              never trained on boxes scores that on the demo corpus). Left out
                              when the split's true bins of that edge are all equal.
  "{split}/mae_bins"          mean |expected - true bin| over the four edges (bins of 1/num_loc),
                              unconstrained likewise.
  "{split}/tf_acc@0.5", "{split}/tf_miou"  Acc@0.5 / mean IoU of the box made of the four argmax
                              bins, each read given the true earlier edges ("_expected": of the
                              rounded expected bins), with y2 and x2 read as the rec evaluator's
                              constrained decoding reads them (its default): from the bins >= the
                              true y1 and x1 (config `constrained`, default True). Greedy
                              generation conditions on its own earlier edges instead, so this is
                              what it would reach with perfect earlier edges, not a bound on REC
                              Acc@0.5.
  "{split}/count"             expressions scored.
  "problems/loc_readout_too_long"  expressions with no room for even one phrase token beside
                              the box in the model's max_len (training drops such rows; skipped
                              here), plus the data loader's own problems/*.
Config: refs, instances, images (as the rec evaluator), splits (default ("val",)), batch_size,
max_per_split (0: all), constrained (default True).
"""

from __future__ import annotations

import collections
from collections.abc import Iterator, Sequence

import ml_collections
import numpy as np

from evaluation.data.refcoco import RecExample, load_rec
from evaluation.evaluators import base
from evaluation.metrics import rec_scores
from evaluation.train_run import TrainRun
from model import tasks

EDGES = ("y1", "x1", "y2", "x2")  # the order of a box's location tokens (model/tasks.py)


def box_positions(formatted: tasks.Formatted, loc_start: int, num_loc: int,
                  eos_id: int) -> np.ndarray | None:
    """int[4]: the target positions of the box's four location tokens in an `aref` row (the four
    before EOS), or None for a dropped row (format_task never cuts a box: it cuts the phrase, or
    drops the row when not even one phrase token fits)."""
    scored = np.flatnonzero(formatted.loss_mask)  # the target: after the prompt, through EOS
    if len(scored) < 5 or int(formatted.targets[scored[-1]]) != eos_id:
        return None
    where = np.arange(scored[-1] - 4, scored[-1])
    ids = formatted.targets[where]
    if np.any(ids < loc_start) or np.any(ids >= loc_start + num_loc):
        return None
    return where


def readout_metrics(split: str, free: np.ndarray, decoded: dict[str, np.ndarray],
                    truth: np.ndarray, true_boxes: Sequence[Sequence[float]],
                    num_loc: int) -> list[tuple[str, float]]:
    """free float[N, 4]: the unconstrained expected bins; decoded: {"expected": float[N, 4],
    "argmax": int[N, 4]} as decoding reads them; truth int[N, 4] bins (y1 x1 y2 x2); true_boxes
    float[N, 4] normalized -> the metrics described at the top of this module."""
    free = np.asarray(free, np.float64).reshape(-1, 4)
    truth = np.asarray(truth, np.float64).reshape(-1, 4)
    out = []
    for k, edge in enumerate(EDGES):
        sst = float(np.sum((truth[:, k] - truth[:, k].mean()) ** 2))
        if sst > 0:
            sse = float(np.sum((free[:, k] - truth[:, k]) ** 2))
            out.append((f"{split}/r2_{edge}", 1.0 - sse / sst))
    out.append((f"{split}/mae_bins", float(np.mean(np.abs(free - truth)))))
    for suffix, bins in (("", np.asarray(decoded["argmax"], np.float64)),
                         ("_expected", np.rint(np.asarray(decoded["expected"], np.float64)))):
        boxes = (bins.reshape(-1, 4) + 0.5) / num_loc  # tasks.tokens_to_box's bin centre
        s = rec_scores(list(boxes), list(true_boxes))
        out += [(f"{split}/tf_acc@0.5{suffix}", s["acc"]), (f"{split}/tf_miou{suffix}", s["miou"])]
    out.append((f"{split}/count", float(len(truth))))
    return out


class Evaluator:
    def __init__(self, config: ml_collections.ConfigDict, run: TrainRun, shared: dict):
        self.run_ = run
        tok = run.tokenizer
        max_len = int(run.model_config.max_len)
        splits = tuple(config.get("splits", ("val",)))
        data = load_rec(config.refs, config.instances, config.images, splits=splits)
        self.problems = collections.Counter(data.problems)
        limit = int(config.get("max_per_split", 0))
        # split -> rows of (example, aref row, int[4] box positions)
        self.splits: dict[str, list[tuple[RecExample, tasks.Formatted, np.ndarray]]] = {}
        for split in splits:
            rows = []
            for e in data.split(split)[: limit or None]:
                row = tasks.format_task("aref", tok, max_len=max_len, phrase=e.sentence, box=e.box)
                where = box_positions(row, tok.loc_start, tok.num_loc, tok.eos_id)
                if where is None:
                    self.problems["loc_readout_too_long"] += 1
                else:
                    rows.append((e, row, where))
            if rows:
                self.splits[split] = rows
        self.predictor = base.shared_predictor(run, shared, int(config.get("batch_size", 32)))
        self.images = base.shared_images(run, shared)
        self.constrained = bool(config.get("constrained", True))

    def readout(self, params, rows) -> dict[str, np.ndarray]:
        """The rows' box positions, read teacher-forced: {"expected", "argmax"} over all bins,
        {"expected_min", "argmax_min"} with y2 >= true y1 and x2 >= true x1 (when constrained;
        else the same as the first two), each [N, 4], and "truth" int[N, 4] bins."""
        loc_start = self.run_.tokenizer.loc_start
        n = len(rows)
        keys = ("expected", "argmax", "expected_min", "argmax_min")
        out = {k: np.zeros((n, 4), np.int64 if "argmax" in k else np.float64) for k in keys}

        def encode(paths):
            return self.predictor.encode(params, self.images.batch(paths))

        paths = [e.image_path for e, _, _ in rows]
        for sel, gathered in base.encoded_rows(paths, encode, self.predictor.batch_size):
            inputs = np.stack([rows[i][1].inputs for i in sel])
            where = np.stack([rows[i][2] for i in sel])
            min_bin = np.zeros(inputs.shape, np.int32)
            if self.constrained:  # y2 >= true y1, x2 >= true x1 (inputs hold the true edges)
                first = np.take_along_axis(inputs, where[:, 1:3], axis=1) - loc_start
                np.put_along_axis(min_bin, where[:, 2:4], first, axis=1)
            got = self.predictor.loc_readout(params, gathered, inputs, loc_start=loc_start,
                                             num_loc=self.run_.tokenizer.num_loc,
                                             min_bin=min_bin)
            for k in keys:
                out[k][sel] = np.take_along_axis(got[k], where, axis=1)
        out["truth"] = np.stack([row.targets[where] for _, row, where in rows]) - loc_start
        return out

    def run(self, ctx: base.StepContext) -> Iterator[tuple[str, float]]:
        for split, rows in self.splits.items():
            r = self.readout(ctx.params, rows)
            decoded = {"expected": r["expected_min"], "argmax": r["argmax_min"]}
            yield from readout_metrics(split, r["expected"], decoded, r["truth"],
                                       [e.box for e, _, _ in rows], self.run_.tokenizer.num_loc)
        yield from base.problems_metrics(self.problems)
