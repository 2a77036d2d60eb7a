"""OWL-ViT v1/v2 in Flax linen, numerically matching transformers' OwlViT/Owlv2ForObjectDetection.

Module and parameter names follow the Hugging Face checkpoint layout (`owlvit/vision_model/encoder/
layers_3/self_attn/q_proj/kernel` <- `owlvit.vision_model.encoder.layers.3.self_attn.q_proj.weight`),
so checkpoint conversion is a mechanical rename + transpose (see checkpoint.py).

The model is used through two entry points, because the annotate workload embeds text and images
at different rates (query embeddings are cached across images):
  - `embed_image(pixels)` -> per-patch class embeddings, logit shift/scale, boxes, objectness;
  - `embed_text(ids, eos_pos)` -> normalized query embeddings.
`class_logits` combines them exactly as transformers' class head does.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pipelines.owlvit.config import OwlConfig, TowerConfig

_ACTS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
}


class MLP(nn.Module):
    cfg: TowerConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(self.cfg.intermediate_size, dtype=self.dtype, name="fc1")(x)
        x = _ACTS[self.cfg.hidden_act](x)
        return nn.Dense(self.cfg.hidden_size, dtype=self.dtype, name="fc2")(x)


class Attention(nn.Module):
    cfg: TowerConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, causal: bool, mask=None, q_idx=None):
        """x: float[B, T, D] -> float[B, T, D] (or float[B, E, D] with q_idx).

        causal masks future tokens (text tower); mask: bool[B, T, T] replaces it (packed trees);
        q_idx: int32[B, E] computes only those query positions (keys/values still use all T).
        """
        b, t, d = x.shape
        h = self.cfg.num_heads
        dense = lambda name: nn.Dense(d, dtype=self.dtype, name=name)  # noqa: E731
        split = lambda y: y.reshape(b, y.shape[1], h, d // h)  # noqa: E731
        xq = x if q_idx is None else jnp.take_along_axis(x, q_idx[..., None], axis=1)
        q = split(dense("q_proj")(xq)) * (d // h) ** -0.5
        k, v = split(dense("k_proj")(x)), split(dense("v_proj")(x))
        w = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
        if mask is None and causal:
            mask = jnp.tril(jnp.ones((t, t), bool))[None]
        if mask is not None:
            if q_idx is not None:
                mask = jnp.take_along_axis(mask, q_idx[..., None], axis=1)
            w = jnp.where(mask[:, None], w, jnp.finfo(jnp.float32).min)
        w = jax.nn.softmax(w, axis=-1).astype(self.dtype)
        y = jnp.einsum("bhqk,bkhd->bqhd", w, v).reshape(b, q.shape[1], d)
        return dense("out_proj")(y)


class EncoderLayer(nn.Module):
    cfg: TowerConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, causal: bool, mask=None, q_idx=None):
        """q_idx: int32[B, E] keeps only those tokens' outputs (the MLP and LNs are per-token)."""
        ln = lambda name: nn.LayerNorm(self.cfg.layer_norm_eps, dtype=self.dtype, name=name)  # noqa: E731
        h = ln("layer_norm1")(x)
        if q_idx is not None:
            x = jnp.take_along_axis(x, q_idx[..., None], axis=1)
        x = x + Attention(self.cfg, self.dtype, name="self_attn")(h, causal, mask, q_idx)
        return x + MLP(self.cfg, self.dtype, name="mlp")(ln("layer_norm2")(x))


class Encoder(nn.Module):
    cfg: TowerConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, causal: bool = False, mask=None, last_q_idx=None):
        """last_q_idx: int32[B, E]: the last layer computes only those tokens (pooled outputs)."""
        n = self.cfg.num_layers
        for i in range(n):
            q_idx = last_q_idx if i == n - 1 else None
            x = EncoderLayer(self.cfg, self.dtype, name=f"layers_{i}")(x, causal, mask, q_idx)
        return x


class TextEmbeddings(nn.Module):
    cfg: OwlConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, ids, positions=None):
        """ids, positions: int32[B, L] (positions default to 0..L-1) -> float[B, L, Dt]."""
        d = self.cfg.text.hidden_size
        tok = nn.Embed(self.cfg.vocab_size, d, dtype=self.dtype, name="token_embedding")(ids)
        pos = nn.Embed(self.cfg.max_text_len, d, dtype=self.dtype, name="position_embedding")
        return tok + (pos(jnp.arange(ids.shape[1]))[None] if positions is None else pos(positions))


class TextTransformer(nn.Module):
    cfg: OwlConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, ids, eos_pos, positions=None, mask=None):
        """Plain: ids int32[N, L] (L <= max_text_len), eos_pos int32[N] -> pooled float[N, Dt].

        Packed (see packing.py): ids, positions int32[R, L], mask bool[R, L, L] (tree attention),
        eos_pos int32[R, E] -> pooled float[R, E, Dt]; the last layer runs only at eos_pos, since
        the pooled feature is the EOS token's and nothing after the last attention mixes tokens.

        CLIP text attention is causal and the pooled feature is the EOS token's, so tokens after
        EOS (padding) never influence the result: L may be trimmed to the longest query.
        """
        x = TextEmbeddings(self.cfg, self.dtype, name="embeddings")(ids, positions)
        encoder = Encoder(self.cfg.text, self.dtype, name="encoder")
        if mask is None:
            x = encoder(x, causal=True)[jnp.arange(x.shape[0]), eos_pos]
        else:
            x = encoder(x, causal=True, mask=mask, last_q_idx=eos_pos)
        eps = self.cfg.text.layer_norm_eps
        return nn.LayerNorm(eps, dtype=self.dtype, name="final_layer_norm")(x)


class VisionEmbeddings(nn.Module):
    cfg: OwlConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pixels):
        d, p = self.cfg.vision.hidden_size, self.cfg.patch_size
        cls = self.param("class_embedding", nn.initializers.normal(d**-0.5), (d,))
        x = nn.Conv(d, (p, p), strides=(p, p), padding="VALID", use_bias=False, dtype=self.dtype,
                    name="patch_embedding")(pixels.astype(self.dtype))
        b = x.shape[0]
        x = x.reshape(b, -1, d)
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (b, 1, d)), x], axis=1)
        pos = nn.Embed(self.cfg.num_patches + 1, d, dtype=self.dtype, name="position_embedding")
        return x + pos(jnp.arange(x.shape[1]))[None]


class VisionTransformer(nn.Module):
    cfg: OwlConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pixels):
        """pixels: float[B, S, S, 3] normalized -> float[B, 1 + P, Dv] after post_layernorm."""
        eps = self.cfg.vision.layer_norm_eps
        x = VisionEmbeddings(self.cfg, self.dtype, name="embeddings")(pixels)
        x = nn.LayerNorm(eps, dtype=self.dtype, name="pre_layernorm")(x)
        x = Encoder(self.cfg.vision, self.dtype, name="encoder")(x)
        # OWL-ViT applies the post-LN to every token, not only the class token as CLIP does.
        return nn.LayerNorm(eps, dtype=self.dtype, name="post_layernorm")(x)


class ClipBackbone(nn.Module):
    cfg: OwlConfig
    dtype: Any = jnp.float32

    def setup(self):
        self.text_model = TextTransformer(self.cfg, self.dtype)
        self.vision_model = VisionTransformer(self.cfg, self.dtype)
        self.text_projection = nn.Dense(self.cfg.projection_dim, use_bias=False, dtype=self.dtype)


class PredictionHead(nn.Module):
    """Three dense layers with exact GELU: the box head (out 4) and v2's objectness head (out 1)."""

    width: int
    out_dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        gelu = lambda y: jax.nn.gelu(y, approximate=False)  # noqa: E731
        x = gelu(nn.Dense(self.width, dtype=self.dtype, name="dense0")(x))
        x = gelu(nn.Dense(self.width, dtype=self.dtype, name="dense1")(x))
        return nn.Dense(self.out_dim, dtype=self.dtype, name="dense2")(x)


class ClassHead(nn.Module):
    out_dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, feats):
        """feats: float[B, P, Dv] -> (unit class embeddings float[B, P, Dt], shift, scale float[B, P])."""
        emb = nn.Dense(self.out_dim, dtype=self.dtype, name="dense0")(feats).astype(jnp.float32)
        emb = emb / (jnp.linalg.norm(emb, axis=-1, keepdims=True) + 1e-6)
        shift = nn.Dense(1, dtype=self.dtype, name="logit_shift")(feats)[..., 0]
        scale = jax.nn.elu(nn.Dense(1, dtype=self.dtype, name="logit_scale")(feats)[..., 0]) + 1
        return emb, shift.astype(jnp.float32), scale.astype(jnp.float32)


def box_bias(grid: int) -> np.ndarray:
    """float32[grid*grid, 4] logit-space prior: centers at each patch's far corner, size 1/grid.

    Same formula and float32 arithmetic as transformers' `compute_box_bias` (y-major patch order).
    """
    ticks = np.arange(1, grid + 1, dtype=np.float32) / np.float32(grid)
    xx, yy = np.meshgrid(ticks, ticks, indexing="xy")
    xy = np.clip(np.stack([xx, yy], -1).reshape(-1, 2), 0.0, 1.0).astype(np.float32)
    eps = np.float32(1e-4)
    inv_sigmoid = lambda v: np.log(v + eps) - np.log1p(-v + eps)  # noqa: E731
    size = np.full_like(xy, np.float32(1.0) / np.float32(grid))
    return np.concatenate([inv_sigmoid(xy), inv_sigmoid(size)], -1).astype(np.float32)


class OwlViT(nn.Module):
    """OWL-ViT (v1) / OWLv2 detector. `cfg.version == 2` adds the objectness head."""

    cfg: OwlConfig
    dtype: Any = jnp.float32

    def setup(self):
        dv = self.cfg.vision.hidden_size
        self.owlvit = ClipBackbone(self.cfg, self.dtype)
        self.class_head = ClassHead(self.cfg.text.hidden_size, self.dtype)
        self.box_head = PredictionHead(dv, 4, self.dtype)
        self.layer_norm = nn.LayerNorm(self.cfg.vision.layer_norm_eps, dtype=self.dtype)
        if self.cfg.version == 2:
            self.objectness_head = PredictionHead(dv, 1, self.dtype)

    def embed_image(self, pixels) -> dict[str, jax.Array]:
        """pixels: float[B, S, S, 3] (CLIP-normalized, S = cfg.image_size). Returns a dict:

        feature_map float[B, P, Dv]; class_embeds float[B, P, Dt] (unit norm); logit_shift,
        logit_scale float[B, P]; pred_boxes float[B, P, 4] (cx, cy, w, h of the padded square,
        in [0, 1]); objectness_logits float[B, P] (v2 only). P = (S / patch)**2, y-major.
        """
        x = self.owlvit.vision_model(pixels)
        # Class-token merge: every patch token is multiplied by the class token, then LN'd.
        feats = self.layer_norm(x[:, 1:] * x[:, :1])
        emb, shift, scale = self.class_head(feats)
        boxes = self.box_head(feats).astype(jnp.float32) + box_bias(self.cfg.grid_size)
        out = dict(feature_map=feats, class_embeds=emb, logit_shift=shift, logit_scale=scale,
                   pred_boxes=jax.nn.sigmoid(boxes))
        if self.cfg.version == 2:
            out["objectness_logits"] = self.objectness_head(feats)[..., 0].astype(jnp.float32)
        return out

    def embed_text(self, ids, eos_pos) -> jax.Array:
        """ids: int32[N, L], eos_pos: int32[N] -> float32[N, Dt] unit-norm query embeddings."""
        pooled = self.owlvit.text_model(ids, eos_pos)
        q = self.owlvit.text_projection(pooled).astype(jnp.float32)
        return q / jnp.linalg.norm(q, axis=-1, keepdims=True)

    def embed_text_packed(self, ids, positions, mask, eos_idx) -> jax.Array:
        """Packed trie rows (packing.PackedRows fields) -> float32[R, E, Dt] unit-norm embeddings."""
        pooled = self.owlvit.text_model(ids, eos_idx, positions, mask)
        q = self.owlvit.text_projection(pooled).astype(jnp.float32)
        return q / jnp.linalg.norm(q, axis=-1, keepdims=True)

    def __call__(self, pixels, ids, eos_pos):
        """Touches every parameter (for `init`). Returns (embed_image dict, text embeddings)."""
        return self.embed_image(pixels), self.embed_text(ids, eos_pos)


def class_logits(class_embeds, logit_shift, logit_scale, query_embeds, xp=np):
    """Per-patch, per-query logits, as transformers' class head computes them.

    class_embeds: float[..., P, Dt] unit norm; logit_shift, logit_scale: float[..., P];
    query_embeds: float[..., Q, Dt] (any norm: re-normalized with the head's +1e-6) -> float[..., P, Q].
    """
    q = query_embeds / (xp.linalg.norm(query_embeds, axis=-1, keepdims=True) + 1e-6)
    sims = xp.einsum("...pd,...qd->...pq", class_embeds, q)
    return (sims + logit_shift[..., None]) * logit_scale[..., None]
