"""ViT image encoder whose parameter tree matches big_vision's `models/vit.py`.

The names are chosen so a big_vision `.npz` (flat "/"-joined keys) loads without renaming:

    embedding/{kernel,bias}                     patch conv, kernel float[P, P, 3, D]
    pos_embedding                               float[1, h*w, D]   (only when posemb == "learn")
    cls                                         float[1, 1, D]     (only when pool_type == "tok")
    Transformer/encoderblock_{i}/LayerNorm_0, MultiHeadDotProductAttention_0/{query,key,value,out},
                                 LayerNorm_1, MlpBlock_0/{Dense_0,Dense_1}
    Transformer/encoder_norm
    MAPHead_0/{probe, MultiHeadDotProductAttention_0, LayerNorm_0, MlpBlock_0}  (pool_type == "map")
    head/{kernel,bias}                          (only when num_classes > 0)

Unlike big_vision, pool_type may be "none" (LocCa's decoder reads all tokens, so no pooling head is
built and no unused parameters are trained). The scanned-layers layout is not supported.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

POOL_TYPES = ("none", "map", "gap", "tok")
# big_vision's (and Flax's default) layer-norm epsilon and GELU variant (tanh approximation);
# named so exports to other frameworks (model/hf_siglip.py) state the same math.
LN_EPSILON = 1e-6
GELU_APPROXIMATE = True
POSEMB_TYPES = ("learn", "sincos2d")

# Reference: Table 2 of arXiv:2106.04560 (the same table big_vision's decode_variant uses).
VARIANTS: dict[str, dict[str, int]] = {
    "Ti": dict(width=192, depth=12, mlp_dim=768, num_heads=3),
    "S": dict(width=384, depth=12, mlp_dim=1536, num_heads=6),
    "M": dict(width=512, depth=12, mlp_dim=2048, num_heads=8),
    "B": dict(width=768, depth=12, mlp_dim=3072, num_heads=12),
    "L": dict(width=1024, depth=24, mlp_dim=4096, num_heads=16),
    "So400m": dict(width=1152, depth=27, mlp_dim=4304, num_heads=16),
    "H": dict(width=1280, depth=32, mlp_dim=5120, num_heads=16),
}


def decode_variant(variant: str) -> dict[str, Any]:
    """"B/16" -> dict(width=768, depth=12, mlp_dim=3072, num_heads=12, patch_size=16)."""
    name, _, patch = variant.partition("/")
    if name not in VARIANTS:
        raise ValueError(f"unknown ViT variant {name!r}; known: {sorted(VARIANTS)}")
    out: dict[str, Any] = dict(VARIANTS[name])
    if patch:
        out["patch_size"] = int(patch)
    return out


def posemb_sincos_2d(h: int, w: int, width: int, temperature: float = 10_000.0) -> np.ndarray:
    """Fixed 2D sin-cos position embedding (MoCo v3 / big_vision layout): float32[1, h*w, width]."""
    if width % 4:
        raise ValueError(f"sincos2d posemb needs width % 4 == 0, got {width}")
    y, x = np.mgrid[:h, :w]
    omega = np.arange(width // 4) / (width // 4 - 1)
    omega = 1.0 / (temperature**omega)
    y = np.einsum("m,d->md", y.flatten(), omega)
    x = np.einsum("m,d->md", x.flatten(), omega)
    pe = np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)
    return pe[None].astype(np.float32)


def _dense_inits() -> dict[str, Any]:
    return dict(kernel_init=nn.initializers.xavier_uniform(),
                bias_init=nn.initializers.normal(stddev=1e-6))


class MlpBlock(nn.Module):
    """Dense -> GELU -> Dense, float[B, L, D] -> float[B, L, D]."""

    mlp_dim: int | None = None  # 4 * D when None
    dropout: float = 0.0
    dtype: Any = jnp.float32
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: jnp.ndarray, deterministic: bool = True) -> jnp.ndarray:
        d = x.shape[-1]
        x = nn.Dense(self.mlp_dim or 4 * d, dtype=self.dtype, use_bias=self.use_bias,
                     name="Dense_0", **_dense_inits())(x)
        x = nn.gelu(x, approximate=GELU_APPROXIMATE)
        x = nn.Dropout(rate=self.dropout)(x, deterministic)
        return nn.Dense(d, dtype=self.dtype, use_bias=self.use_bias, name="Dense_1",
                        **_dense_inits())(x)


class Encoder1DBlock(nn.Module):
    """Pre-LN block: x + MHSA(LN(x)), then x + MLP(LN(x)). float[B, N, D] -> float[B, N, D]."""

    mlp_dim: int | None = None
    num_heads: int = 12
    dropout: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, deterministic: bool = True) -> jnp.ndarray:
        y = nn.LayerNorm(epsilon=LN_EPSILON, dtype=self.dtype, name="LayerNorm_0")(x)
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, dtype=self.dtype, deterministic=deterministic,
            kernel_init=nn.initializers.xavier_uniform(),
            name="MultiHeadDotProductAttention_0")(y, y)
        x = x + nn.Dropout(rate=self.dropout)(y, deterministic)
        y = nn.LayerNorm(epsilon=LN_EPSILON, dtype=self.dtype, name="LayerNorm_1")(x)
        y = MlpBlock(mlp_dim=self.mlp_dim, dropout=self.dropout, dtype=self.dtype,
                     name="MlpBlock_0")(y, deterministic)
        return x + nn.Dropout(rate=self.dropout)(y, deterministic)


class Encoder(nn.Module):
    """`depth` blocks then the final LayerNorm ("encoder_norm")."""

    depth: int
    mlp_dim: int | None = None
    num_heads: int = 12
    dropout: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, deterministic: bool = True) -> jnp.ndarray:
        for i in range(self.depth):
            x = Encoder1DBlock(mlp_dim=self.mlp_dim, num_heads=self.num_heads,
                               dropout=self.dropout, dtype=self.dtype,
                               name=f"encoderblock_{i}")(x, deterministic)
        return nn.LayerNorm(epsilon=LN_EPSILON, dtype=self.dtype, name="encoder_norm")(x)


class MAPHead(nn.Module):
    """Multihead attention pooling with one learned probe: float[B, N, D] -> float[B, D]."""

    mlp_dim: int | None = None
    num_heads: int = 12
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        n, _, d = x.shape
        probe = self.param("probe", nn.initializers.xavier_uniform(), (1, 1, d), jnp.float32)
        probe = jnp.tile(probe.astype(x.dtype), [n, 1, 1])
        x = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, dtype=self.dtype,
            kernel_init=nn.initializers.xavier_uniform(),
            name="MultiHeadDotProductAttention_0")(probe, x)
        y = nn.LayerNorm(epsilon=LN_EPSILON, dtype=self.dtype, name="LayerNorm_0")(x)
        x = x + MlpBlock(mlp_dim=self.mlp_dim, dtype=self.dtype, name="MlpBlock_0")(y)
        return x[:, 0]


class ViT(nn.Module):
    """Vision Transformer.

    __call__(image float[B, H, W, 3]) -> (encoded float[B, N, D], out dict). N = (H/P)*(W/P), plus
    one leading [cls] token when pool_type == "tok". `out` holds "pooled" float[B, D] (absent for
    pool_type "none") and "logits" float[B, num_classes] when a head is configured.
    """

    patch_size: int = 16
    width: int = 768
    depth: int = 12
    mlp_dim: int | None = None
    num_heads: int = 12
    posemb: str = "learn"
    pool_type: str = "none"
    num_classes: int = 0
    dropout: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, image: jnp.ndarray, *, train: bool = False):
        if self.pool_type not in POOL_TYPES:
            raise ValueError(f"pool_type {self.pool_type!r} not in {POOL_TYPES}")
        p = self.patch_size
        x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                    name="embedding")(image)
        n, h, w, c = x.shape
        x = jnp.reshape(x, [n, h * w, c])
        if self.posemb == "learn":
            pe = self.param("pos_embedding", nn.initializers.normal(stddev=1 / np.sqrt(c)),
                            (1, h * w, c), jnp.float32)
        elif self.posemb == "sincos2d":
            pe = jnp.asarray(posemb_sincos_2d(h, w, c))
        else:
            raise ValueError(f"posemb {self.posemb!r} not in {POSEMB_TYPES}")
        x = x + pe.astype(x.dtype)  # big_vision adds posemb before the [cls] token
        if self.pool_type == "tok":
            cls = self.param("cls", nn.initializers.zeros, (1, 1, c), jnp.float32)
            x = jnp.concatenate([jnp.tile(cls.astype(x.dtype), [n, 1, 1]), x], axis=1)
        x = nn.Dropout(rate=self.dropout)(x, not train)
        x = Encoder(depth=self.depth, mlp_dim=self.mlp_dim, num_heads=self.num_heads,
                    dropout=self.dropout, dtype=self.dtype, name="Transformer")(x, not train)
        out: dict[str, jnp.ndarray] = {"encoded": x}
        if self.pool_type == "map":
            out["pooled"] = MAPHead(mlp_dim=self.mlp_dim, num_heads=self.num_heads,
                                    dtype=self.dtype, name="MAPHead_0")(x)
        elif self.pool_type == "gap":
            out["pooled"] = jnp.mean(x, axis=1)
        elif self.pool_type == "tok":
            out["pooled"] = x[:, 0]
        if self.num_classes:
            if "pooled" not in out:
                raise ValueError("a classification head needs pool_type map, gap or tok")
            out["logits"] = nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros,
                                     dtype=self.dtype, name="head")(out["pooled"])
        return x, out
