"""Every shipped training config builds its model, optimizer and train step (shapes only)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from model.locca import LocCa, init_params
from model.tasks import TASKS
from training.configs import locca as locca_configs
from training.optim import make_optimizer
from training.train_state import make_train_step


@pytest.mark.parametrize("variant", locca_configs.VARIANTS)
def test_config_builds(variant: str):
    config = locca_configs.get_config(variant)
    doc = locca_configs._SETUP[variant].__doc__.strip()
    assert doc.startswith("python training/run.py --config training/configs/locca.py:" + variant)
    model = LocCa(config.model)
    params = jax.eval_shape(lambda r: init_params(model, r), jax.random.PRNGKey(0))
    tx, lr_fn = make_optimizer(config.optim, config.total_steps, params)
    opt_state = jax.eval_shape(tx.init, params)
    state = {"params": params, "opt_state": opt_state,
             "step": jax.ShapeDtypeStruct((), jnp.int32),
             "rng": jax.ShapeDtypeStruct((2,), jnp.uint32)}
    b, s, length = 2, config.model.image_size, config.model.max_len
    batch = {"image": jax.ShapeDtypeStruct((b, s, s, 3), jnp.float32)}
    for task in TASKS:
        batch[f"{task}/inputs"] = jax.ShapeDtypeStruct((b, length), jnp.int32)
        batch[f"{task}/targets"] = jax.ShapeDtypeStruct((b, length), jnp.int32)
        batch[f"{task}/loss_mask"] = jax.ShapeDtypeStruct((b, length), jnp.float32)
    step = make_train_step(model, tx, lr_fn, config, mask_id=4, abstract_params=params)
    new_state, metrics = jax.eval_shape(step, state, batch)
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    assert metrics["loss"].shape == () and metrics["grad_norm"].shape == ()
    assert config.batch_size % 8 == 0 or variant == "micro"
    assert config.model.image_size % config.model.patch_size == 0


def test_paper_recipe():
    c = locca_configs.get_config("B16")
    assert (c.batch_size, c.optim.lr, c.optim.weight_decay, c.optim.grad_clip) == (
        8192, 1e-3, 1e-4, 1.0)
    assert c.optim.schedule.name == "cosine" and c.optim.schedule.warmup_steps == 10_000
    assert c.model.image_size == 224 and c.model.max_len == 64
    assert 8.9e9 < c.total_steps * c.batch_size < 9.1e9


def test_unknown_variant_names_the_choices():
    with pytest.raises(ValueError, match="tiny, cap_tiny"):
        locca_configs.get_config("huge")


def test_one_config_string_parser_for_model_and_eval():
    from evaluation.configs import sample as eval_configs
    from model.configs import parse_arg

    assert parse_arg("tiny,image_size=128,loc_head_sigma=0.05,dtype=bfloat16,depth=-2") == (
        "tiny", {"image_size": 128, "loc_head_sigma": 0.05, "dtype": "bfloat16", "depth": -2})
    assert parse_arg("refcoco,splits=val+test,lr=1e-3") == (
        "refcoco", {"splits": "val+test", "lr": 1e-3})
    with pytest.raises(ValueError, match="'dtype' must look like key=value"):
        parse_arg("tiny,dtype")
    # The eval configs go through the same parser: ints, strings and the default variant.
    c = eval_configs.get_config("refcoco,batch_size=4,splits=val+testA,data_dir=d")
    assert (c.batch_size, tuple(c.evaluators.rec.splits)) == (4, ("val", "testA"))
    assert set(eval_configs.get_config("").evaluators) >= {"rec", "rec_transfer", "captioning"}
    with pytest.raises(ValueError, match="must look like key=value"):
        eval_configs.get_config("rec,batch_size")


def test_each_training_setting_is_stated_once():
    """task_weights live in loss, parallel_prob at the top, the loader's inputs in data.train_glob
    and model; the trainer hands them to the loader (what users type still reaches it)."""
    from training import trainer

    c = locca_configs.get_config("cap_tiny")
    assert not {"task_weights", "paths", "image_size", "text_len"} & set(c.data)
    assert "parallel_prob" not in c.model and c.parallel_prob == 0.0
    c.loss.task_weights.cap = 2.0
    c.data.train_glob = "shards/train-*.array_record"
    c.model.image_size = 96
    loader = trainer.data_config(c)
    assert dict(loader.task_weights) == {"cap": 2.0, "aref": 0.0, "gcap": 0.0}
    assert (loader.paths, loader.image_size, loader.text_len, loader.task_mix) == (
        "shards/train-*.array_record", 96, c.model.max_len, "sample")
