"""The teacher-forced location readout evaluator: its expected/argmax bins equal a direct
computation from the model's full decoder logits, the box positions are the four before EOS, and
the metrics mean what their names say on hand-made readouts."""

from __future__ import annotations

import numpy as np
import pytest
from eval_fixtures import evaluator_config, random_head_run

from evaluation.evaluators import base
from evaluation.evaluators.loc_readout import EDGES, box_positions, readout_metrics
from model import tasks


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("loc_readout")
    run, params, eval_dir = random_head_run(root)
    cfg = evaluator_config("loc_readout", eval_dir, splits=("val", "testA"), max_per_split=10,
                           batch_size=4)
    return run, base.build("loc_readout", cfg, run, {}), params, root


def _softmax_readout(loc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 reference: (expected bin, argmax bin) of location logits [..., num_loc]."""
    p = np.exp(loc - loc.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return p @ np.arange(loc.shape[-1]), loc.argmax(-1)


def test_bins_equal_a_direct_computation_from_the_decoder_logits(setup):
    run, evaluator, params, _ = setup
    rows = evaluator.splits["val"]
    r = evaluator.readout(params, rows)
    # Reference: the whole decoder's logits for each row with its own image, no batching or
    # image sharing; softmax over the 1,024 location logits, at the four box positions.
    images = evaluator.images.batch([e.image_path for e, _, _ in rows])
    inputs = np.stack([row.inputs for _, row, _ in rows])
    encoded = run.model.apply({"params": params}, images, method="encode")
    logits = np.asarray(run.model.apply({"params": params}, encoded, inputs, method="decode"),
                        np.float64)
    tok = run.tokenizer
    lo = tok.loc_start
    where = np.stack([w for _, _, w in rows])
    loc = np.stack([logits[i, w, lo : lo + tok.num_loc] for i, w in enumerate(where)])
    true_bins = np.stack([tasks.box_to_bins(e.box, tok.num_loc) for e, _, _ in rows])  # [N, 4] y1 x1 y2 x2
    np.testing.assert_array_equal(r["truth"], true_bins)
    free_expected, free_argmax = _softmax_readout(loc)
    np.testing.assert_allclose(r["expected"], free_expected, atol=0.05)  # float32 vs float64
    assert (r["argmax"] == free_argmax).mean() > 0.95  # near-ties may flip between the sums
    # Constrained as REC decodes: y2 from bins >= the true y1, x2 from bins >= the true x1.
    bins = np.arange(tok.num_loc)
    loc[:, 2] = np.where(bins >= true_bins[:, :1], loc[:, 2], -np.inf)
    loc[:, 3] = np.where(bins >= true_bins[:, 1:2], loc[:, 3], -np.inf)
    min_expected, min_argmax = _softmax_readout(loc)
    np.testing.assert_allclose(r["expected_min"], min_expected, atol=0.05)
    assert (r["argmax_min"] == min_argmax).mean() > 0.95
    assert np.all(r["expected_min"][:, 2] >= true_bins[:, 0])
    assert np.all(r["argmax_min"][:, 3] >= true_bins[:, 1])
    # The random head spreads its readout (not a constant, so a wrong position would show), and
    # the constraint changes y2/x2 only.
    assert r["expected"].std() > 1.0
    np.testing.assert_allclose(r["expected_min"][:, :2], r["expected"][:, :2], atol=1e-4)
    assert np.abs(r["expected_min"][:, 2:] - r["expected"][:, 2:]).max() > 1.0
    evaluator.constrained = False
    try:
        off = evaluator.readout(params, rows)
    finally:
        evaluator.constrained = True
    np.testing.assert_allclose(off["expected_min"], r["expected"], atol=1e-4)


def test_metrics_of_the_evaluator_run(setup):
    run, evaluator, params, root = setup
    ctx = base.StepContext(1, root / "run" / "checkpoints" / "1", run, params)
    m = dict(evaluator.run(ctx))
    for split in ("val", "testA"):
        assert m[f"{split}/count"] == len(evaluator.splits[split]) == 10
        assert m[f"{split}/mae_bins"] > 0
        for edge in EDGES:
            assert m[f"{split}/r2_{edge}"] < 1.0
        assert 0.0 <= m[f"{split}/tf_acc@0.5"] <= 1.0
        assert 0.0 <= m[f"{split}/tf_miou_expected"] <= 1.0


def test_box_positions_are_the_four_tokens_before_eos(setup):
    run, _, _, _ = setup
    tok = run.tokenizer
    row = tasks.format_task("aref", tok, max_len=24, phrase="red circle", box=[0.1, 0.2, 0.5, 0.9])
    where = box_positions(row, tok.loc_start, tok.num_loc, tok.eos_id)
    assert list(row.targets[where] - tok.loc_start) == list(tasks.box_to_bins([0.1, 0.2, 0.5, 0.9], tok.num_loc))
    assert row.targets[where[-1] + 1] == tok.eos_id
    # A phrase too long for max_len is cut; the box stays whole, right before EOS.
    box = [0.25, 0.5, 0.75, 1.0]
    cut = tasks.format_task("aref", tok, max_len=16, phrase="red circle " * 10, box=box)
    where = box_positions(cut, tok.loc_start, tok.num_loc, tok.eos_id)
    assert where[-1] == 16 - 2 and cut.targets[15] == tok.eos_id  # the row is full
    assert list(cut.targets[where] - tok.loc_start) == list(tasks.box_to_bins(box, tok.num_loc))
    # A dropped row (no room for a phrase token) is not scored.
    assert box_positions(tasks.empty("aref", tok, 16), tok.loc_start, tok.num_loc,
                         tok.eos_id) is None


def test_a_model_whose_boxes_do_not_fit_counts_them_as_problems(tmp_path):
    run, _, eval_dir = random_head_run(tmp_path)
    run.model_config.max_len = 6  # room for "aref" + a word, never for a box and EOS
    cfg = evaluator_config("loc_readout", eval_dir, splits=("val",), max_per_split=5)
    evaluator = base.build("loc_readout", cfg, run, {})
    assert evaluator.splits == {}
    m = dict(evaluator.run(None))
    assert m["problems/loc_readout_too_long"] == 5


def test_readout_metrics_mean_what_they_say():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 1024, size=(50, 4))
    truth[:, 2:] = np.maximum(truth[:, 2:], truth[:, :2] + 50)  # well-formed true boxes
    truth = np.minimum(truth, 1023)
    boxes = (truth + 0.5) / 1024

    def metrics(free, decoded_bins, t=truth, b=boxes):
        decoded = {"expected": decoded_bins.astype(float), "argmax": decoded_bins}
        return dict(readout_metrics("val", free, decoded, t, b, 1024))

    m = metrics(truth.astype(float), truth)
    assert all(m[f"val/r2_{e}"] == pytest.approx(1.0) for e in EDGES)
    assert m["val/mae_bins"] == 0.0 and m["val/tf_acc@0.5"] == 1.0 == m["val/tf_acc@0.5_expected"]
    # Answering every edge's mean over the split: R^2 exactly 0.
    mean = np.broadcast_to(truth.mean(0), truth.shape)
    m = metrics(mean, mean.round().astype(int))
    assert all(m[f"val/r2_{e}"] == pytest.approx(0.0, abs=1e-12) for e in EDGES)
    # Off by 10 bins on every edge: MAE 10, R^2 = 1 - 100 / var.
    m = metrics(truth + 10.0, truth + 10)
    assert m["val/mae_bins"] == pytest.approx(10.0)
    for k, e in enumerate(EDGES):
        assert m[f"val/r2_{e}"] == pytest.approx(1 - 100 / truth[:, k].var())
    # R^2 and MAE come from the free readout, the box accuracy from the decoded one.
    m = metrics(mean, truth)
    assert m["val/r2_y1"] == pytest.approx(0.0, abs=1e-12) and m["val/tf_acc@0.5"] == 1.0
    # A constant true edge has no R^2 (0/0), and is left out rather than reported as NaN.
    flat = truth.copy()
    flat[:, 0] = 7
    names = metrics(flat.astype(float), flat, flat, (flat + 0.5) / 1024)
    assert "val/r2_y1" not in names and "val/r2_x1" in names
    assert names["val/count"] == 50
