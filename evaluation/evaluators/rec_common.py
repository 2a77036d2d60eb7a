"""Shared REC loop: encode each image once, prompt `aref` + expression, read back one box."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from evaluation.bootstrap import image_bootstrap
from evaluation.data.refcoco import RecExample
from evaluation.evaluators.base import encoded_rows
from evaluation.metrics import box_iou, is_hit, rec_scores
from evaluation.predict import box_constraint
from model import tasks

# (encoded float[B, N, D], prompts) -> one answer per row: its generated ids (or (ids, score))
GenerateFn = Callable[[np.ndarray, list[list[int]]], Sequence[Any]]
# image paths -> encoded float[B, N, D]
EncodeFn = Callable[[list[str]], np.ndarray]


def box_decoding(tokenizer, constrained: bool = True) -> dict[str, Any]:
    """The REC decoding's `allowed` and `box_order` (Predictor.generate keywords): with
    `constrained`, four location tokens then EOS, with y2 >= y1 and x2 >= x1."""
    if not constrained:
        return dict(allowed=None, box_order=None)
    return dict(allowed=box_constraint(tokenizer),
                box_order=(tokenizer.loc_start, tokenizer.num_loc))


def box_generate(predictor, params, tokenizer, decoding: dict[str, Any], *, beam_size: int = 1,
                 mode: str = "argmax", scored: bool = False) -> GenerateFn:
    """The REC evaluator's `aref` answer generator (mode "argmax" or "expected": how location
    tokens are chosen, model/generate.py); `scored` answers (ids, sum of log-probs)."""
    expected = (tokenizer.loc_start, tokenizer.num_loc) if mode == "expected" else None
    fn = predictor.generate_scored if scored else predictor.generate
    return lambda encoded, prompts: fn(params, encoded, prompts, beam_size=beam_size,
                                       expected_loc=expected, **decoding)


def prompted_rows(paths: Sequence[str], prompts: Sequence[list[int]], encode: EncodeFn,
                  generates: Sequence[GenerateFn], images_per_chunk: int = 32
                  ) -> list[list[Any]]:
    """Per generate fn, its answer for every row (row i: image paths[i], prompt prompts[i]), in
    order. Every image is encoded once for all of its rows and all generate fns."""
    answers: list[list[Any]] = [[None] * len(paths) for _ in generates]
    for rows, gathered in encoded_rows(paths, encode, images_per_chunk):
        chunk = [prompts[i] for i in rows]
        for generate, out in zip(generates, answers, strict=True):
            for i, answer in zip(rows, generate(gathered, chunk), strict=True):
                out[i] = answer
    return answers


def aref_prompts(sentences: Sequence[str], tokenizer, max_len: int) -> list[list[int]]:
    """`aref` + each expression; one too long for the decoder (max_len) is cut as in training
    (tasks.make_prompt)."""
    return [tasks.make_prompt("aref", tokenizer, phrase=s, max_len=max_len) for s in sentences]


def predict_boxes(examples: Sequence[RecExample], encode: EncodeFn,
                  generates: Sequence[GenerateFn], tokenizer, max_len: int,
                  images_per_chunk: int = 32) -> list[list[np.ndarray | None]]:
    """Per generate fn (e.g. one per decoding), one predicted box (float32[4] normalized) or None
    (malformed) per example, in order. Every image is encoded once for all of them."""
    prompts = aref_prompts([e.sentence for e in examples], tokenizer, max_len)
    answers = prompted_rows([e.image_path for e in examples], prompts, encode, generates,
                            images_per_chunk)
    return [[tasks.decode_target("aref", ids, tokenizer).box for ids in out] for out in answers]


def ious(examples: Sequence[RecExample], preds: Sequence[np.ndarray | None]) -> np.ndarray:
    """float[N] IoU of each prediction with its true box; NaN for a malformed (None) one."""
    stacked = np.array([[0.0] * 4 if p is None else list(p) for p in preds]).reshape(-1, 4)
    iou = box_iou(stacked, np.array([ex.box for ex in examples]).reshape(-1, 4))
    return np.where([p is None for p in preds], np.nan, iou)


def hits(examples: Sequence[RecExample], preds: Sequence[np.ndarray | None]) -> np.ndarray:
    """float[N]: 1 where IoU >= 0.5 (with rec_scores' rounding tolerance), else 0."""
    iou = ious(examples, preds)
    return is_hit(np.nan_to_num(iou, nan=0.0)).astype(np.float64)


def wrong_object(examples: Sequence[RecExample], preds: Sequence[np.ndarray | None]) -> np.ndarray:
    """float[N]: 1 where the prediction misses the referent but hits (IoU >= 0.5) another
    annotated object of the image: it found an object, not the one the expression names."""
    hit = hits(examples, preds).astype(bool)
    out = np.zeros(len(examples))
    for i, (ex, pred) in enumerate(zip(examples, preds, strict=True)):
        if hit[i] or pred is None or not ex.others:
            continue
        iou = box_iou(np.repeat(np.asarray(pred, np.float64)[None], len(ex.others), 0),
                      np.asarray(ex.others, np.float64))
        out[i] = float(is_hit(iou).any())
    return out


def same_answer(examples: Sequence[RecExample], preds: Sequence[np.ndarray | None]) -> float:
    """Of the pairs of expressions on one image that name different objects (true boxes with
    IoU < 0.5), the share answered with the same box (predictions with IoU >= 0.5): near 0 for a
    model that reads the expression, near 1 for one that answers each image with one box
    whatever is asked. 0 when a split has no such pair."""
    by_image: dict[int, list[int]] = {}
    for i, (ex, pred) in enumerate(zip(examples, preds, strict=True)):
        if pred is not None:
            by_image.setdefault(ex.image_id, []).append(i)
    pairs = [p for members in by_image.values() for p in itertools.combinations(members, 2)]
    if not pairs:
        return 0.0
    first, second = (list(side) for side in zip(*pairs, strict=True))
    truth = np.array([ex.box for ex in examples], np.float64)
    answer = np.array([[0.0] * 4 if p is None else list(p) for p in preds], np.float64)
    different = ~is_hit(box_iou(truth[first], truth[second]))
    alike = is_hit(box_iou(answer[first], answer[second]))
    return float(alike[different].mean()) if different.any() else 0.0


def choice_rows(examples: Sequence[RecExample], tokenizer, max_len: int
                ) -> tuple[list[int], list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Teacher-forced `aref` rows for the choice test: per example with other annotated objects,
    one row per candidate box, its own box first. Returns (example index of each row, inputs,
    targets, loss masks), each int/float[L]."""
    owner, inputs, targets, masks = [], [], [], []
    for i, ex in enumerate(examples):
        if not ex.others:
            continue
        for box in (ex.box, *ex.others):
            f = tasks.format_task("aref", tokenizer, max_len=max_len, phrase=ex.sentence, box=box)
            owner.append(i)
            inputs.append(f.inputs)
            targets.append(f.targets)
            masks.append(f.loss_mask)
    return owner, inputs, targets, masks


def choice_hits(owner: Sequence[int], log_likelihood: np.ndarray, n: int) -> np.ndarray:
    """float[n]: 1 where an example's own box (its first row) is strictly the most likely of its
    candidates, 0 where another is as likely or more, NaN for examples without rows.
    log_likelihood: float[R], one per row of choice_rows."""
    out = np.full(n, np.nan)
    owner = np.asarray(owner, np.int64)
    for i in np.unique(owner):
        ll = log_likelihood[owner == i]
        out[i] = float(ll[0] > ll[1:].max())
    return out


def choice(examples: Sequence[RecExample], encode: EncodeFn, predictor, params, tokenizer,
           max_len: int, images_per_chunk: int = 32) -> tuple[np.ndarray, float]:
    """Grounding as a choice among the image's annotated objects: for each expression, is its
    referent's box the most likely answer to `aref` + expression, against every other object's
    box (teacher-forced log-likelihood of the whole row, whose expression part is the same for
    every candidate, so the box tokens decide)? Unlike Acc@0.5 it does not depend on
    how precisely a box is generated, only on whether the named object is preferred.

    Returns (hits float[N], NaN for an expression whose image has no other object; the chance
    level, the mean of 1 / candidates over the scored expressions).
    """
    owner, inputs, targets, masks = choice_rows(examples, tokenizer, max_len)
    if not owner:
        return np.full(len(examples), np.nan), 0.0
    rows_of: dict[int, list[int]] = {}
    for r, i in enumerate(owner):
        rows_of.setdefault(i, []).append(r)
    scored = sorted(rows_of)
    ll = np.zeros(len(owner))
    for ex_rows, gathered in encoded_rows([examples[i].image_path for i in scored], encode,
                                          images_per_chunk):
        rows = [r for j in ex_rows for r in rows_of[scored[j]]]
        enc = np.repeat(gathered, [len(rows_of[scored[j]]) for j in ex_rows], axis=0)
        nll = predictor.token_nll(params, enc, np.stack([inputs[r] for r in rows]),
                                  np.stack([targets[r] for r in rows]))
        ll[rows] = -(nll * np.stack([masks[r] for r in rows])).sum(axis=1)
    chance = float(np.mean([1.0 / len(rows_of[i]) for i in scored]))
    return choice_hits(owner, ll, len(examples)), chance


def split_metrics(split: str, examples: Sequence[RecExample],
                  preds: Sequence[np.ndarray | None]) -> list[tuple[str, float]]:
    """Acc@0.5 with its 95% image-bootstrap interval (`acc@0.5_lo`/`_hi`), mIoU, malformed,
    pointing, wrong_object (misses that land on another object), same_answer (different objects
    asked, one box answered) and the expression count of one split."""
    s = rec_scores(preds, [e.box for e in examples])
    lo, hi = image_bootstrap(hits(examples, preds), [e.image_id for e in examples])
    wrong = float(wrong_object(examples, preds).mean()) if examples else 0.0
    return [(f"{split}/acc@0.5", s["acc"]), (f"{split}/acc@0.5_lo", lo),
            (f"{split}/acc@0.5_hi", hi), (f"{split}/miou", s["miou"]),
            (f"{split}/malformed", s["malformed"]), (f"{split}/pointing", s["pointing"]),
            (f"{split}/wrong_object", wrong),
            (f"{split}/same_answer", same_answer(examples, preds)),
            (f"{split}/count", s["count"])]


def prediction_rows(examples: Sequence[RecExample],
                    preds: Sequence[np.ndarray | None]) -> list[dict]:
    """One JSON-able row per expression: ids, sentence, predicted and true box, IoU (None for a
    malformed prediction). What `eval/predictions/*.jsonl` holds, and what the paired bootstrap
    of two runs' hits reads back."""
    return [{"ref_id": ex.ref_id, "image_id": ex.image_id,
             "file_name": ex.image_path.rsplit("/", 1)[-1], "sentence": ex.sentence,
             "pred_box": None if pred is None else [float(v) for v in pred],
             "gt_box": [float(v) for v in ex.box], "iou": None if pred is None else float(iou)}
            for ex, pred, iou in zip(examples, preds, ious(examples, preds), strict=True)]


def write_predictions(workdir: str, name: str, step: int, examples: Sequence[RecExample],
                      preds: Sequence[np.ndarray | None]) -> None:
    """WORKDIR/eval/predictions/{name}_step{step}.jsonl: prediction_rows, one per line."""
    from etils import epath

    from pipelines import files

    out_dir = epath.Path(workdir) / "eval" / "predictions"
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(row) for row in prediction_rows(examples, preds)]
    # Overwrites: scoring a step again (--step N twice, a restart after this file was written but
    # before the results were) replaces the earlier predictions.
    files.write_atomic(out_dir / f"{name}_step{step}.jsonl", "\n".join(lines) + "\n")
