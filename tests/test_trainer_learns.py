"""The `tiny` config learns on a small shapes corpus: the loss falls clearly within a few hundred
steps, and greedy `aref` boxes land nearer the named object than the constant box does."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest
import train_fixtures
from array_record.python.array_record_module import ArrayRecordReader

from model import generate, tasks
from model.locca import LocCa, make_decode_fn
from model.tokenizer import Tokenizer
from pipelines import record as record_lib
from training import data as data_lib
from training import model_fns, trainer
from training.configs.locca import get_config
from training.train_checkpoints import restore_params

STEPS = 300


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = (max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
             * max(0.0, min(a[3], b[3]) - max(a[1], b[1])))
    area = lambda x: (x[2] - x[0]) * (x[3] - x[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def _train(tmp_path: Path, steps: int | None, batch: int | None) -> tuple[Path, object]:
    train_fixtures.write_shards(str(tmp_path / "data"), num_records=1024, num_shards=4)
    train_fixtures.write_tokenizer(str(tmp_path / "data" / "tok.model"))
    c = get_config("tiny")
    c.data.train_glob = str(tmp_path / "data" / "train-*.array_record")
    c.tokenizer = str(tmp_path / "data" / "tok.model")
    c.progress_bar = False
    if steps:  # None: the config's own budget (what the demo runs)
        c.total_steps, c.batch_size = steps, batch
        c.optim.schedule.warmup_steps = steps // 10
    c.checkpoint.interval = c.total_steps
    workdir = tmp_path / "run"
    assert trainer.train(c, str(workdir)) == "done"
    return workdir, c


def _aref_boxes(tmp_path: Path, workdir: Path, c, *, constrained: bool) -> tuple[list, list]:
    """Greedy `aref` on 16 held-out images: (decoded boxes or None, records). constrained: the
    REC evaluator's decoding (four location tokens with y2 >= y1, x2 >= x1, then EOS)."""
    config = json.loads((workdir / "config.json").read_text())
    model = LocCa(ml_collections.ConfigDict(config["model"]))  # as eval would build it
    params = restore_params(str(workdir / "checkpoints" / str(c.total_steps) / "params"))
    tok = Tokenizer.load(c.tokenizer)
    train_fixtures.write_shards(str(tmp_path / "held"), num_records=16, num_shards=1, seed=7)
    dcfg = trainer.data_config(trainer.resolve_config(c, tok))
    dcfg.paths = str(tmp_path / "held" / "*.array_record")
    batch = next(data_lib.make_eval_iter(dcfg, tok, batch_size=16, process_index=0,
                                         process_count=1))
    reader = ArrayRecordReader(str(next((tmp_path / "held").glob("*.array_record"))))
    records = [record_lib.decode(r) for r in reader.read_all()]
    length = config["model"]["max_len"]
    prompts = np.zeros((16, length), np.int32)
    plen = np.zeros(16, np.int32)
    for i, rec in enumerate(records):
        ids = tasks.make_prompt("aref", tok, phrase=rec.phrases[0])
        prompts[i, : len(ids)], plen[i] = ids, len(ids)
    encoded = model_fns.encode(params, model, batch["image"])
    kw = {}
    if constrained:
        kw = dict(allowed=generate.loc_constraint(tok.vocab_size, tok.loc_start,
                                                  num_loc=tok.num_loc, eos_id=tok.eos_id),
                  box_order=(tok.loc_start, tok.num_loc))
    out, _ = jax.jit(lambda e, p, n: generate.greedy(
        make_decode_fn(model, params), e, p, n, eos_id=tok.eos_id,
        pad_id=tok.pad_id, **kw))(encoded, prompts, plen)
    gen = generate.generated(np.asarray(out), plen, tok.eos_id)
    return [tasks.decode_target("aref", ids + [tok.eos_id], tok).box for ids in gen], records


def _mean_training_box(tmp_path: Path) -> np.ndarray:
    boxes = []
    for path in (tmp_path / "data").glob("train-*.array_record"):
        for r in ArrayRecordReader(str(path)).read_all():
            boxes += list(record_lib.decode(r).boxes)
    return np.mean(boxes, axis=0)


@pytest.mark.slow
def test_loss_falls_within_a_few_hundred_steps(tmp_path: Path):
    workdir, _ = _train(tmp_path, STEPS, 16)
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    first, last = rows[0]["loss"], np.mean([r["loss"] for r in rows[-3:]])
    assert last < 0.4 * first, (first, last)
    assert rows[-1]["cap/accuracy"] > 0.8


@pytest.mark.slow
def test_tiny_budget_localises_the_named_object(tmp_path: Path):
    """The full `tiny` budget (700 steps, ~6 min): with the REC evaluator's decoding, `aref` boxes
    overlap the named object more than the constant box (the mean training box) does, and without
    any constraint the decoder still answers with location tokens.

    Since the recipe's Gaussian location targets (training/configs/locca.py), unconstrained
    greedy boxes are often inverted (y2 < y1: each edge is its own wide distribution), which the
    evaluators' `box_order` constraint exists for; on this corpus the unconstrained boxes were
    10/16 well-formed in the run that retired the old ">= 12/16 well-formed" assertion.
    """
    workdir, c = _train(tmp_path, None, None)
    boxes, records = _aref_boxes(tmp_path, workdir, c, constrained=True)
    assert all(b is not None for b in boxes), boxes  # the constraint guarantees the form
    truth = [r.boxes[0] for r in records]
    ious = [_iou(b, t) for b, t in zip(boxes, truth, strict=True)]
    prior = _mean_training_box(tmp_path)
    prior_ious = [_iou(prior, t) for t in truth]
    free, _ = _aref_boxes(tmp_path, workdir, c, constrained=False)
    print(f"aref: mean IoU {np.mean(ious):.3f} (constant box {np.mean(prior_ious):.3f}); "
          f"unconstrained: {sum(b is not None for b in free)}/16 well-formed")
    assert np.mean(ious) > np.mean(prior_ious) + 0.05, (ious, prior_ious)
    assert sum(b is not None for b in free) >= 8, free
