"""Soft location targets (training/loc_targets.py), the sincos location-embedding init and the
Gaussian location-logits init."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model.configs import get_config
from model.decoder import embedding_init, logits_init, sincos_loc_embedding
from model.locca import LocCa, init_params
from training import model_fns
from training.loc_targets import gaussian_bin_targets, loc_soft_xent, sigma_schedule

LOC_START, NUM_LOC, VOCAB = 7, 64, 100


@pytest.mark.parametrize("sigma", [0.5, 2.0, 8.0])
def test_gaussian_targets_sum_to_one_and_peak_at_the_bin(sigma):
    bins = jnp.array([0, 1, 31, 62, 63])
    t = np.asarray(gaussian_bin_targets(bins, NUM_LOC, sigma))
    np.testing.assert_allclose(t.sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(t.argmax(-1), np.asarray(bins))
    assert (t >= 0).all()
    # Symmetric around an interior bin, decreasing away from it.
    assert t[2, 30] == pytest.approx(t[2, 32], rel=1e-5)
    assert t[2, 31] > t[2, 30] > t[2, 25]


def test_gaussian_targets_at_sigma_zero_are_one_hot():
    bins = jnp.array([[3, 40], [0, 63]])
    np.testing.assert_array_equal(gaussian_bin_targets(bins, NUM_LOC, 0.0),
                                  jax.nn.one_hot(bins, NUM_LOC))



def test_sigma_schedule_anneals_from_start_to_end_then_holds():
    sched = sigma_schedule(96.0, 4.0, 100)
    values = [float(sched(jnp.asarray(s))) for s in (0, 25, 50, 75, 100, 150)]
    assert values[0] == pytest.approx(96.0)
    assert values[2] == pytest.approx(50.0)  # cosine midpoint
    assert values[4] == pytest.approx(4.0) and values[5] == pytest.approx(4.0)
    assert all(a > b for a, b in zip(values[:4], values[1:5], strict=True))
    # No annealing asked for: a constant Python float, so the one-hot fast path stays static.
    assert sigma_schedule(0.0, 0.0, 100)(jnp.asarray(5)) == 0.0
    assert isinstance(sigma_schedule(8.0, 8.0, 100)(jnp.asarray(5)), float)


def test_traced_sigma_matches_the_static_one_and_reaches_one_hot():
    bins = jnp.array([0, 5, 40, 63])
    np.testing.assert_allclose(gaussian_bin_targets(bins, NUM_LOC, jnp.float32(3.0)),
                               gaussian_bin_targets(bins, NUM_LOC, 3.0), rtol=1e-6)
    at_zero = jax.jit(lambda s: gaussian_bin_targets(bins, NUM_LOC, s))(jnp.float32(0.0))
    np.testing.assert_array_equal(at_zero, jax.nn.one_hot(bins, NUM_LOC))
    logits, targets = _logits_targets()
    kw = dict(loc_start=LOC_START, num_loc=NUM_LOC)
    traced = jax.jit(lambda s: loc_soft_xent(logits, targets, sigma=s, **kw))(jnp.float32(0.0))
    np.testing.assert_allclose(traced, loc_soft_xent(logits, targets, sigma=0.0, **kw),
                               rtol=1e-5, atol=1e-6)

def _logits_targets():
    logits = jax.random.normal(jax.random.PRNGKey(0), (3, 5, VOCAB)) * 3.0
    # Mix of text ids (below, above the location range), location ids at both ends, and pad 0.
    targets = jnp.array([[0, 1, LOC_START, LOC_START + 10, 90],
                         [LOC_START + NUM_LOC - 1, LOC_START + NUM_LOC, 5, 6, 2],
                         [LOC_START + 30, LOC_START + 31, LOC_START + 32, 3, 0]])
    return logits, targets


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_non_location_targets_are_untouched(smoothing):
    logits, targets = _logits_targets()
    soft = loc_soft_xent(logits, targets, loc_start=LOC_START, num_loc=NUM_LOC, sigma=4.0,
                         label_smoothing=smoothing)
    plain = model_fns.token_xent(logits, targets, smoothing)
    is_loc = (targets >= LOC_START) & (targets < LOC_START + NUM_LOC)
    np.testing.assert_allclose(np.where(is_loc, 0, soft), np.where(is_loc, 0, plain), rtol=1e-6)
    # ... and the location ones do change (otherwise the test above proves nothing).
    assert not np.allclose(np.where(is_loc, soft, 0), np.where(is_loc, plain, 0))


def test_sigma_zero_equals_plain_cross_entropy():
    logits, targets = _logits_targets()
    np.testing.assert_allclose(
        loc_soft_xent(logits, targets, loc_start=LOC_START, num_loc=NUM_LOC, sigma=0.0),
        model_fns.token_xent(logits, targets), rtol=1e-6)


def test_location_loss_is_cross_entropy_against_the_gaussian():
    logits, targets = _logits_targets()
    sigma = 3.0
    got = loc_soft_xent(logits, targets, loc_start=LOC_START, num_loc=NUM_LOC, sigma=sigma)
    logp = np.asarray(jax.nn.log_softmax(logits, -1))
    b, i = 2, 1
    k = np.arange(NUM_LOC)
    w = np.exp(-0.5 * ((k - 31) / sigma) ** 2)
    w /= w.sum()
    want = -(w * logp[b, i, LOC_START:LOC_START + NUM_LOC]).sum()
    assert float(got[b, i]) == pytest.approx(want, rel=1e-5)


def test_soft_loss_prefers_near_misses():
    # Predicting a neighbouring bin costs less than a far one (one-hot scores them the same).
    target = jnp.array([LOC_START + 20])
    near = jnp.zeros((1, VOCAB)).at[0, LOC_START + 22].set(10.0)
    far = jnp.zeros((1, VOCAB)).at[0, LOC_START + 50].set(10.0)
    kw = dict(loc_start=LOC_START, num_loc=NUM_LOC)
    assert float(loc_soft_xent(near, target, sigma=3.0, **kw)[0]) < float(
        loc_soft_xent(far, target, sigma=3.0, **kw)[0])
    assert float(loc_soft_xent(near, target, sigma=0.0, **kw)[0]) == pytest.approx(
        float(loc_soft_xent(far, target, sigma=0.0, **kw)[0]))


@pytest.mark.slow  # compiles the whole loss twice; loc_soft_xent is checked directly above
def test_loss_fn_uses_soft_targets_only_when_asked():
    import ml_collections

    from model.configs import get_config
    from model.locca import LocCa

    cfg = get_config("tiny", image_size=32, width=32, depth=1, mlp_dim=64, num_heads=2,
                     dec_depth=1, max_len=8, vocab_size=VOCAB)
    model = LocCa(ml_collections.FrozenConfigDict(cfg))
    rng = jax.random.PRNGKey(1)
    params = model.init(rng, jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 7), jnp.int32))["params"]
    # Random, non-uniform logits (the logits layer starts at zero: uniform logits score soft and
    # one-hot targets the same, which would hide any difference).
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
    params = jax.tree.unflatten(tree, [x + 0.3 * jax.random.normal(k, x.shape)
                                       for x, k in zip(leaves, keys, strict=True)])
    targets = jnp.array([[LOC_START + 3, LOC_START + 9, LOC_START + 12, LOC_START + 20, 1, 0, 0]] * 2)
    batch = {"image": jnp.ones((2, 32, 32, 3)) * 0.1,
             "aref/inputs": jnp.concatenate([jnp.full((2, 1), 2), targets[:, :-1]], 1),
             "aref/targets": targets, "aref/loss_mask": (targets > 0).astype(jnp.float32)}
    kw = dict(task_weights={"aref": 1.0}, train=False, loc_start=LOC_START, num_loc=NUM_LOC)
    plain, _ = model_fns.loss_fn(params, model, batch, rng, **kw)
    off, _ = model_fns.loss_fn(params, model, batch, rng, loc_sigma=0.0, **kw)
    soft, _ = model_fns.loss_fn(params, model, batch, rng, loc_sigma=2.0, **kw)
    assert float(off) == pytest.approx(float(plain))
    assert abs(float(soft) - float(plain)) > 1e-4


def test_sincos_location_embedding_is_smooth_and_placed():
    emb = np.asarray(sincos_loc_embedding(NUM_LOC * 16, 48))
    assert emb.shape == (NUM_LOC * 16, 48)
    assert emb.var() == pytest.approx(1.0, abs=0.1)
    near = np.linalg.norm(emb[500] - emb[501])
    far = np.linalg.norm(emb[500] - emb[900])
    assert near < 0.2 * far
    table = embedding_init(LOC_START, NUM_LOC, "sincos")(jax.random.PRNGKey(0), (VOCAB, 48))
    np.testing.assert_allclose(table[LOC_START:LOC_START + NUM_LOC],
                               sincos_loc_embedding(NUM_LOC, 48), rtol=1e-6)
    plain = embedding_init(LOC_START, NUM_LOC, "normal")(jax.random.PRNGKey(0), (VOCAB, 48))
    # Rows outside the location range are the ordinary N(0, 1) draw in both.
    np.testing.assert_array_equal(table[:LOC_START], plain[:LOC_START])
    np.testing.assert_array_equal(table[LOC_START + NUM_LOC:], plain[LOC_START + NUM_LOC:])
    with pytest.raises(ValueError, match="loc_embed_init"):
        embedding_init(LOC_START, NUM_LOC, "bogus")


def test_gaussian_head_starts_as_a_gaussian_over_the_bins_around_a_readout():
    sigma = 0.1
    cfg = get_config("tiny", vocab_size=VOCAB, image_size=32, width=32, depth=1, mlp_dim=64,
                     num_heads=2, max_len=8, loc_start=LOC_START, num_loc=NUM_LOC,
                     loc_head_init="gaussian", loc_head_sigma=sigma)
    model = LocCa(cfg)
    params = init_params(model, jax.random.PRNGKey(0))
    images = jax.random.uniform(jax.random.PRNGKey(1), (4, 32, 32, 3), minval=-1.0)
    inputs = jax.random.randint(jax.random.PRNGKey(2), (4, 8), 1, VOCAB)
    logits = np.asarray(model.apply({"params": params}, images, inputs), np.float64)
    loc = logits[..., LOC_START:LOC_START + NUM_LOC].reshape(-1, NUM_LOC)
    # Non-location logits start at zero, as with the CapPa zero init.
    np.testing.assert_allclose(logits[..., :LOC_START], 0.0, atol=1e-6)
    np.testing.assert_allclose(logits[..., LOC_START + NUM_LOC:], 0.0, atol=1e-6)
    # Each row is exactly c * (2 u t - t^2): a quadratic in the bin centre t with curvature
    # -c = -1 / (2 sigma^2), i.e. log N(t; u, sigma^2) up to a constant, peaked at its own u.
    t = (np.arange(NUM_LOC) + 0.5) / NUM_LOC - 0.5
    fits = np.polyfit(t, loc.T, 2)  # [3, rows]: t^2, t, 1 coefficients
    np.testing.assert_allclose(fits[0], -1.0 / (2 * sigma**2), rtol=1e-4)
    np.testing.assert_allclose(fits[2], 0.0, atol=1e-3)
    u = fits[1] / (1.0 / sigma**2)
    assert np.abs(u).max() < 1.5 and u.std() > 0.05  # the readout moves with the input
    residual = loc - np.polyval(fits, t[:, None]).T
    assert np.abs(residual).max() < 1e-3
    # Different examples peak at different bins.
    assert len(set(loc.argmax(-1).tolist())) > 4
    zeros = logits_init(LOC_START, NUM_LOC, "zeros")
    assert float(jnp.abs(zeros[0](jax.random.PRNGKey(0), (32, VOCAB))).max()) == 0.0
    with pytest.raises(ValueError, match="loc_head_init"):
        logits_init(LOC_START, NUM_LOC, "bogus")
    with pytest.raises(ValueError, match="loc_head_sigma"):
        logits_init(LOC_START, NUM_LOC, "gaussian", sigma=0.0)
