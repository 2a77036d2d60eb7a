"""Shared REC loop: encode each image once, prompt `aref` + expression, read back one box."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from evaluation.data.refcoco import RecExample
from evaluation.evaluators.base import encoded_rows
from evaluation.metrics import rec_scores
from evaluation.predict import box_constraint
from model import tasks
from model.tasks import NUM_BINS as NUM_LOC

# (encoded float[B, N, D], prompts) -> one answer per row: its generated ids (or (ids, score))
GenerateFn = Callable[[np.ndarray, list[list[int]]], Sequence[Any]]
# image paths -> encoded float[B, N, D]
EncodeFn = Callable[[list[str]], np.ndarray]


def box_decoding(tokenizer, constrained: bool = True) -> dict[str, Any]:
    """The REC decoding's `allowed` and `box_order` (Predictor.generate keywords): with
    `constrained`, four location tokens then EOS, with y2 >= y1 and x2 >= x1."""
    if not constrained:
        return dict(allowed=None, box_order=None)
    return dict(allowed=box_constraint(tokenizer.vocab_size, tokenizer.loc_start,
                                       tokenizer.eos_id),
                box_order=(tokenizer.loc_start, NUM_LOC))


def box_generate(predictor, params, tokenizer, decoding: dict[str, Any], *, beam_size: int = 1,
                 mode: str = "argmax", scored: bool = False) -> GenerateFn:
    """The REC evaluator's `aref` answer generator (mode "argmax" or "expected": how location
    tokens are chosen, model/generate.py); `scored` answers (ids, sum of log-probs)."""
    expected = (tokenizer.loc_start, NUM_LOC) if mode == "expected" else None
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


def split_metrics(split: str, examples: Sequence[RecExample],
                  preds: Sequence[np.ndarray | None]) -> list[tuple[str, float]]:
    s = rec_scores(preds, [e.box for e in examples])
    return [(f"{split}/acc@0.5", s["acc"]), (f"{split}/miou", s["miou"]),
            (f"{split}/malformed", s["malformed"]), (f"{split}/pointing", s["pointing"]),
            (f"{split}/count", s["count"])]
