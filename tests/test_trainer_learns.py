"""The `tiny` config learns on a small shapes corpus: the loss falls clearly within a few hundred
steps, and greedy `aref` outputs (unconstrained) are well-formed boxes near the named object."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordReader

from model import generate, tasks
from model.locca import LocCa
from model.tokenizer import Tokenizer
from pipelines import record as record_lib
from training import data as data_lib
from training import fake_data, model_fns, trainer
from training.checkpointing import restore_params
from training.configs.locca import get_config

STEPS = 300


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = (max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
             * max(0.0, min(a[3], b[3]) - max(a[1], b[1])))
    area = lambda x: (x[2] - x[0]) * (x[3] - x[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def _train(tmp_path: Path, steps: int | None, batch: int | None) -> tuple[Path, object]:
    fake_data.write_shards(str(tmp_path / "data"), num_records=1024, num_shards=4)
    fake_data.write_tokenizer(str(tmp_path / "data" / "tok.model"))
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


def _aref_boxes(tmp_path: Path, workdir: Path, c) -> tuple[list, list]:
    """Unconstrained greedy `aref` on 16 held-out images: (decoded boxes or None, records)."""
    config = json.loads((workdir / "config.json").read_text())
    model = LocCa(ml_collections.ConfigDict(config["model"]))  # as eval would build it
    params = restore_params(str(workdir / "checkpoints" / str(c.total_steps) / "params"))
    tok = Tokenizer.load(c.tokenizer)
    fake_data.write_shards(str(tmp_path / "held"), num_records=16, num_shards=1, seed=7)
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
    out, _ = jax.jit(lambda e, p, n: generate.greedy(
        model_fns.make_decode_fn(params, model), e, p, n, eos_id=tok.eos_id,
        pad_id=tok.pad_id))(encoded, prompts, plen)
    gen = generate.generated(np.asarray(out), plen, tok.eos_id)
    return [tasks.decode_target("aref", ids + [tok.eos_id], tok).box for ids in gen], records


@pytest.mark.slow
def test_loss_falls_within_a_few_hundred_steps(tmp_path: Path):
    workdir, _ = _train(tmp_path, STEPS, 16)
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    first, last = rows[0]["loss"], np.mean([r["loss"] for r in rows[-3:]])
    assert last < 0.4 * first, (first, last)
    assert rows[-1]["cap/accuracy"] > 0.8


@pytest.mark.slow
def test_tiny_budget_gives_well_formed_aref_boxes(tmp_path: Path):
    """The full `tiny` budget (15-30 min on 2 shared cores; measured: 16/16 well-formed, mean IoU 0.33): aref writes boxes without a constraint."""
    workdir, c = _train(tmp_path, None, None)
    boxes, records = _aref_boxes(tmp_path, workdir, c)
    good = [b for b in boxes if b is not None]
    assert len(good) >= 12, boxes
    ious = [_iou(b, r.boxes[0]) for b, r in zip(boxes, records, strict=True) if b is not None]
    print(f"aref: {len(good)}/16 well-formed, mean IoU {np.mean(ious):.2f}")
