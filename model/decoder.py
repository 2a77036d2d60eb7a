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

KV cache (generation): `return_cache=True` also returns every layer's self- and cross-attention
keys/values; a call with `cache=..., pos=p` then decodes the single position p against them
(`make_incremental` packages the two for model/generate.py). The attention is this module's own
`Attention`, which has nn.MultiHeadDotProductAttention's parameters and numerics (tested) but can
take its keys/values precomputed: Flax's decode cache keeps only self-attention, and would project
all encoder tokens again for every generated token.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from model.generate import IncrementalDecoder
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


LOC_HEAD_INITS = ("zeros", "gaussian")


def logits_init(loc_start: int, num_loc: int, kind: str, sigma: float = 0.1):
    """(kernel_init, bias_init) of the output projection float[D, V].

    "zeros" (CapPa): every logit starts at 0, uniform predictions. "gaussian": the location
    columns start so that, for any final hidden state h, the location logits are
    c * (2 * u * t_k - t_k**2) with t_k = (k + 0.5) / num_loc - 0.5 the centre of bin k,
    u = h . d for a random direction d (|d| = 0.25, so u spreads over about +-0.25 at init) and
    c = 1 / (2 sigma**2): the softmax over the bins is a discretised Gaussian N(u, sigma**2).
    A model then places a box edge by moving one linear readout of h, where the zero init must
    first shape `num_loc` separate output columns into a coherent ordering. Every other column
    starts at zero, and all stay free parameters. Its cost: location mass at text positions at
    first, so caption tokens start a little slower. `tiny` uses it (RESULTS.md has the runs).
    """
    zeros = nn.initializers.zeros
    if kind == "zeros" or num_loc <= 0:
        return zeros, zeros
    if kind != "gaussian":
        raise ValueError(f"loc_head_init must be one of {LOC_HEAD_INITS}, got {kind!r}")
    if not 0.0 < sigma <= 1.0:
        raise ValueError(f"loc_head_sigma must be in (0, 1], got {sigma}")
    c = 1.0 / (2.0 * sigma**2)
    centres = (jnp.arange(num_loc, dtype=jnp.float32) + 0.5) / num_loc - 0.5

    def kernel_init(key, shape, dtype=jnp.float32):
        d = jax.random.normal(key, (shape[0],), jnp.float32)
        d = 0.25 * d / jnp.linalg.norm(d)
        cols = 2.0 * c * d[:, None] * centres[None]
        return jnp.zeros(shape, dtype).at[:, loc_start:loc_start + num_loc].set(cols.astype(dtype))

    def bias_init(key, shape, dtype=jnp.float32):
        del key
        return jnp.zeros(shape, dtype).at[loc_start:loc_start + num_loc].set(
            (-c * centres**2).astype(dtype))

    return kernel_init, bias_init


class Attention(nn.Module):
    """Multi-head dot-product attention with nn.MultiHeadDotProductAttention's parameters
    (query/key/value/out, no bias) and numerics, that also hands back and accepts its keys/values.

    Flax's own attention cannot take precomputed keys/values, and its decode cache keeps only
    self-attention: every generated token would project all encoder tokens again. Here:
      __call__(x, kv_inputs, mask)            keys/values from kv_inputs float[B, T, D]
      __call__(x, None, mask, kv=(k, v))      keys/values given (cross-attention, cached)
      __call__(x, x, mask, kv=(k, v), write_at=p)  x float[B, 1, D] is position p: its key/value
                                              are written into the cache at p (self-attention step)
    -> (out float[B, S, D], (k, v) float[B, T, H, D/H]).
    """

    num_heads: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, kv_inputs, mask=None, *, kv=None, write_at=None):
        width = x.shape[-1]
        dense = functools.partial(
            nn.DenseGeneral, features=(self.num_heads, width // self.num_heads), axis=-1,
            use_bias=False, dtype=self.dtype, kernel_init=nn.initializers.xavier_uniform())
        query = dense(name="query")(x)
        if kv is None:
            k, v = dense(name="key")(kv_inputs), dense(name="value")(kv_inputs)
        elif write_at is not None:
            new_k, new_v = dense(name="key")(kv_inputs), dense(name="value")(kv_inputs)
            at = (0, write_at, 0, 0)
            k = jax.lax.dynamic_update_slice(kv[0], new_k.astype(kv[0].dtype), at)
            v = jax.lax.dynamic_update_slice(kv[1], new_v.astype(kv[1].dtype), at)
        else:
            k, v = kv
        y = nn.dot_product_attention(query, k, v, mask=mask, dtype=self.dtype)
        out = nn.DenseGeneral(features=width, axis=(-2, -1), use_bias=False, dtype=self.dtype,
                              kernel_init=nn.initializers.xavier_uniform(), name="out")(y)
        return out, (k, v)


class DecoderBlock(nn.Module):
    """x + SelfAttn(LN(x)); x + CrossAttn(LN(x), encoded); x + MLP(LN(x)). float[B, L, D].

    Returns (x, cache) with cache = {"self": (k, v) float[B, L, H, D/H], "cross": (k, v)
    float[B, N, H, D/H]}. Given `cache` and `pos`, x is the single position `pos` (float[B, 1, D])
    and `encoded` is not used: the cross keys/values come from the cache.
    """

    num_heads: int
    mlp_dim: int | None = None
    dropout: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, encoded, mask, deterministic: bool = True, *, cache=None, pos=None):
        drop = nn.Dropout(rate=self.dropout)
        cached = cache is not None
        # use_bias=False in the attention projections, as in CapPa.
        y = nn.LayerNorm(dtype=self.dtype, name="LayerNorm1")(x)
        y, self_kv = Attention(self.num_heads, self.dtype, name="SelfAttn")(
            y, y, mask, kv=cache["self"] if cached else None, write_at=pos)
        x = x + drop(y, deterministic)
        y = nn.LayerNorm(dtype=self.dtype, name="LayerNorm2")(x)
        y, cross_kv = Attention(self.num_heads, self.dtype, name="CrossAttn")(
            y, None if cached else encoded, kv=cache["cross"] if cached else None)
        x = x + drop(y, deterministic)
        y = nn.LayerNorm(dtype=self.dtype, name="LayerNorm3")(x)
        y = MlpBlock(mlp_dim=self.mlp_dim, dropout=self.dropout, dtype=self.dtype,
                     name="MLP")(y, deterministic)
        return x + drop(y, deterministic), {"self": self_kv, "cross": cross_kv}


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
    # How the output projection starts (logits_init): "zeros" (CapPa) or "gaussian".
    loc_head_init: str = "zeros"
    loc_head_sigma: float = 0.1

    @nn.compact
    def __call__(self, encoded, inputs, parallel=None, *, train: bool = False,
                 return_cache: bool = False, cache=None, pos=None):
        """Teacher-forced: encoded float[B, N, De], inputs int[B, L] -> logits float32[B, L, V];
        with return_cache also the cache of every layer's keys/values (see `Decoder` and
        model/generate.py), for generation to go on from.

        One step (cache given): inputs int[B, 1] is the token at position `pos` (int32 scalar) of
        the buffer the cache was made from; `encoded` is not used. -> (logits float32[B, 1, V]
        for position pos + 1, the cache with position pos written). Steps are causal: this is
        for generation, not CapPa's parallel prediction.
        """
        embed = nn.Embed(self.vocab_size, self.width, name="EmbedTargets",
                         embedding_init=embedding_init(self.loc_start, self.num_loc,
                                                       self.loc_embed_init))
        pe = self.param("pos_embedding", nn.initializers.normal(stddev=1 / self.width**0.5),
                        (1, self.max_len, self.width), jnp.float32)
        x = embed(inputs.astype(jnp.int32)).astype(self.dtype)
        if cache is None:
            length = inputs.shape[1]
            if length > self.max_len:
                raise ValueError(f"decoder inputs have length {length} > max_len {self.max_len}")
            x = x + pe[:, :length].astype(self.dtype)
            keys_ok = inputs != self.pad_id
            mask = attention_mask(inputs, parallel, self.pad_id)
            encoded = encoded.astype(self.dtype)
        else:
            x = x + jax.lax.dynamic_slice_in_dim(pe, pos, 1, axis=1).astype(self.dtype)
            keys_ok = jax.lax.dynamic_update_slice_in_dim(
                cache["keys_ok"], inputs != self.pad_id, pos, axis=1)
            # The query at `pos` sees the keys at <= pos that are not padding: the same row of
            # attention_mask that the teacher-forced pass uses.
            mask = ((jnp.arange(keys_ok.shape[1]) <= pos)[None] & keys_ok)[:, None, None, :]
        layers = []
        for i in range(self.depth):
            x, kv = DecoderBlock(num_heads=self.num_heads, mlp_dim=self.mlp_dim,
                                 dropout=self.dropout, dtype=self.dtype,
                                 name=f"EncDecBlock{i}")(
                x, encoded, mask, not train,
                cache=None if cache is None else {"self": cache["self"][i],
                                                  "cross": cache["cross"][i]},
                pos=pos)
            layers.append(kv)
        x = nn.LayerNorm(dtype=self.dtype, name="LayerNorm")(x)
        # Zero init (CapPa): uniform predictions at step 0, so the initial loss is log(V); or
        # Gaussian location logits (logits_init).
        kernel_init, bias_init = logits_init(self.loc_start, self.num_loc, self.loc_head_init,
                                             self.loc_head_sigma)
        logits = nn.Dense(self.vocab_size, kernel_init=kernel_init, bias_init=bias_init,
                          dtype=self.dtype, name="LogitsDense")(x).astype(jnp.float32)
        if cache is None and not return_cache:
            return logits
        return logits, {"keys_ok": keys_ok, "self": tuple(kv["self"] for kv in layers),
                        "cross": tuple(kv["cross"] for kv in layers)}


def make_incremental(apply_fn) -> IncrementalDecoder:
    """A `Decoder` bound to its params as a KV-cached decoder for model/generate.py.

    apply_fn(encoded, inputs, **kw) must call `Decoder.__call__` (e.g. `lambda e, x, **kw:
    decoder.apply({"params": p}, e, x, **kw)`). The encoder tokens' cross-attention keys/values
    are the static part (computed once per example, shared by its beams); the self-attention
    keys/values and the key-padding mask are the state that follows each beam.
    """

    def split(cache):
        return cache["cross"], {"keys_ok": cache["keys_ok"], "self": cache["self"]}

    def prefill(encoded, tokens):
        logits, cache = apply_fn(encoded, tokens, return_cache=True)
        return (logits, *split(cache))

    def step(cross, state, token, pos):
        logits, cache = apply_fn(None, token[:, None], cache={**state, "cross": cross}, pos=pos)
        return logits[:, 0], split(cache)[1]

    return IncrementalDecoder(prefill, step)
