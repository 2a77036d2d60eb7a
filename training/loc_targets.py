"""Soft targets for location tokens: a discretised Gaussian over neighbouring bins.

A box coordinate is one of `num_loc` (the tokenizer's) ordered bins, but plain cross-entropy treats bin 511
and bin 512 as unrelated classes: each bin is then learned from the few examples that hit it
exactly (~80 per bin in the demo's 20k examples), and a near miss costs as much as a far one.
Replacing the one-hot target of a location token by exp(-(k - bin)^2 / (2 sigma^2)) (normalised
over the bins, so the mass cut off at the image border goes to the in-range bins) lets
neighbouring bins share the signal; `sigma == 0` gives back the one-hot target exactly. Tokens that
are not location tokens keep their ordinary (optionally label-smoothed) cross-entropy.

`sigma_schedule` anneals the width: early in training a model cannot place a box more precisely
than its patch grid (112 px / 16 = 7 cells, ~146 bins each), so a target a few bins wide rewards
"the right cell" no more than a wild guess; a wide Gaussian does, and it then narrows towards
sharp targets (cosine, like a heatmap-regression curriculum).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Below this width (in bins) a traced sigma is treated as this: the Gaussian is then one-hot to
# float32 precision (the neighbours get exp(-0.5 / 0.05**2) = 0), without dividing by zero.
_MIN_TRACED_SIGMA = 0.05


def is_one_hot(sigma: float | jax.Array) -> bool:
    """Whether `sigma` is a static (Python number) width <= 0: plain one-hot targets, no Gaussian
    computed. A traced sigma (a schedule's value) is never static, whatever its value."""
    return isinstance(sigma, (int, float)) and sigma <= 0.0


def gaussian_bin_targets(bins: jax.Array, num_loc: int, sigma: float | jax.Array) -> jax.Array:
    """bins int[...] in [0, num_loc) -> float32[..., num_loc] distributions peaked at each bin.

    sigma is in bins: a Python float (<= 0 returns the one-hot distribution) or a traced scalar
    (a schedule's value; values near 0 give one-hot).
    """
    if is_one_hot(sigma):
        return jax.nn.one_hot(bins, num_loc, dtype=jnp.float32)
    if not isinstance(sigma, (int, float)):
        sigma = jnp.maximum(jnp.asarray(sigma, jnp.float32), _MIN_TRACED_SIGMA)
    k = jnp.arange(num_loc, dtype=jnp.float32)
    d = k - bins[..., None].astype(jnp.float32)
    w = jnp.exp(-0.5 * (d / sigma) ** 2)
    return w / jnp.sum(w, axis=-1, keepdims=True)


def sigma_schedule(start: float, end: float, steps: int):
    """step -> sigma: cosine from `start` at step 0 to `end` at `steps`, then `end`.

    start <= 0 (or start == end, or steps <= 0) gives the constant `end` as a Python float, so the
    loss keeps its static one-hot fast path when end == 0.
    """
    if start <= 0.0 or start == end or steps <= 0:
        return lambda step: float(end)

    def sigma(step: jax.Array) -> jax.Array:
        frac = jnp.clip(jnp.asarray(step, jnp.float32) / float(steps), 0.0, 1.0)
        return end + (start - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))

    return sigma


def loc_soft_xent(logits: jax.Array, targets: jax.Array, *, loc_start: int, num_loc: int,
                  sigma: float | jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Per-token cross-entropy with Gaussian targets on location tokens.

    logits float[..., V], targets int[...] -> float32[...]. A target in
    [loc_start, loc_start + num_loc) is scored against `gaussian_bin_targets(target - loc_start)`
    placed on the location ids (zero mass elsewhere in the vocabulary); any other target gets
    cross-entropy with `label_smoothing` (eps spread uniformly over the vocabulary), as
    `model_fns.token_xent`.
    """
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    if label_smoothing:
        nll = (1.0 - label_smoothing) * nll - label_smoothing * jnp.mean(logp, axis=-1)
    if num_loc <= 0 or is_one_hot(sigma):
        return nll
    bins = targets - loc_start
    is_loc = (bins >= 0) & (bins < num_loc)
    soft = gaussian_bin_targets(jnp.clip(bins, 0, num_loc - 1), num_loc, sigma)
    loc_logp = logp[..., loc_start:loc_start + num_loc]
    loc_nll = -jnp.sum(soft * loc_logp, axis=-1)
    return jnp.where(is_loc, loc_nll, nll)
