"""Named model functions shared by the trainer and any evaluator: loss and predictions.

Nothing here knows about a specific evaluator. The loss encodes each image once and decodes all
active tasks in ONE decoder pass over a [B * R] batch laid out example-major (example b's R rows,
one per task or K per location task with data.regions_per_task, are b * R .. b * R + R - 1), so
every device keeps its own examples' rows and no resharding is needed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from model.tasks import TASKS, parallel_inputs
from training.loc_targets import is_one_hot, loc_soft_xent

Batch = Mapping[str, jax.Array]


def active_tasks(task_weights: Mapping[str, float]) -> tuple[str, ...]:
    """Tasks with a non-zero loss weight (a zero-weight task is not decoded at all)."""
    tasks = tuple(t for t in TASKS if float(task_weights.get(t, 0.0)) > 0.0)
    if not tasks:
        raise ValueError(f"every task weight is zero ({dict(task_weights)}); nothing to train")
    return tasks


def token_xent(logits: jax.Array, targets: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Per-token cross-entropy. logits float[..., V], targets int[...] -> float32[...]."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    if label_smoothing == 0.0:
        return nll
    # Smoothed targets: (1 - eps) on the label, eps spread uniformly over the vocabulary.
    return (1.0 - label_smoothing) * nll - label_smoothing * jnp.mean(logp, axis=-1)


def task_rows(batch: Batch, tasks: Sequence[str]) -> dict[str, int]:
    """Decoder rows each task has per example: 1 for [B, L] arrays, K for [B, K, L] ones."""
    return {t: (batch[f"{t}/inputs"].shape[1] if batch[f"{t}/inputs"].ndim == 3 else 1)
            for t in tasks}


def stack_tasks(batch: Batch, tasks: Sequence[str], *, parallel: jax.Array | None = None,
                mask_id: int | None = None) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Interleaves tasks into one decoder batch.

    Each task's arrays are [B, L] (one row per example) or [B, K, L] (K rows, e.g. K regions of
    data.regions_per_task). Returns inputs int32[B*R, L], targets int32[B*R, L], loss_mask
    float32[B*R, L] and parallel bool[B*R], R the rows per example over `tasks` (task_rows),
    example-major: example b's rows are b*R .. b*R + R - 1, in task order. `parallel` bool[B]
    applies to the "cap" rows only (CapPa): their target inputs become `mask_id`
    (tasks.parallel_inputs) and their attention is bidirectional.
    """
    ins, tgts, masks, pars = [], [], [], []

    def rows(a):  # [B, L] -> [B, 1, L]; [B, K, L] as is
        return a[:, None] if a.ndim == 2 else a

    for task in tasks:
        x, m = batch[f"{task}/inputs"], batch[f"{task}/loss_mask"]
        p = jnp.zeros(x.shape[:-1], bool)
        if task == "cap" and parallel is not None:
            x = jnp.where(parallel[:, None], parallel_inputs(x, m, mask_id), x)
            p = parallel
        ins.append(rows(x))
        tgts.append(rows(batch[f"{task}/targets"]))
        masks.append(rows(m))
        pars.append(p[:, None] if p.ndim == 1 else p)

    def interleave(xs):
        stacked = jnp.concatenate(xs, axis=1)  # [B, R, ...]
        return stacked.reshape((-1,) + stacked.shape[2:])

    return interleave(ins), interleave(tgts), interleave(masks), interleave(pars)


def model_images(images: jax.Array) -> jax.Array:
    """Loader images -> the model's input float32[B, H, W, 3] in [-1, 1].

    uint8[B, H, W, 3] in [0, 255] (training/data.py's default: the host ships a quarter of the
    bytes and skips a float pass) is scaled here, inside the jitted step; float images are taken
    as already in [-1, 1] (data.image_dtype="float32", or callers that build their own batches).
    """
    if images.dtype == jnp.uint8:
        # x - 127.5 is exact, so one rounding (the division) remains: no mul+add that XLA may or
        # may not fuse into an FMA depending on the sharding, which would make a 1-device and
        # an 8-device run differ. Within 1 ulp of preprocess.to_value_range(image, -1, 1).
        return (images.astype(jnp.float32) - jnp.float32(127.5)) / jnp.float32(127.5)
    return images


def loss_fn(params: Any, model: Any, batch: Batch, rng: jax.Array, *,
            task_weights: Mapping[str, float], label_smoothing: float = 0.0,
            parallel_prob: float = 0.0, mask_id: int = 0,
            train: bool = True, loc_sigma: float | jax.Array = 0.0, loc_start: int = 0,
            num_loc: int = 0) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The LocCa training loss and its per-task parts.

    batch: "image" uint8 or float[B, H, W, 3] (see model_images) and "{task}/inputs|targets|loss_mask"
    [B, L] or [B, K, L] per task (stack_tasks).
    Loss = sum_t w_t * (sum of task t's masked token losses / its masked token count over the
    global batch). loc_sigma > 0 scores location targets (ids [loc_start, loc_start + num_loc))
    against a Gaussian over neighbouring bins (training/loc_targets.py; a traced value is a
    schedule's). Returns (loss, aux) with aux "{task}/loss", "{task}/accuracy", "{task}/tokens".
    """
    tasks = active_tasks(task_weights)
    rng_par, rng_drop = jax.random.split(rng)
    images = model_images(batch["image"])
    b = images.shape[0]
    parallel = None
    if parallel_prob > 0.0 and "cap" in tasks:
        parallel = jax.random.bernoulli(rng_par, parallel_prob, (b,))
    inputs, targets, mask, par = stack_tasks(batch, tasks, parallel=parallel, mask_id=mask_id)
    n_rows = task_rows(batch, tasks)
    r = sum(n_rows.values())
    rngs = {"dropout": rng_drop}
    encoded = model.apply({"params": params}, images, train=train, rngs=rngs, method="encode")
    # [B, N, D] -> [B*R, N, D], example-major like the stacked task rows.
    encoded = jnp.repeat(encoded, r, axis=0)
    logits = model.apply({"params": params}, encoded, inputs,
                         parallel=par if parallel is not None else None, train=train,
                         rngs=rngs, method="decode")
    if not is_one_hot(loc_sigma):
        xent = loc_soft_xent(logits, targets, loc_start=loc_start, num_loc=num_loc,
                             sigma=loc_sigma, label_smoothing=label_smoothing)
    else:
        xent = token_xent(logits, targets, label_smoothing)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    xent, correct, mask = (a.reshape(b, r, -1) for a in (xent, correct, mask))
    aux: dict[str, jax.Array] = {}
    total = jnp.zeros((), jnp.float32)
    start = 0
    for task in tasks:
        rows = slice(start, start + n_rows[task])
        start += n_rows[task]
        m = mask[:, rows]
        count = jnp.sum(m)
        denom = jnp.maximum(count, 1.0)
        task_loss = jnp.sum(xent[:, rows] * m) / denom
        aux[f"{task}/loss"] = task_loss
        aux[f"{task}/accuracy"] = jnp.sum(correct[:, rows] * m) / denom
        aux[f"{task}/tokens"] = count
        total = total + float(task_weights[task]) * task_loss
    return total, aux


def encode(params: Any, model: Any, images: jax.Array) -> jax.Array:
    """images [B, H, W, 3] (see model_images) -> encoder tokens float[B, N, D] (inference mode)."""
    return model.apply({"params": params}, model_images(images), method="encode")


def predict_logits(params: Any, model: Any, images: jax.Array, inputs: jax.Array) -> jax.Array:
    """Teacher-forced logits float32[B, L, V] for inputs int[B, L] (autoregressive attention)."""
    return model.apply({"params": params}, model_images(images), inputs)
