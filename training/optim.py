"""Optimizer and learning-rate schedule from the training config (optax).

Parameter groups are chosen by regex over "/"-joined parameter paths (e.g. "img/embedding/kernel"):
- `frozen_pattern`: matching params get no update and hold no optimizer state.
- `lr_mults`: ((regex, multiplier), ...); the first match scales that param's whole update (the
  decoupled weight decay included), e.g. a pretrained encoder trained at 0.1x.
- `wd_pattern`: params that get decoupled weight decay (kernels only, by default).

Weight decay is decoupled in big_vision's sense: the update is
    -sched(t) * (lr * adam_direction + wd * param)
so `wd` is not multiplied by the peak learning rate, but does follow the schedule's shape.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

PyTree = Any


def path_str(path: Sequence[Any]) -> str:
    """'img/Transformer/encoderblock_0/...' from a jax tree path."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def schedule_multiplier(sched_cfg: Any, total_steps: int) -> Callable[[jax.Array], jax.Array]:
    """A function step -> multiplier in [0, 1] (times the peak lr).

    sched_cfg.name: "cosine" | "rsqrt" | "linear" | "constant"; warmup_steps (linear from 0);
    end_ratio (cosine/linear floor); timescale and cooldown_steps (rsqrt, as in big_vision).
    """
    name = sched_cfg.get("name", "cosine")
    warmup = int(sched_cfg.get("warmup_steps", 0))
    end_ratio = float(sched_cfg.get("end_ratio", 0.0))
    if name not in ("cosine", "rsqrt", "linear", "constant"):
        raise ValueError(f"unknown schedule {name!r}; use cosine, rsqrt, linear or constant")
    decay_steps = max(total_steps - warmup, 1)

    def fn(step):
        step = jnp.asarray(step, jnp.float32)
        warm = jnp.minimum(1.0, (step + 1.0) / warmup) if warmup > 0 else 1.0
        t = jnp.clip((step - warmup) / decay_steps, 0.0, 1.0)
        if name == "cosine":
            mult = end_ratio + (1.0 - end_ratio) * 0.5 * (1.0 + jnp.cos(jnp.pi * t))
        elif name == "linear":
            mult = 1.0 - (1.0 - end_ratio) * t
        elif name == "rsqrt":
            timescale = float(sched_cfg.get("timescale", max(warmup, 1)))
            mult = jax.lax.rsqrt(1.0 + jnp.maximum(step - warmup, 0.0) / timescale)
            cooldown = int(sched_cfg.get("cooldown_steps", 0))
            if cooldown > 0:
                mult = mult * jnp.clip((total_steps - step) / cooldown, 0.0, 1.0)
        else:
            mult = jnp.ones_like(step)
        return warm * mult

    return fn


def _first_match(name: str, rules: Sequence[tuple[str, float]], default: float) -> float:
    for pattern, value in rules:
        if re.search(pattern, name):
            return float(value)
    return default


def _scale_by_path(rules: Sequence[tuple[str, float]]) -> optax.GradientTransformation:
    """Multiplies each update by the first matching (regex, multiplier); others by 1."""

    def update(updates, state, params=None):
        del params
        scaled = jax.tree_util.tree_map_with_path(
            lambda p, u: u * _first_match(path_str(p), rules, 1.0), updates
        )
        return scaled, state

    return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def _decoupled_weight_decay(wd: float, pattern: str) -> optax.GradientTransformation:
    """Adds wd * param to the update of params whose path matches `pattern`."""
    regex = re.compile(pattern)

    def update(updates, state, params=None):
        if wd == 0.0:
            return updates, state
        if params is None:
            raise ValueError("weight decay needs params passed to optimizer.update")
        decayed = jax.tree_util.tree_map_with_path(
            lambda p, u, w: u + wd * w if regex.search(path_str(p)) else u, updates, params
        )
        return decayed, state

    return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def _direction(cfg: Any) -> optax.GradientTransformation:
    """The lr-free update direction of the chosen optimizer."""
    name = cfg.get("name", "adamw")
    if name == "adamw":
        return optax.scale_by_adam(b1=cfg.get("b1", 0.9), b2=cfg.get("b2", 0.999),
                                   eps=cfg.get("eps", 1e-8))
    if name == "adafactor":
        parts = [optax.scale_by_factored_rms(decay_rate=cfg.get("decay_rate", 0.8))]
        if cfg.get("b1", 0.0):
            parts.append(optax.ema(cfg.b1, debias=False))
        return optax.chain(*parts)
    if name == "sgd":
        return optax.trace(decay=cfg.get("b1", 0.0)) if cfg.get("b1", 0.0) else optax.identity()
    raise ValueError(f"unknown optimizer {name!r}; use adamw, adafactor or sgd")


def trainable_labels(params: PyTree, frozen_pattern: str) -> PyTree:
    """A tree of "train" / "frozen" labels, one per param leaf."""
    regex = re.compile(frozen_pattern) if frozen_pattern else None
    return jax.tree_util.tree_map_with_path(
        lambda p, _: "frozen" if regex is not None and regex.search(path_str(p)) else "train",
        params,
    )


def make_optimizer(
    optim_cfg: Any, total_steps: int, params: PyTree
) -> tuple[optax.GradientTransformation, Callable[[jax.Array], jax.Array]]:
    """Returns (optax transform, lr_fn step -> learning rate) for `params` (arrays or shapes)."""
    sched = schedule_multiplier(optim_cfg.schedule, total_steps)
    lr = float(optim_cfg.lr)
    parts = []
    if optim_cfg.get("grad_clip", 0.0):
        parts.append(optax.clip_by_global_norm(optim_cfg.grad_clip))
    parts += [
        _direction(optim_cfg),
        optax.scale(lr),
        _decoupled_weight_decay(float(optim_cfg.get("weight_decay", 0.0)),
                                optim_cfg.get("wd_pattern", r"/kernel$")),
        _scale_by_path(tuple(tuple(r) for r in optim_cfg.get("lr_mults", ()))),
        optax.scale_by_schedule(lambda step: -sched(step)),
    ]
    inner = optax.chain(*parts)
    labels = trainable_labels(params, optim_cfg.get("frozen_pattern", ""))
    tx = optax.multi_transform({"train": inner, "frozen": optax.set_to_zero()}, labels)
    return tx, lambda step: lr * sched(step)
