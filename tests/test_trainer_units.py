"""Trainer building blocks: schedules, optimizer groups, sharding rules, loss, input checks."""

from __future__ import annotations

import re
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from model.configs import get_config as model_config
from model.locca import LocCa, init_params
from model.tasks import TASKS
from training import model_fns, sharding, trainer
from training.configs.locca import get_config
from training.optim import make_optimizer, schedule_multiplier


def optim_cfg(**kw) -> ml_collections.ConfigDict:
    c = get_config("micro").optim
    c.update(kw)
    return c


def test_warmup_cosine_and_rsqrt():
    cos = schedule_multiplier(ml_collections.ConfigDict(
        dict(name="cosine", warmup_steps=10, end_ratio=0.1)), total_steps=110)
    assert float(cos(0)) == pytest.approx(0.1) and float(cos(9)) == pytest.approx(1.0)
    assert float(cos(60)) == pytest.approx(0.55, abs=1e-3)  # half-way down the cosine
    assert float(cos(110)) == pytest.approx(0.1)
    rs = schedule_multiplier(ml_collections.ConfigDict(
        dict(name="rsqrt", warmup_steps=0, timescale=100, cooldown_steps=10)), total_steps=1000)
    assert float(rs(300)) == pytest.approx(0.5)
    assert float(rs(995)) < 0.5 * float(rs(989))  # linear cooldown to zero at the end
    with pytest.raises(ValueError, match="unknown schedule"):
        schedule_multiplier(ml_collections.ConfigDict(dict(name="step")), 10)


def test_frozen_lr_mult_and_decoupled_weight_decay():
    params = {"img": {"w": {"kernel": jnp.ones((4, 4))}}, "txt": {"a": {"kernel": jnp.ones(3)},
                                                               "b": {"bias": jnp.ones(3)}}}
    cfg = optim_cfg(lr=0.5, weight_decay=0.1, grad_clip=0.0, frozen_pattern="^img/",
                    lr_mults=(("^txt/b", 0.2),))
    cfg.schedule = ml_collections.ConfigDict(dict(name="constant", warmup_steps=0))
    tx, lr_fn = make_optimizer(cfg, 10, params)
    state = tx.init(params)
    # A frozen param holds no optimizer state at all (no Adam moments).
    assert len(jax.tree.leaves(state)) == 2 * 2 + 2  # mu, nu of 2 trainable + 2 step counters
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, state, params)
    np.testing.assert_array_equal(updates["img"]["w"]["kernel"], 0.0)
    # Zero gradient: only decay, wd * param -- NOT lr * wd * param (decoupled).
    np.testing.assert_allclose(updates["txt"]["a"]["kernel"], -0.1, rtol=1e-6)
    np.testing.assert_array_equal(updates["txt"]["b"]["bias"], 0.0)  # biases are not decayed
    ones = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(ones, state, params)
    # Adam's first step moves by lr (times the group's multiplier) per unit gradient sign.
    np.testing.assert_allclose(updates["txt"]["b"]["bias"], -0.5 * 0.2, rtol=1e-4)
    assert float(lr_fn(3)) == pytest.approx(0.5)


def test_adafactor_builds_and_steps():
    params = {"txt": {"k": {"kernel": jnp.ones((8, 4))}}}
    tx, _ = make_optimizer(optim_cfg(name="adafactor", b1=0.0), 10, params)
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
    assert np.all(np.asarray(updates["txt"]["k"]["kernel"]) < 0)


def test_sharding_rules_pick_a_divisible_dimension():
    mesh = types.SimpleNamespace(shape={"data": 4, "fsdp": 2})
    spec = sharding._spec  # the rule engine, on a stand-in mesh shape
    P = jax.sharding.PartitionSpec
    assert spec("img/k", (192, 768), (("", "fsdp"),), mesh, 64) == P(None, "fsdp")
    assert spec("img/k", (3, 5), (("", "fsdp"),), mesh, 1) == P()  # nothing divisible
    assert spec("img/b", (768,), (("", "fsdp"),), mesh, 1024) == P()  # too small to split
    assert spec("txt/k", (64, 64), (("^txt", "replicate"), ("", "fsdp")), mesh, 1) == P()
    assert spec("x", (8, 6), (("", ("fsdp", None)),), mesh, 1) == P("fsdp", None)
    assert spec("x", (8,), (("", ("fsdp", None)),), mesh, 1) == P()  # rank mismatch
    with pytest.raises(SystemExit, match="needs 3 devices"):
        sharding.make_mesh(ml_collections.ConfigDict(dict(data=3, fsdp=1)))


def _batch(b: int, length: int, vocab: int, size: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    out = {"image": rng.uniform(-1, 1, (b, size, size, 3)).astype(np.float32)}
    for t in TASKS:
        out[f"{t}/inputs"] = rng.integers(5, vocab, (b, length)).astype(np.int32)
        out[f"{t}/targets"] = rng.integers(5, vocab, (b, length)).astype(np.int32)
        out[f"{t}/loss_mask"] = (rng.random((b, length)) < 0.5).astype(np.float32)
    return out


def test_loss_matches_a_per_task_reference():
    cfg = model_config("tiny", image_size=32, width=32, depth=1, mlp_dim=64, num_heads=2,
                       dec_depth=1, max_len=8, vocab_size=50)
    model = LocCa(cfg)
    params = init_params(model, jax.random.PRNGKey(0))
    # Non-zero logits: perturb the zero-initialised output projection.
    params = jax.tree.map(lambda x: x + 0.05 * jnp.sin(jnp.arange(x.size).reshape(x.shape)),
                          params)
    batch = _batch(3, 8, 50, 32)
    batch["gcap/loss_mask"][:] = 0.0  # a task with no targets contributes 0, not NaN
    weights = {"cap": 1.0, "aref": 2.0, "gcap": 1.0}
    loss, aux = jax.jit(lambda p, b: model_fns.loss_fn(
        p, model, b, jax.random.PRNGKey(1), task_weights=weights, train=False))(params, batch)
    all_logits = jax.jit(lambda p, b: [model.apply({"params": p}, b["image"], b[f"{t}/inputs"])
                                       for t in TASKS])(params, batch)
    want = 0.0
    for t, logits in zip(TASKS, all_logits, strict=True):
        logp = np.asarray(jax.nn.log_softmax(logits))
        nll = -np.take_along_axis(logp, batch[f"{t}/targets"][..., None], -1)[..., 0]
        m = batch[f"{t}/loss_mask"]
        task = (nll * m).sum() / max(m.sum(), 1.0)
        np.testing.assert_allclose(aux[f"{t}/loss"], task, rtol=1e-5)
        want += weights[t] * task
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    assert float(aux["gcap/loss"]) == 0.0
    # A zero-weight task is not decoded at all: its metrics are absent.
    assert model_fns.active_tasks({"cap": 1.0, "aref": 0.0, "gcap": 0.0}) == ("cap",)
    with pytest.raises(ValueError, match="every task weight is zero"):
        model_fns.active_tasks({"cap": 0.0})


def test_k_region_rows_score_as_one_pooled_task():
    """data.regions_per_task K > 1: aref/gcap arrive as [B, K, L]; each task's loss pools its
    B * K rows' target tokens, the same as decoding every row on its own."""
    cfg = model_config("tiny", image_size=32, width=32, depth=1, mlp_dim=64, num_heads=2,
                       dec_depth=1, max_len=8, vocab_size=50)
    model = LocCa(cfg)
    params = init_params(model, jax.random.PRNGKey(0))
    params = jax.tree.map(lambda x: x + 0.05 * jnp.sin(jnp.arange(x.size).reshape(x.shape)),
                          params)
    b, k = 2, 3
    batch = _batch(b, 8, 50, 32)
    rows = _batch(b * k, 8, 50, 32, seed=1)
    for t in ("aref", "gcap"):
        for f in ("inputs", "targets", "loss_mask"):
            batch[f"{t}/{f}"] = rows[f"{t}/{f}"].reshape(b, k, 8)
    weights = {"cap": 1.0, "aref": 2.0, "gcap": 1.0}
    loss, aux = jax.jit(lambda p, x: model_fns.loss_fn(
        p, model, x, jax.random.PRNGKey(1), task_weights=weights, train=False))(params, batch)
    assert model_fns.task_rows(batch, TASKS) == {"cap": 1, "aref": k, "gcap": k}
    apply = jax.jit(lambda p, im, x: model.apply({"params": p}, im, x))
    want = 0.0
    for t in TASKS:
        ins, tgts, m = (batch[f"{t}/{f}"] for f in ("inputs", "targets", "loss_mask"))
        if ins.ndim == 2:
            ins, tgts, m = ins[:, None], tgts[:, None], m[:, None]
        total = count = 0.0
        for j in range(ins.shape[1]):
            logp = np.asarray(jax.nn.log_softmax(apply(params, batch["image"], ins[:, j])))
            nll = -np.take_along_axis(logp, tgts[:, j][..., None], -1)[..., 0]
            total += (nll * m[:, j]).sum()
            count += m[:, j].sum()
        np.testing.assert_allclose(aux[f"{t}/loss"], total / count, rtol=1e-5)
        np.testing.assert_allclose(aux[f"{t}/tokens"], count)
        want += weights[t] * total / count
    np.testing.assert_allclose(loss, want, rtol=1e-5)


def test_label_smoothing_is_the_smoothed_target_cross_entropy():
    logits = jnp.asarray([[2.0, 0.0, -1.0, 0.5]])
    targets = jnp.asarray([0])
    eps = 0.1
    q = np.full(4, eps / 4)
    q[0] += 1 - eps
    want = -(q * np.asarray(jax.nn.log_softmax(logits[0]))).sum()
    np.testing.assert_allclose(model_fns.token_xent(logits, targets, eps)[0], want, rtol=1e-6)


def test_parallel_prediction_masks_cap_inputs_only():
    batch = {f"{t}/{k}": jnp.asarray(_batch(2, 6, 40, 8)[f"{t}/{k}"]) for t in TASKS
             for k in ("inputs", "targets", "loss_mask")}
    par = jnp.asarray([True, False])
    inputs, _, mask, p = model_fns.stack_tasks(batch, TASKS, parallel=par, mask_id=3)
    assert inputs.shape == (6, 6) and p.tolist() == [True, False, False, False, False, False]
    cap0 = np.asarray(batch["cap/inputs"][0])
    shifted = np.concatenate([[0.0], np.asarray(batch["cap/loss_mask"][0])[:-1]]) > 0
    np.testing.assert_array_equal(inputs[0], np.where(shifted, 3, cap0))
    np.testing.assert_array_equal(inputs[3], batch["cap/inputs"][1])  # not parallel: unchanged
    np.testing.assert_array_equal(inputs[1], batch["aref/inputs"][0])  # example-major layout


def test_missing_inputs_are_one_clear_line(tmp_path):
    c = get_config("micro")
    c.tokenizer = str(tmp_path / "nope.model")
    with pytest.raises(SystemExit, match="--config.tokenizer"):
        trainer.check_inputs(c)
    (tmp_path / "tok.model").write_bytes(b"x")
    c.tokenizer = str(tmp_path / "tok.model")
    c.data.train_glob = str(tmp_path / "none-*.array_record")
    with pytest.raises(SystemExit, match="--config.data.train_glob"):
        trainer.check_inputs(c)


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("log_every", 0, "--config.log_every must be >= 1"),
        ("checkpoint.interval", 0, "--config.checkpoint.interval must be >= 1"),
        ("model.dtype", "float16", "--config.model.dtype 'float16': use float32 or bfloat16"),
        ("loss.task_weights", {"cap": 0.0, "aref": 0.0, "gcap": 0.0},
         "--config.loss.task_weights: every task weight is zero"),
        ("optim.name", "lion", "--config.optim: unknown optimizer 'lion'"),
    ],
)
def test_bad_config_values_are_one_clear_line(tmp_path, key, value, message):
    """Each of these was a traceback (a ZeroDivisionError after the first step, a KeyError, a
    sharding error) instead of a line naming the flag."""
    import train_fixtures

    train_fixtures.write_shards(str(tmp_path), num_records=8)
    train_fixtures.write_tokenizer(str(tmp_path / "tok.model"))
    c = get_config("micro")
    c.tokenizer = str(tmp_path / "tok.model")
    c.data.train_glob = str(tmp_path / "train-*.array_record")
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
    with pytest.raises(SystemExit, match=re.escape(message)):
        trainer.train(c, str(tmp_path / "work"))


def test_a_batch_the_devices_cannot_split_is_one_clear_line(tmp_path):
    import os
    import subprocess
    import sys

    import train_fixtures

    train_fixtures.write_shards(str(tmp_path), num_records=8)
    train_fixtures.write_tokenizer(str(tmp_path / "tok.model"))
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "training/run.py", "--config=training/configs/locca.py:micro",
         f"--workdir={tmp_path / 'work'}", f"--config.tokenizer={tmp_path / 'tok.model'}",
         f"--config.data.train_glob={tmp_path}/train-*.array_record", "--config.batch_size=3"],
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), env=env,
        capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "batch_size 3 is not divisible by the mesh's 2 devices" in proc.stderr


def test_metrics_rows_past_the_resumed_step_are_dropped(tmp_path):
    """A run killed after its last checkpoint logged steps the resumed run logs again: the file
    keeps one row per step (the resumed run's), in order."""
    import json

    from training import metrics as metrics_lib

    w = metrics_lib.MetricsWriter(str(tmp_path))
    for step in (1, 2, 3, 4, 5):  # killed after step 5, last checkpoint at step 3
        w.write(step, {"loss": float(step)})
    w.close()
    w = metrics_lib.MetricsWriter(str(tmp_path), start_step=3)
    for step in (4, 5, 6):
        w.write(step, {"loss": 10.0 * step})
    w.close()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in rows] == [1.0, 2.0, 3.0, 40.0, 50.0, 60.0]
    # A fresh run (start 0) of the same workdir keeps nothing later than step 0.
    metrics_lib.MetricsWriter(str(tmp_path), start_step=0).close()
    assert (tmp_path / "metrics.jsonl").read_text() == ""
