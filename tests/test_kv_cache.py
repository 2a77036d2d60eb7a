"""The KV-cached decoder: same attention as Flax's, same logits as the teacher-forced pass, same
generated tokens and scores as re-running the whole decoder every step."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_generate import random_locca

from model import generate as gen
from model.decoder import Attention
from model.locca import make_decode_fn, make_incremental_decoder

PAD, EOS, BOS = 0, 1, 2
V, L = 40, 12


def test_attention_has_flax_attentions_parameters_and_outputs():
    """Attention replaces nn.MultiHeadDotProductAttention in the decoder: checkpoints (big_vision
    names) and training numerics must not change."""
    x = jax.random.normal(jax.random.key(0), (2, 5, 16))
    kv = jax.random.normal(jax.random.key(1), (2, 7, 16))
    mask = jax.random.bernoulli(jax.random.key(2), 0.7, (2, 1, 5, 7)).at[..., 0].set(True)
    flax_attn = nn.MultiHeadDotProductAttention(num_heads=4, use_bias=False,
                                                kernel_init=nn.initializers.xavier_uniform())
    ref_params = flax_attn.init(jax.random.key(3), x, kv, mask=mask)["params"]
    params = Attention(num_heads=4).init(jax.random.key(3), x, kv, mask)["params"]
    assert jax.tree.structure(params) == jax.tree.structure(ref_params)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params), strict=True):
        np.testing.assert_array_equal(a, b)  # same names, shapes and initialisation
    out, (k, v) = Attention(num_heads=4).apply({"params": params}, x, kv, mask)
    np.testing.assert_array_equal(out, flax_attn.apply({"params": ref_params}, x, kv, mask=mask))
    assert k.shape == v.shape == (2, 7, 4, 4)


@pytest.fixture(scope="module")
def tiny():
    rng = np.random.default_rng(0)
    model, params = random_locca(V, L, 2, rng)
    # A less likely EOS, so that sequences run long enough for stale cache entries to matter.
    params["txt"]["LogitsDense"]["bias"][EOS] -= 3.0
    encoded = jnp.asarray(rng.normal(size=(3, 6, 32)), jnp.float32)
    return model, params, encoded


def test_stepping_through_a_sequence_gives_the_teacher_forced_logits(tiny):
    model, params, encoded = tiny
    rng = np.random.default_rng(1)
    inputs = rng.integers(3, V, size=(3, L)).astype(np.int32)
    inputs[:, 0] = BOS
    inputs[1, 7:] = PAD  # padding inside the buffer is masked as a key, in both paths
    inputs[2, 4] = PAD
    full = model.apply({"params": params}, encoded, jnp.asarray(inputs), method="decode")
    dec = make_incremental_decoder(model, params)
    # A cache made from another buffer: each step must overwrite what it reads.
    _, static, state = dec.prefill(encoded, jnp.full((3, L), 5, jnp.int32))
    step = jax.jit(dec.step)
    for pos in range(L):
        logits, state = step(static, state, jnp.asarray(inputs[:, pos]), jnp.int32(pos))
        real = inputs[:, pos] != PAD  # a pad query's output is never used
        np.testing.assert_allclose(np.asarray(logits)[real], np.asarray(full)[real, pos],
                                   rtol=1e-5, atol=1e-5)


def _prompts():
    prompt = np.zeros((3, L), np.int32)
    prompt[:, 0] = BOS
    prompt[1, 1:3] = [7, 8]
    prompt[2, 1:5] = [9, 10, 11, 12]
    return prompt, np.array([1, 3, 5], np.int32)


@pytest.mark.parametrize("beam_size", [1, 3])
@pytest.mark.parametrize("constrained", [False, True])
def test_cached_generation_equals_rerunning_the_decoder(tiny, beam_size, constrained):
    model, params, encoded = tiny
    prompt, prompt_len = _prompts()
    kw = dict(eos_id=EOS, pad_id=PAD)
    if constrained:  # a box: 4 location tokens in order, then EOS (ids 20..39 play locations)
        kw.update(allowed=gen.loc_constraint(V, 20, num_loc=20, eos_id=EOS), box_order=(20, 20))
    if beam_size == 1:
        run = functools.partial(gen.greedy, **kw)
    else:
        run = functools.partial(gen.beam_search, beam_size=beam_size, **kw)
    outs = {}
    for name, dec in (("cached", make_incremental_decoder(model, params)),
                      ("rerun", make_decode_fn(model, params))):
        outs[name] = jax.jit(functools.partial(run, dec))(encoded, prompt, prompt_len)
    np.testing.assert_array_equal(outs["cached"][0], outs["rerun"][0])
    np.testing.assert_allclose(outs["cached"][1], outs["rerun"][1], rtol=1e-5)
    generated = gen.generated(np.asarray(outs["cached"][0]), prompt_len, EOS)
    assert max(map(len, generated)) >= (4 if constrained else 5)  # not an early EOS
    np.testing.assert_array_equal(np.asarray(outs["cached"][0])[:, :5][prompt_len == 5],
                                  prompt[prompt_len == 5, :5])  # prompts kept


def reference_beam_search(decode_fn, encoded, prompt, prompt_len, beam_size):
    """Textbook beam search in Python: each hypothesis is re-scored from its own full sequence by
    the teacher-forced decoder, so no state has to follow its beam. -> best sequence per row."""
    step = jax.jit(decode_fn)
    out = []
    for b in range(len(prompt)):
        n = int(prompt_len[b])
        hyps = [(list(prompt[b, :n]), 0.0, False)]  # (tokens, log-prob, ended)
        for pos in range(n, L):
            cands = []
            for seq, score, ended in hyps:
                if ended:
                    cands.append((seq + [PAD], score, True))
                    continue
                buf = np.array([seq + [PAD] * (L - len(seq))], np.int32)
                logits = np.asarray(step(encoded[b:b + 1], jnp.asarray(buf)), np.float64)
                logp = logits[0, pos - 1] - np.logaddexp.reduce(logits[0, pos - 1])
                cands += [(seq + [t], score + logp[t], t == EOS) for t in range(V)]
            hyps = sorted(cands, key=lambda c: -c[1])[:beam_size]
            if all(ended for _, _, ended in hyps):
                break
        best = max(hyps, key=lambda c: c[1])[0]
        out.append(best + [PAD] * (L - len(best)))
    return np.array(out)


@pytest.mark.parametrize("cached", [True, False])
def test_beam_search_equals_a_textbook_beam_search(tiny, cached):
    """Catches a state that does not follow its beam (a Markov-chain decoder cannot: its logits
    ignore the history)."""
    model, params, encoded = tiny
    prompt, prompt_len = _prompts()
    dec = make_incremental_decoder(model, params) if cached else make_decode_fn(model, params)
    tokens, _ = jax.jit(functools.partial(gen.beam_search, dec, beam_size=3, eos_id=EOS,
                                          pad_id=PAD))(encoded, prompt, prompt_len)
    ref = reference_beam_search(make_decode_fn(model, params), encoded, prompt, prompt_len, 3)
    np.testing.assert_array_equal(tokens, ref)
