"""LocCa / CapPa text decoder: pre-LN blocks of self-attention, cross-attention and a GELU MLP.

Parameter names follow big_vision's CapPa decoder (proj/cappa/cappa.py: `EmbedTargets`,
`EncDecBlock{i}/{LayerNorm1,SelfAttn,LayerNorm2,CrossAttn,LayerNorm3,MLP}`, `LayerNorm`,
`LogitsDense`); the position embedding lives inside the decoder as `pos_embedding`.

Attention masks (why they look like this):
- causal self-attention for autoregressive (AR) examples;
- CapPa parallel prediction: for examples with `parallel[b]` True, self-attention is bidirectional.
  The caller has already replaced every target input token by the mask token
  (`model.tasks.parallel_inputs`; the trainer does it for a `parallel_prob` fraction of the Cap
  examples), so the model predicts all target tokens at once from the image and the prefix.
  `parallel_prob == 0` gives a plain AR captioner.
- keys whose input token is `pad_id` are never attended to, in both modes, so padding (and the
  unused tail of a generation buffer) cannot leak into real positions.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from model.vit import MlpBlock


def attention_mask(inputs: jnp.ndarray, parallel: jnp.ndarray | None, pad_id: int) -> jnp.ndarray:
    """Self-attention mask bool[B, 1, L, L] (query i may attend key j).

    inputs: int[B, L]; parallel: bool[B] or None (all causal).
    """
    length = inputs.shape[1]
    causal = jnp.tril(jnp.ones((length, length), bool))[None]  # [1, L, L]
    if parallel is not None:
        causal = causal | jnp.asarray(parallel, bool)[:, None, None]
    keys_ok = (inputs != pad_id)[:, None, :]  # [B, 1, L]
    return (causal & keys_ok)[:, None]


def sincos_loc_embedding(num_loc: int, width: int, min_wavelength: float = 16.0) -> jnp.ndarray:
    """float32[num_loc, width] sin/cos features of the bin value, unit variance per entry.

    Wavelengths run geometrically from 4 * num_loc down to `min_wavelength` bins, so the low
    frequencies make neighbouring bins nearly identical and the high ones still tell them apart.
    """
    half = width // 2
    wavelengths = (4.0 * num_loc) * (min_wavelength / (4.0 * num_loc)) ** (
        jnp.arange(half, dtype=jnp.float32) / max(half - 1, 1))
    angles = jnp.arange(num_loc, dtype=jnp.float32)[:, None] * (2 * jnp.pi / wavelengths)[None]
    emb = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=1) * jnp.sqrt(2.0)
    return jnp.pad(emb, ((0, 0), (0, width - 2 * half)))


def embedding_init(loc_start: int, num_loc: int, kind: str):
    """The token-embedding initializer: N(0, 1) rows, location rows sincos when kind == "sincos"."""
    normal = nn.initializers.normal(stddev=1.0)
    if kind == "normal" or num_loc <= 0:
        return normal
    if kind != "sincos":
        raise ValueError(f"loc_embed_init must be 'normal' or 'sincos', got {kind!r}")

    def init(key, shape, dtype=jnp.float32):
        table = normal(key, shape, dtype)
        loc = sincos_loc_embedding(num_loc, shape[1]).astype(dtype)
        return jax.lax.dynamic_update_slice(table, loc, (loc_start, 0))

    return init


class DecoderBlock(nn.Module):
    """x + SelfAttn(LN(x)); x + CrossAttn(LN(x), encoded); x + MLP(LN(x)). float[B, L, D]."""

    num_heads: int
    mlp_dim: int | None = None
    dropout: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, encoded, mask, deterministic: bool = True):
        drop = nn.Dropout(rate=self.dropout)
        # use_bias=False in the attention projections, as in CapPa.
        y = nn.LayerNorm(dtype=self.dtype, name="LayerNorm1")(x)
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, use_bias=False, dtype=self.dtype,
            kernel_init=nn.initializers.xavier_uniform(), name="SelfAttn")(
                y, y, mask=mask, deterministic=True)
        x = x + drop(y, deterministic)
        y = nn.LayerNorm(dtype=self.dtype, name="LayerNorm2")(x)
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, use_bias=False, dtype=self.dtype,
            kernel_init=nn.initializers.xavier_uniform(), name="CrossAttn")(
                y, encoded, deterministic=True)
        x = x + drop(y, deterministic)
        y = nn.LayerNorm(dtype=self.dtype, name="LayerNorm3")(x)
        y = MlpBlock(mlp_dim=self.mlp_dim, dropout=self.dropout, dtype=self.dtype,
                     name="MLP")(y, deterministic)
        return x + drop(y, deterministic)


class Decoder(nn.Module):
    """Text decoder.

    __call__(encoded float[B, N, De], inputs int[B, L], parallel bool[B] | None)
      -> logits float32[B, L, V]. L <= max_len.
    """

    vocab_size: int
    width: int = 768
    depth: int = 6
    num_heads: int = 12
    mlp_dim: int | None = None
    max_len: int = 64
    dropout: float = 0.0
    pad_id: int = 0
    dtype: Any = jnp.float32
    # Location tokens [loc_start, loc_start + num_loc) and how their embeddings start
    # ("normal" like every token, or "sincos": see embedding_init). Init only: params decide after.
    loc_start: int = 0
    num_loc: int = 0
    loc_embed_init: str = "normal"

    @nn.compact
    def __call__(self, encoded, inputs, parallel=None, *, train: bool = False):
        length = inputs.shape[1]
        if length > self.max_len:
            raise ValueError(f"decoder inputs have length {length} > max_len {self.max_len}")
        embed = nn.Embed(self.vocab_size, self.width, name="EmbedTargets",
                         embedding_init=embedding_init(self.loc_start, self.num_loc,
                                                       self.loc_embed_init))
        x = embed(inputs.astype(jnp.int32)).astype(self.dtype)
        pe = self.param("pos_embedding", nn.initializers.normal(stddev=1 / self.width**0.5),
                        (1, self.max_len, self.width), jnp.float32)
        x = x + pe[:, :length].astype(self.dtype)
        mask = attention_mask(inputs, parallel, self.pad_id)
        encoded = encoded.astype(self.dtype)
        for i in range(self.depth):
            x = DecoderBlock(num_heads=self.num_heads, mlp_dim=self.mlp_dim,
                             dropout=self.dropout, dtype=self.dtype,
                             name=f"EncDecBlock{i}")(x, encoded, mask, not train)
        x = nn.LayerNorm(dtype=self.dtype, name="LayerNorm")(x)
        # Zero init: uniform predictions at step 0, so the initial loss is log(V) (CapPa does this).
        logits = nn.Dense(self.vocab_size, kernel_init=nn.initializers.zeros, dtype=self.dtype,
                          name="LogitsDense")(x)
        return logits.astype(jnp.float32)
