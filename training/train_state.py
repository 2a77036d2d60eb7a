"""The training state, its shardings, initialisation and the jitted train step.

State is a plain dict: {"params", "opt_state", "step": int32[], "rng": uint32[2]}. The checkpoint
stores "params" on its own (the evaluation stage restores only that) and the rest as "train_state".
Per-step randomness is fold_in(rng, step), so a resumed run draws exactly the numbers the
uninterrupted run would have.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from model.locca import LocCa, init_params
from model.vit_weights import host_array, load_vit_params
from training import loc_targets, model_fns, sharding
from training.optim import trainable_labels

State = dict[str, Any]


def state_shardings(model: LocCa, tx: optax.GradientTransformation, mesh: Mesh,
                    sharding_cfg: Any) -> tuple[State, State]:
    """(abstract state with shardings, state shardings) without allocating anything."""
    params = jax.eval_shape(lambda r: init_params(model, r), jax.random.PRNGKey(0))
    opt_state = jax.eval_shape(tx.init, params)
    rep = sharding.replicated(mesh)
    shardings = {
        "params": sharding.tree_shardings(params, mesh, sharding_cfg),
        "opt_state": sharding.tree_shardings(opt_state, mesh, sharding_cfg),
        "step": rep,
        "rng": rep,
    }
    shapes = {"params": params, "opt_state": opt_state,
              "step": jax.ShapeDtypeStruct((), jnp.int32),
              "rng": jax.ShapeDtypeStruct((2,), jnp.uint32)}
    abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                            shapes, shardings)
    return abstract, shardings


def init_state(model: LocCa, tx: optax.GradientTransformation, shardings: State, seed: int,
               init_cfg: Any) -> State:
    """Fresh state placed with `shardings`; the encoder optionally from a big_vision .npz."""
    rng_init, rng_train = jax.random.split(jax.random.PRNGKey(seed))
    if init_cfg.get("encoder_npz"):
        params = jax.jit(lambda r: init_params(model, r),
                         out_shardings=shardings["params"])(rng_init)
        # Every process gets the whole tree (params sharded across hosts are all-gathered:
        # device_get cannot fetch other hosts' shards), loads the same .npz into it, and each
        # device takes its shard back.
        host = jax.tree.map(host_array, params)
        host["img"] = load_vit_params(init_cfg.encoder_npz, host["img"],
                                      dont_load=tuple(init_cfg.get("dont_load", ())))
        params = jax.tree.map(
            lambda x, sh: jax.make_array_from_callback(x.shape, sh, lambda idx: x[idx]),
            host, shardings["params"])
        opt_state = jax.jit(tx.init, out_shardings=shardings["opt_state"])(params)
    else:  # One program for both: compiling is most of a small run's start-up.
        def init(r):
            p = init_params(model, r)
            return p, tx.init(p)

        params, opt_state = jax.jit(
            init, out_shardings=(shardings["params"], shardings["opt_state"]))(rng_init)
    return {
        "params": params,
        "opt_state": opt_state,
        "step": jax.device_put(jnp.zeros((), jnp.int32), shardings["step"]),
        "rng": jax.device_put(rng_train, shardings["rng"]),
    }


def split_for_checkpoint(state: State) -> tuple[Any, dict[str, Any]]:
    """(params, train_state item) as laid out in the checkpoint."""
    return state["params"], {k: state[k] for k in ("opt_state", "step", "rng")}


def join_from_checkpoint(params: Any, train_state: dict[str, Any]) -> State:
    return {"params": params, **train_state}


def _trainable_norm(grads: Any, labels: Any) -> jax.Array:
    leaves = [g for g, lab in zip(jax.tree.leaves(grads), jax.tree.leaves(labels), strict=True)
              if lab == "train"]
    return optax.global_norm(leaves)


def make_train_step(model: LocCa, tx: optax.GradientTransformation,
                    lr_fn: Callable[[jax.Array], jax.Array], config: Any, mask_id: int,
                    abstract_params: Any) -> Callable[[State, dict], tuple[State, dict]]:
    """The (unjitted) step: state, batch -> new state, scalar metrics."""
    labels = trainable_labels(abstract_params, config.optim.get("frozen_pattern", ""))
    loss = functools.partial(
        model_fns.loss_fn, model=model,
        task_weights=dict(config.loss.task_weights),
        label_smoothing=float(config.loss.label_smoothing),
        parallel_prob=float(config.parallel_prob), mask_id=mask_id, train=True,
        loc_start=int(config.model.get("loc_start", 0)),
        num_loc=int(config.model.get("num_loc", 0)),
    )
    loc_sigma = loc_targets.sigma_schedule(
        float(config.loss.get("loc_sigma_start", 0.0)), float(config.loss.get("loc_sigma", 0.0)),
        int(config.loss.get("loc_sigma_steps", 0)) or int(config.total_steps))

    def train_step(state: State, batch: dict) -> tuple[State, dict]:
        step = state["step"]
        rng = jax.random.fold_in(state["rng"], step)
        sigma = loc_sigma(step)
        (value, aux), grads = jax.value_and_grad(
            lambda p: loss(p, batch=batch, rng=rng, loc_sigma=sigma), has_aux=True)(
                state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = {"loss": value, "lr": lr_fn(step), "grad_norm": _trainable_norm(grads, labels),
                   "param_norm": optax.global_norm(params), **aux}
        if not isinstance(sigma, float):
            metrics["loc_sigma"] = sigma
        new_state = {"params": params, "opt_state": opt_state, "step": step + 1,
                     "rng": state["rng"]}
        return new_state, metrics

    return train_step


def jit_train_step(train_step: Callable, shardings: State, mesh: Mesh) -> Callable:
    """jit with explicit shardings; the old state's buffers are donated to the new one."""
    return jax.jit(
        train_step,
        in_shardings=(shardings, sharding.batch_sharding(mesh)),
        out_shardings=(shardings, sharding.replicated(mesh)),
        donate_argnums=(0,),
    )


def numeric_batch(batch: dict[str, Any]) -> dict[str, np.ndarray]:
    """Drops non-numeric entries (ids, strings) that a device cannot hold."""
    return {k: v for k, v in batch.items()
            if isinstance(v, np.ndarray) and v.dtype.kind in "biuf"}
