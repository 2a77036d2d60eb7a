"""Frozen-encoder features for the transfer and linear-probe evaluators.

The encoder is either the checkpoint's own `params["img"]` (config encoder="checkpoint", the
default: one result per step) or an exported one (encoder="PATH": a big_vision-format `.npz`,
e.g. WORKDIR/encoder.npz or another run's, such as a plain captioner's, so two pretrainings can be
compared on equal terms, or a transformers export directory from evaluation/export.py; "{workdir}"
in the path is replaced). It is loaded strictly through model/vit_weights.py into a ViT built
from the run's model config.
Features are computed once per (encoder, image set) and step, and shared between evaluators.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from evaluation.evaluators import base
from evaluation.images import ImageCache
from evaluation.predict import pad_batch


def _vit(model_config):
    from model.vit import ViT

    c = model_config
    return ViT(patch_size=c.patch_size, width=c.width, depth=c.depth, mlp_dim=c.mlp_dim,
               num_heads=c.num_heads, posemb=c.posemb, pool_type=c.pool_type)


def encoder_params(source: str, ctx: base.StepContext, shared: dict) -> tuple[str, object]:
    """(cache key, ViT params) for `source` ("checkpoint" or an .npz path)."""
    if source == "checkpoint":
        return f"step{ctx.step}", ctx.params["img"]
    from model import vit_weights

    path = source.replace("{workdir}", ctx.run.workdir)
    key = ("npz", path)
    if key not in shared:
        vit = _vit(ctx.run.model_config)
        size = int(ctx.run.model_config.image_size)
        init = jax.eval_shape(lambda r: vit.init(r, jnp.zeros((1, size, size, 3)))["params"],
                              jax.random.key(0))
        init = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), init)
        shared[key] = vit_weights.load_vit_params(path, init)
    return path, shared[key]


def encoder_fn(model_config, batch_size: int, shared: dict) -> Callable:
    """Jitted (vit params, float[B, H, W, 3]) -> float[B, N, D], built once per job."""
    key = ("vit_apply", batch_size)
    if key not in shared:
        vit = _vit(model_config)
        shared[key] = jax.jit(lambda p, x: vit.apply({"params": p}, x)[0])
    return shared[key]


def features(source: str, paths: Sequence[str], ctx: base.StepContext, shared: dict,
             images: ImageCache, batch_size: int = 32) -> np.ndarray:
    """float32[len(paths), N, D] frozen features (cached per step and image list)."""
    tag, params = encoder_params(source, ctx, shared)
    cache_key = ("features", tag, tuple(paths))
    cache = shared.setdefault("feature_cache", {})
    if cache_key not in cache:
        # Only the newest step's features are kept: a watch job moves forward through steps.
        for k in [k for k in cache if k[1] != tag]:
            del cache[k]
        fn = encoder_fn(ctx.run.model_config, batch_size, shared)
        out = []
        for i in range(0, len(paths), batch_size):
            chunk = list(paths[i : i + batch_size])
            x = pad_batch(images.batch(chunk), batch_size)
            out.append(np.asarray(fn(params, jnp.asarray(x)))[: len(chunk)])
        cache[cache_key] = np.concatenate(out)
    return cache[cache_key]
