"""LocCa model: config shapes, masks (causal / parallel / pad), zero-init head, dtype."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model.configs import SHIPPED, get_config
from model.locca import LocCa, init_params, param_shapes

PAD = 0


def _count(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


# Encoder sizes without a head (big_vision/timm counts), in millions.
ENCODER_MPARAMS = {"S/16": 21.7, "B/16": 85.8, "L/14": 303.2}


@pytest.mark.parametrize("variant", SHIPPED + ("Ti/32",))
def test_every_config_shapes(variant):
    cfg = get_config(variant)
    model = LocCa(cfg)
    b = 2
    images = jax.ShapeDtypeStruct((b, cfg.image_size, cfg.image_size, 3), jnp.float32)
    inputs = jax.ShapeDtypeStruct((b, cfg.max_len), jnp.int32)
    # One abstract trace gives both the logits and the params (no memory for B/L).
    logits, variables = jax.eval_shape(model.init_with_output, jax.random.key(0), images, inputs)
    params = variables["params"]
    assert logits.shape == (b, cfg.max_len, cfg.vocab_size) and logits.dtype == jnp.float32
    assert set(params) == {"img", "txt"}
    n_patches = (cfg.image_size // cfg.patch_size) ** 2
    assert params["img"]["pos_embedding"].shape == (1, n_patches, cfg.width)
    assert len([k for k in params["txt"] if k.startswith("EncDecBlock")]) == cfg.dec_depth
    assert cfg.dec_depth == max(1, cfg.depth // 2)  # the paper: about half the encoder
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    hash(model)  # jax.jit(model.apply) hashes the module: the config must be frozen
    if variant in ENCODER_MPARAMS:
        assert abs(_count(params["img"]) / 1e6 - ENCODER_MPARAMS[variant]) < 0.2
        assert cfg.image_size == 224 and cfg.max_len == 64


def test_encode_shape():
    cfg = get_config("tiny")
    model = LocCa(cfg)
    images = jax.ShapeDtypeStruct((3, cfg.image_size, cfg.image_size, 3), jnp.float32)
    enc = jax.eval_shape(lambda p, x: model.apply({"params": p}, x, method="encode"),
                         param_shapes(model), images)
    assert enc.shape == (3, (cfg.image_size // cfg.patch_size) ** 2, cfg.width)


def test_config_overrides_and_errors():
    cfg = get_config("tiny,image_size=128,dec_depth=3", vocab_size=100, dtype="bfloat16")
    assert (cfg.image_size, cfg.dec_depth, cfg.vocab_size, cfg.dtype) == (128, 3, 100, "bfloat16")
    assert get_config("tiny", width=256).dec_width == 256  # decoder follows the encoder
    with pytest.raises(ValueError, match="unknown model config field.*widht"):
        get_config("tiny", widht=3)
    with pytest.raises(ValueError, match="unknown model variant"):
        get_config("X/16")
    with pytest.raises(ValueError, match="multiple of patch_size"):
        get_config("tiny", image_size=100)


TINY = dict(vocab_size=64, max_len=10, image_size=32, width=32, num_heads=2, mlp_dim=64, depth=1,
            dec_depth=2)


@pytest.fixture(scope="module")
def tiny():
    model = LocCa(get_config("tiny", **TINY))
    params = jax.jit(lambda r: init_params(model, r))(jax.random.key(0))
    images = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3), minval=-1, maxval=1)
    return model, params, images, _fwd(model)


def _fwd(model):
    """Jitted forward: op-by-op (eager) Flax is far slower than one compile on this CPU."""
    return jax.jit(lambda p, x, t, par=None: model.apply({"params": p}, x, t, parallel=par))


def _random_head(params, seed=3):
    """The head is zero-initialized (all logits equal); randomize it so masks become visible."""
    txt = dict(params["txt"])
    head = dict(txt["LogitsDense"])
    head["kernel"] = jax.random.normal(jax.random.key(seed), head["kernel"].shape)
    txt["LogitsDense"] = head
    return {**params, "txt": txt}


def _tokens(rows):
    return jnp.asarray(rows, jnp.int32)


def test_zero_init_head_gives_uniform_logits(tiny):
    model, params, images, fwd = tiny
    inputs = _tokens([[2, 7, 8, 9, 0, 0], [2, 5, 0, 0, 0, 0]])
    logits = fwd(params, images, inputs)
    np.testing.assert_array_equal(np.asarray(logits), 0.0)
    logp = jax.nn.log_softmax(logits)
    np.testing.assert_allclose(logp, -np.log(64), rtol=1e-6)


def test_causal_mask_and_parallel(tiny):
    model, params, images, fwd = tiny
    params = _random_head(params)
    a = _tokens([[2, 7, 8, 9, 10, 11]] * 2)
    b = a.at[:, 4].set(30)  # change a later token
    apply = lambda x, par=None: fwd(params, images, x, par)  # noqa: E731
    la, lb = apply(a), apply(b)
    np.testing.assert_allclose(la[:, :4], lb[:, :4], atol=1e-6)  # earlier positions unchanged
    assert np.abs(la[:, 4:] - lb[:, 4:]).max() > 1e-3  # the changed one and later ones move
    par = jnp.array([True, False])
    pa, pb = apply(a, par), apply(b, par)
    assert np.abs(pa[0, :4] - pb[0, :4]).max() > 1e-3  # bidirectional for example 0
    np.testing.assert_allclose(pa[1, :4], pb[1, :4], atol=1e-6)  # still causal for example 1
    np.testing.assert_allclose(pa[1], la[1], atol=1e-6)  # parallel=False == default


def test_pad_keys_are_ignored(tiny):
    model, params, images, fwd = tiny
    params = _random_head(params)
    inputs = _tokens([[2, 7, 0, 9, 10, 0], [2, 5, 6, 0, 0, 0]])
    real = np.asarray(inputs != PAD)
    # Moving the pad token's embedding far away must not change any non-pad position's logits,
    # in causal and in parallel mode.
    txt = dict(params["txt"])
    emb = dict(txt["EmbedTargets"])
    emb["embedding"] = emb["embedding"].at[PAD].set(100.0)
    txt["EmbedTargets"] = emb
    moved = {**params, "txt": txt}
    for par in (jnp.array([False, False]), jnp.array([True, True])):
        l0, l1 = fwd(params, images, inputs, par), fwd(moved, images, inputs, par)
        np.testing.assert_allclose(np.asarray(l0)[real], np.asarray(l1)[real], rtol=1e-5, atol=1e-4)
    # In parallel mode trailing padding doesn't change the result either (shorter buffer).
    par = jnp.array([True, True])
    short, long = fwd(params, images, inputs[:, :3], par), fwd(params, images, inputs, par)
    np.testing.assert_allclose(short[1], long[1, :3], rtol=1e-5, atol=1e-4)


def test_encode_decode_equals_call_and_dropout(tiny):
    model, params, images, fwd = tiny
    params = _random_head(params)
    inputs = _tokens([[2, 7, 8, 0, 0, 0], [2, 5, 6, 9, 0, 0]])
    two_step = jax.jit(lambda p: model.apply(
        {"params": p}, model.apply({"params": p}, images, method="encode"), inputs,
        method="decode"))
    np.testing.assert_allclose(two_step(params), fwd(params, images, inputs), atol=1e-4)
    drop = LocCa(get_config("tiny", **TINY, enc_dropout=0.5, dec_dropout=0.5))
    train_fwd = jax.jit(lambda p, r: drop.apply({"params": p}, images, inputs, train=True,
                                                rngs={"dropout": r}))
    out = [train_fwd(params, jax.random.key(s)) for s in (0, 1)]
    assert np.abs(out[0] - out[1]).max() > 1e-3  # dropout is active in training


def test_bfloat16_activations_keep_float32_params_and_logits(tiny):
    model, params, images, fwd = tiny
    params = _random_head(params)
    bf = LocCa(get_config("tiny", **TINY, dtype="bfloat16"))
    inputs = _tokens([[2, 7, 8, 9, 0, 0], [2, 7, 0, 0, 0, 0]])
    lb = _fwd(bf)(params, images, inputs)
    lf = fwd(params, images, inputs)
    assert lb.dtype == jnp.float32 and np.abs(lb - lf).max() > 0  # bf16 really used
    assert np.abs(lb - lf).max() < 0.1 * np.abs(lf).max() + 0.1  # same function, bf16 rounding
    grads = jax.eval_shape(jax.grad(lambda p: bf.apply({"params": p}, images, inputs).sum()),
                           params)
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))
