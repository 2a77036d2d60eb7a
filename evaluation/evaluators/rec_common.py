"""Shared REC loop: encode each image once, prompt `aref` + expression, read back one box."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from evaluation.data.refcoco import RecExample
from evaluation.evaluators.base import encoded_rows
from evaluation.metrics import rec_scores
from model import tasks

# (encoded float[B, N, D], prompts) -> generated ids per row
GenerateFn = Callable[[np.ndarray, list[list[int]]], list[list[int]]]
# image paths -> encoded float[B, N, D]
EncodeFn = Callable[[list[str]], np.ndarray]


def predict_boxes(examples: Sequence[RecExample], encode: EncodeFn,
                  generates: Sequence[GenerateFn], tokenizer, max_len: int,
                  images_per_chunk: int = 32) -> list[list[np.ndarray | None]]:
    """Per generate fn (e.g. one per decoding), one predicted box (float32[4] normalized) or None
    (malformed) per example, in order. Every image is encoded once for all of them. max_len: the
    decoder's length; an expression too long for it is cut as in training (tasks.make_prompt)."""
    preds: list[list[np.ndarray | None]] = [[None] * len(examples) for _ in generates]
    paths = [e.image_path for e in examples]
    for rows, gathered in encoded_rows(paths, encode, images_per_chunk):
        prompts = [tasks.make_prompt("aref", tokenizer, phrase=examples[i].sentence,
                                     max_len=max_len) for i in rows]
        for generate, out in zip(generates, preds, strict=True):
            for i, ids in zip(rows, generate(gathered, prompts), strict=True):
                out[i] = tasks.decode_target("aref", ids, tokenizer).box
    return preds


def split_metrics(split: str, examples: Sequence[RecExample],
                  preds: Sequence[np.ndarray | None]) -> list[tuple[str, float]]:
    s = rec_scores(preds, [e.box for e in examples])
    return [(f"{split}/acc@0.5", s["acc"]), (f"{split}/miou", s["miou"]),
            (f"{split}/malformed", s["malformed"]), (f"{split}/pointing", s["pointing"]),
            (f"{split}/count", s["count"])]
