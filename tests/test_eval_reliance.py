"""The image-reliance evaluator: its losses equal the trainer's own loss on the same rows, a decoder
cut off from the image relies on it by exactly zero, and the "other image" is always another one."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from eval_fixtures import evaluator_config, random_head_run
from flax import traverse_util

from evaluation.evaluators import base
from evaluation.evaluators.image_reliance import other_image_index


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliance")
    run, params, eval_dir = random_head_run(root)
    cfg = evaluator_config("image_reliance", eval_dir, captions=str(eval_dir / "captions.json"),
                           split="val", max_per_split=10, batch_size=4)
    evaluator = base.build("image_reliance", cfg, run, {})
    return run, evaluator, params, root


def _metrics(setup, params) -> dict[str, float]:
    run, evaluator, _, root = setup
    ctx = base.StepContext(1, root / "run" / "checkpoints" / "1", run, params)
    return dict(evaluator.run(ctx))


def _trainer_loss(run, evaluator, params, task: str, paths) -> float:
    """The training loss (training/model_fns.loss_fn, one task, hard targets) on the same rows,
    row i with the image at paths[i]."""
    from training import model_fns

    rows = evaluator.rows[task]
    images = evaluator.images.batch(paths)
    batch = {"image": jnp.asarray(images)}
    for key in ("inputs", "targets", "loss_mask"):
        batch[f"{task}/{key}"] = jnp.asarray(np.stack([getattr(r[2], key) for r in rows]))
    _, aux = model_fns.loss_fn(params, run.model, batch, jax.random.key(0),
                               task_weights={task: 1.0}, train=False)
    return float(aux[f"{task}/loss"])


def test_losses_equal_the_trainers_loss(setup):
    run, evaluator, params, _ = setup
    m = _metrics(setup, params)
    for task in ("cap", "aref", "gcap"):
        rows = evaluator.rows[task]
        assert m[f"{task}/count"] == len(rows) > 1
        own = _trainer_loss(run, evaluator, params, task, [r[0] for r in rows])
        swapped = _trainer_loss(run, evaluator, params, task, evaluator.other_paths(rows))
        assert m[f"{task}/nll"] == pytest.approx(own, rel=1e-4)
        assert m[f"{task}/nll_other_image"] == pytest.approx(swapped, rel=1e-4)
        assert m[f"{task}/reliance"] == pytest.approx(swapped - own, abs=1e-4)
    # Location tokens alone: a subset of the aref targets, scored separately.
    assert {"aref/loc_nll", "aref/loc_nll_other_image", "aref/loc_reliance"} <= set(m)
    assert m["aref/loc_nll"] != pytest.approx(m["aref/nll"])


def test_a_decoder_cut_off_from_the_image_relies_on_it_by_zero(setup):
    _, _, params, _ = setup
    seeing = _metrics(setup, params)
    assert abs(seeing["cap/reliance"]) > 1e-3, seeing  # random cross-attention reads the image
    flat = traverse_util.flatten_dict(params, sep="/")
    for name in flat:
        if "/CrossAttn/out/" in name:
            flat[name] = jnp.zeros_like(flat[name])
    blind = _metrics(setup, traverse_util.unflatten_dict(flat, sep="/"))
    for task in ("cap", "aref", "gcap"):
        assert blind[f"{task}/reliance"] == pytest.approx(0.0, abs=1e-6)
    assert blind["aref/loc_reliance"] == pytest.approx(0.0, abs=1e-6)


def test_other_image_is_always_another_image(setup):
    pool = [3, 7, 8, 9, 10]
    rows = [7, 7, 7, 8, 9, 9, 3, 10]
    other = other_image_index(rows, pool)
    assert all(pool[j] != i for i, j in zip(rows, other, strict=True))
    assert list(other_image_index([5, 5], [5])) == [-1, -1]
    assert list(other_image_index([], [1, 2])) == []
    # Rows limited to one image still get other images from the whole split.
    _, evaluator, _, _ = setup
    rows = [r for r in evaluator.rows["aref"] if r[1] == evaluator.rows["aref"][0][1]]
    assert all(p != rows[0][0] for p in evaluator.other_paths(rows))


def test_rows_whose_target_did_not_fit_are_not_counted(setup):
    from model import tasks

    run, evaluator, params, _ = setup
    rows = evaluator.rows["aref"]
    cut = (rows[0][0], rows[0][1], tasks.empty("aref", run.tokenizer, len(rows[0][2].inputs)))
    evaluator.rows["aref"] = [*rows, cut]  # an expression too long for max_len: all-zero mask
    try:
        m = _metrics(setup, params)
    finally:
        evaluator.rows["aref"] = rows
    assert m["aref/count"] == len(rows)
