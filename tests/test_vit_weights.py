"""big_vision `.npz` compatibility: names, strict loading, posemb resampling, math, export."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model import vit_weights as ckpt
from model.configs import get_config
from model.locca import LocCa, param_shapes
from model.vit import ViT

W, HEADS, MLP, DEPTH, PATCH = 16, 2, 32, 2, 4


def bv_vit_shapes(grid: int, pool: str, width=W, heads=HEADS, mlp=MLP, depth=DEPTH, patch=PATCH):
    """The parameter names/shapes of big_vision's models/vit.py, written out independently."""
    d, hd = width, width // heads

    def ln(p):
        return {f"{p}/scale": (d,), f"{p}/bias": (d,)}

    def mha(p):
        out = {f"{p}/{n}/kernel": (d, heads, hd) for n in ("query", "key", "value")}
        out.update({f"{p}/{n}/bias": (heads, hd) for n in ("query", "key", "value")})
        out.update({f"{p}/out/kernel": (heads, hd, d), f"{p}/out/bias": (d,)})
        return out

    def mlp_block(p):
        return {f"{p}/Dense_0/kernel": (d, mlp), f"{p}/Dense_0/bias": (mlp,),
                f"{p}/Dense_1/kernel": (mlp, d), f"{p}/Dense_1/bias": (d,)}

    s = {"embedding/kernel": (patch, patch, 3, d), "embedding/bias": (d,),
         "pos_embedding": (1, grid * grid, d), **ln("Transformer/encoder_norm")}
    for i in range(depth):
        b = f"Transformer/encoderblock_{i}"
        s.update({**ln(f"{b}/LayerNorm_0"), **mha(f"{b}/MultiHeadDotProductAttention_0"),
                  **ln(f"{b}/LayerNorm_1"), **mlp_block(f"{b}/MlpBlock_0")})
    if pool == "map":
        s.update({"MAPHead_0/probe": (1, 1, d), **mha("MAPHead_0/MultiHeadDotProductAttention_0"),
                  **ln("MAPHead_0/LayerNorm_0"), **mlp_block("MAPHead_0/MlpBlock_0")})
    if pool == "tok":
        s["cls"] = (1, 1, d)
    return s


def random_checkpoint(shapes, seed=0):
    rng = np.random.default_rng(seed)
    return {k: (rng.normal(size=v) * 0.3).astype(np.float32) for k, v in shapes.items()}


def make_vit(pool: str) -> ViT:
    return ViT(patch_size=PATCH, width=W, depth=DEPTH, mlp_dim=MLP, num_heads=HEADS,
               pool_type=pool)


def init_vit(model: ViT, image_size: int, fill: float = 0.25):
    """Constant-valued params of the model's shapes (abstract init: nothing is compiled)."""
    x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    shapes = jax.eval_shape(model.init, jax.random.key(1), x)["params"]
    return jax.tree.map(lambda s: np.full(s.shape, fill, s.dtype), shapes)


# ---- an independent numpy ViT forward pass, written from big_vision's math ----
def _ln(x, p, name):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-6) * p[f"{name}/scale"] + p[f"{name}/bias"]


def _mha(q_in, kv_in, p, name):
    q, k, v = (np.einsum("bnd,dhk->bnhk", x, p[f"{name}/{n}/kernel"]) + p[f"{name}/{n}/bias"]
               for x, n in ((q_in, "query"), (kv_in, "key"), (kv_in, "value")))
    logits = np.einsum("bqhk,bshk->bhqs", q, k) / np.sqrt(q.shape[-1])
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    o = np.einsum("bhqs,bshk->bqhk", w, v)
    return np.einsum("bqhk,hkd->bqd", o, p[f"{name}/out/kernel"]) + p[f"{name}/out/bias"]


def _mlp(x, p, name):
    h = x @ p[f"{name}/Dense_0/kernel"] + p[f"{name}/Dense_0/bias"]
    h = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3)))  # tanh GELU
    return h @ p[f"{name}/Dense_1/kernel"] + p[f"{name}/Dense_1/bias"]


def numpy_vit(image, p, pool):
    b, hh, ww, _ = image.shape
    g = hh // PATCH
    x = image.reshape(b, g, PATCH, g, PATCH, 3).transpose(0, 1, 3, 2, 4, 5)
    x = x.reshape(b, g * g, -1) @ p["embedding/kernel"].reshape(-1, W) + p["embedding/bias"]
    x = x + p["pos_embedding"]
    if pool == "tok":
        x = np.concatenate([np.tile(p["cls"], (b, 1, 1)), x], axis=1)
    for i in range(DEPTH):
        blk = f"Transformer/encoderblock_{i}"
        y = _ln(x, p, f"{blk}/LayerNorm_0")
        x = x + _mha(y, y, p, f"{blk}/MultiHeadDotProductAttention_0")
        x = x + _mlp(_ln(x, p, f"{blk}/LayerNorm_1"), p, f"{blk}/MlpBlock_0")
    x = _ln(x, p, "Transformer/encoder_norm")
    if pool == "map":
        probe = np.tile(p["MAPHead_0/probe"], (b, 1, 1))
        y = _mha(probe, x, p, "MAPHead_0/MultiHeadDotProductAttention_0")
        pooled = (y + _mlp(_ln(y, p, "MAPHead_0/LayerNorm_0"), p, "MAPHead_0/MlpBlock_0"))[:, 0]
    else:
        pooled = x[:, 0]
    return x, pooled


@pytest.mark.parametrize("pool", ["map", "tok"])
def test_big_vision_npz_loads_strictly_and_matches_reference_math(tmp_path, pool):
    image_size = 4 * PATCH
    flat = random_checkpoint(bv_vit_shapes(grid=4, pool=pool))
    path = str(tmp_path / "vit.npz")
    np.savez(path, **flat)
    model = make_vit(pool)
    params = ckpt.load_vit_params(path, init_vit(model, image_size))
    got = ckpt.flatten(params)
    assert set(got) == set(flat)
    for k, v in flat.items():
        np.testing.assert_array_equal(got[k], v, err_msg=k)
    image = np.random.default_rng(1).uniform(-1, 1, (2, image_size, image_size, 3))
    encoded, out = jax.jit(model.apply)({"params": params}, jnp.asarray(image, jnp.float32))
    ref_encoded, ref_pooled = numpy_vit(image.astype(np.float64), flat, pool)
    np.testing.assert_allclose(encoded, ref_encoded, atol=2e-4, rtol=1e-4)
    np.testing.assert_allclose(out["pooled"], ref_pooled, atol=2e-4, rtol=1e-4)


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    model = make_vit("map")
    init = init_vit(model, 4 * PATCH)
    flat = random_checkpoint(bv_vit_shapes(grid=4, pool="map"))
    missing_key = "Transformer/encoderblock_1/MlpBlock_0/Dense_1/bias"
    del flat[missing_key]
    flat["head/kernel"] = np.zeros((W, 10), np.float32)
    flat["head/bias"] = np.zeros((10,), np.float32)
    path = str(tmp_path / "bad.npz")
    np.savez(path, **flat)
    with pytest.raises(ValueError) as err:
        ckpt.load_vit_params(path, init)
    msg = str(err.value)
    assert missing_key in msg and "head/kernel" in msg and "head/bias" in msg
    assert "not in the checkpoint" in msg and "not in the model" in msg
    # Explicit skips: the head is ignored and the missing bias keeps its init value.
    params = ckpt.load_vit_params(path, init, dont_load=["head/.*", ".*/Dense_1/bias"])
    init_bias = init["Transformer"]["encoderblock_1"]["MlpBlock_0"]["Dense_1"]["bias"]
    np.testing.assert_array_equal(ckpt.flatten(params)[missing_key], init_bias)
    # A shape mismatch is reported too.
    flat2 = random_checkpoint(bv_vit_shapes(grid=4, pool="map", mlp=2 * MLP))
    np.savez(path, **flat2)
    with pytest.raises(ValueError, match="(?s)shape mismatch.*block_0/MlpBlock_0/Dense_0/kernel"):
        ckpt.load_vit_params(path, init)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ckpt.load_vit_params(str(tmp_path / "nope.npz"), init)


def test_posemb_resample_is_bilinear_corner_aligned():
    yy, xx = np.mgrid[:8, :8].astype(np.float32)
    old = np.stack([yy, xx, np.full_like(yy, 3.0)], -1).reshape(1, 64, 3)
    new = ckpt.resample_posemb(old, (12, 12)).reshape(12, 12, 3)
    lin = np.arange(12) * 7 / 11  # corners map to corners, linear in between
    np.testing.assert_allclose(new[..., 0], np.tile(lin[:, None], (1, 12)), atol=1e-5)
    np.testing.assert_allclose(new[..., 1], np.tile(lin[None, :], (12, 1)), atol=1e-5)
    np.testing.assert_allclose(new[..., 2], 3.0, atol=1e-6)
    assert ckpt.resample_posemb(old, (8, 8)) is old


def test_load_resamples_posemb_8x8_to_12x12(tmp_path):
    flat = random_checkpoint(bv_vit_shapes(grid=8, pool="none"))
    path = str(tmp_path / "vit8.npz")
    np.savez(path, **flat)
    params = ckpt.load_vit_params(path, init_vit(make_vit("none"), 12 * PATCH))
    pe = np.asarray(params["pos_embedding"])
    assert pe.shape == (1, 144, W)
    np.testing.assert_allclose(pe, ckpt.resample_posemb(flat["pos_embedding"], (12, 12)))
    np.testing.assert_allclose(pe.reshape(12, 12, W)[0, 0], flat["pos_embedding"][0, 0], atol=1e-6)


def test_old_layout_with_cls_row_in_posemb(tmp_path):
    flat = random_checkpoint(bv_vit_shapes(grid=4, pool="tok"))
    pe = flat.pop("pos_embedding")
    row0 = np.full((1, 1, W), 0.5, np.float32)
    flat["Transformer/posembed_input/pos_embedding"] = np.concatenate([row0, pe], axis=1)
    path = str(tmp_path / "old.npz")
    np.savez(path, **flat)
    params = ckpt.load_vit_params(path, init_vit(make_vit("tok"), 4 * PATCH))
    np.testing.assert_allclose(params["pos_embedding"], pe)
    np.testing.assert_allclose(params["cls"], flat["cls"] + 0.5)


def test_export_import_roundtrip_of_locca_encoder(tmp_path):
    small = dict(width=W, num_heads=HEADS, mlp_dim=MLP, depth=DEPTH, patch_size=PATCH,
                 image_size=4 * PATCH, vocab_size=32, max_len=8)
    model = LocCa(get_config("tiny", **small))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32),
                          param_shapes(model))
    path = str(tmp_path / "enc" / "encoder.npz")
    ckpt.export_encoder(params, path)
    with np.load(path) as z:  # plain numpy sees big_vision's flat names
        assert set(z.files) == set(bv_vit_shapes(grid=4, pool="none"))
        np.testing.assert_array_equal(z["embedding/kernel"], params["img"]["embedding"]["kernel"])
    # A fresh model (another resolution) imports it strictly; the posemb is resampled.
    big = LocCa(get_config("tiny", **{**small, "image_size": 8 * PATCH}))
    init = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), param_shapes(big)["img"])
    loaded = ckpt.load_vit_params(path, init)
    assert loaded["pos_embedding"].shape == (1, 64, W)
    np.testing.assert_array_equal(loaded["Transformer"]["encoder_norm"]["scale"],
                                  params["img"]["Transformer"]["encoder_norm"]["scale"])
