"""LocCa: ViT encoder + captioning decoder over location-aware tasks (one shared decoder).

    model = LocCa(get_config("tiny", vocab_size=tok.vocab_size))
    params = model.init(rng, images, inputs)["params"]        # {"img": ViT, "txt": Decoder}
    logits = model.apply({"params": params}, images, inputs, parallel=par)
    enc = model.apply({"params": params}, images, method="encode")
    logits = model.apply({"params": params}, enc, inputs, method="decode")

The paper trains all three tasks on every example: one `encode` and one `decode` per task. Dropout
(when configured) needs `rngs={"dropout": key}` with `train=True`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from model import generate
from model.decoder import Decoder, make_incremental
from model.vit import ViT

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}  # config.model.dtype -> JAX dtype


def _dtype(name: str) -> Any:
    return DTYPES[name]


class LocCa(nn.Module):
    """The LocCa model, built from a model ConfigDict (model/configs.py)."""

    config: ml_collections.ConfigDict

    def __post_init__(self) -> None:
        # Freeze a mutable ConfigDict: Flax hashes modules (e.g. `jax.jit(model.apply)`).
        if not isinstance(self.config, ml_collections.FrozenConfigDict):
            object.__setattr__(self, "config", ml_collections.FrozenConfigDict(self.config))
        super().__post_init__()

    def setup(self) -> None:
        c = self.config
        dtype = _dtype(c.dtype)
        self.img = ViT(patch_size=c.patch_size, width=c.width, depth=c.depth,
                       mlp_dim=c.mlp_dim, num_heads=c.num_heads, posemb=c.posemb,
                       pool_type=c.pool_type, dropout=c.enc_dropout, dtype=dtype)
        self.txt = Decoder(vocab_size=c.vocab_size, width=c.dec_width, depth=c.dec_depth,
                           num_heads=c.dec_num_heads, mlp_dim=c.dec_mlp_dim,
                           max_len=c.max_len, dropout=c.dec_dropout, pad_id=c.pad_id,
                           dtype=dtype, loc_start=c.get("loc_start", 0),
                           num_loc=c.get("num_loc", 0),
                           loc_embed_init=c.get("loc_embed_init", "normal"),
                           loc_head_init=c.get("loc_head_init", "zeros"),
                           loc_head_sigma=c.get("loc_head_sigma", 0.1))

    def encode(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        """images float[B, H, W, 3] in [-1, 1] -> encoder tokens float[B, N, D] (after the final LN)."""
        encoded, _ = self.img(images, train=train)
        return encoded

    def decode(self, encoded: jax.Array, inputs: jax.Array, *, parallel: jax.Array | None = None,
               train: bool = False, **cache_args: Any) -> Any:
        """encoded float[B, N, D], inputs int[B, L], parallel bool[B] | None -> float32[B, L, V].

        `parallel[b]` True makes example b's self-attention bidirectional (CapPa); its target
        inputs must already be mask tokens (tasks.parallel_inputs). None means all causal.
        `cache_args` (return_cache / cache, pos) are the KV-cache modes of `Decoder.__call__`.
        """
        return self.txt(encoded, inputs, parallel, train=train, **cache_args)

    def __call__(self, images: jax.Array, inputs: jax.Array, *,
                 parallel: jax.Array | None = None, train: bool = False) -> jax.Array:
        """images float[B, H, W, 3], inputs int[B, L] -> logits float32[B, L, V]."""
        return self.decode(self.encode(images, train=train), inputs, parallel=parallel,
                           train=train)


def init_params(model: LocCa, rng: jax.Array, batch_size: int = 1) -> dict[str, Any]:
    """Random params for `model` from dummy inputs of the configured shapes (float32)."""
    c = model.config
    images = jnp.zeros((batch_size, c.image_size, c.image_size, 3), jnp.float32)
    inputs = jnp.zeros((batch_size, c.max_len), jnp.int32)
    return model.init(rng, images, inputs)["params"]


def param_shapes(model: LocCa) -> dict[str, Any]:
    """Abstract params (jax.ShapeDtypeStruct leaves) without allocating: for sharding and tests."""
    return jax.eval_shape(lambda r: init_params(model, r), jax.random.key(0))


def make_decode_fn(model: LocCa, params: Any):
    """`decode_fn(encoded float[B, N, D], inputs int[B, L]) -> logits` for model/generate.py."""

    def decode_fn(encoded: jax.Array, inputs: jax.Array) -> jax.Array:
        return model.apply({"params": params}, encoded, inputs, method="decode")

    return decode_fn


def make_incremental_decoder(model: LocCa, params: Any) -> generate.IncrementalDecoder:
    """The KV-cached decoder for model/generate.py: the tokens of `make_decode_fn` (but where two
    candidates tie within float rounding), a fraction of the work (one single-position pass per
    generated token)."""
    return make_incremental(
        lambda encoded, inputs, **kw: model.apply({"params": params}, encoded, inputs,
                                                  method="decode", **kw))
