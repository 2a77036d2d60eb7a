"""Generation: greedy = argmax path, beam 1 = greedy, beam beats greedy, location constraint."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model import generate as gen
from model.configs import get_config
from model.locca import LocCa, make_decode_fn, param_shapes

PAD, EOS, BOS = 0, 1, 2
V, L = 16, 8


def markov_decode_fn(table: np.ndarray):
    """A rigged decoder: the logits at position i depend only on inputs[i] (a Markov chain)."""
    table = jnp.asarray(table, jnp.float32)

    def decode_fn(encoded, inputs):
        return table[inputs] + 0.0 * encoded.sum()  # [B, L, V]

    return decode_fn


def reference_greedy(table, prompt, prompt_len, allowed=None):
    """Plain python argmax loop over the same Markov table."""
    out = []
    for row, n in zip(prompt, prompt_len, strict=True):
        seq = list(row[:n])
        while len(seq) < L:
            logits = np.array(table[seq[-1]], np.float64)
            k = len(seq) - n
            if allowed is not None and k < len(allowed):
                logits = np.where(allowed[k], logits, -np.inf)
            seq.append(int(np.argmax(logits)))
            if seq[-1] == EOS:
                break
        out.append(seq + [PAD] * (L - len(seq)))
    return np.array(out)


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    table = rng.normal(size=(V, V)) * 3
    table[3] = -5.0
    table[3, EOS] = 5.0  # token 3 is always followed by EOS
    prompt = np.array([[BOS, 9, 9, 9, 9, 9, 9, 9], [BOS, 4, 3, 0, 0, 0, 0, 0],
                       [BOS, 5, 6, 7, 0, 0, 0, 0]], np.int32)
    prompt_len = np.array([1, 3, 4], np.int32)
    encoded = jnp.zeros((3, 2, 4))
    return table, prompt, prompt_len, encoded


def _greedy(decode_fn, *args, **kw):
    return jax.jit(functools.partial(gen.greedy, decode_fn, eos_id=EOS, pad_id=PAD, **kw))(*args)


def _beam(decode_fn, *args, **kw):
    return jax.jit(functools.partial(gen.beam_search, decode_fn, eos_id=EOS, pad_id=PAD, **kw))(
        *args)


def test_greedy_follows_argmax_path_and_keeps_prompt(setup):
    table, prompt, prompt_len, encoded = setup
    tokens, scores = _greedy(markov_decode_fn(table), encoded, prompt, prompt_len)
    expected = reference_greedy(table, prompt, prompt_len)
    np.testing.assert_array_equal(tokens, expected)
    np.testing.assert_array_equal(tokens[1, :4], [BOS, 4, 3, EOS])  # EOS, then only padding
    np.testing.assert_array_equal(tokens[1, 4:], PAD)
    np.testing.assert_array_equal(tokens[2, :4], prompt[2, :4])
    # The score is the sum of the generated tokens' log-probs (EOS included).
    logp = jax.nn.log_softmax(jnp.asarray(table), axis=-1)
    ref = sum(float(logp[a, b]) for a, b in zip(expected[0, :-1], expected[0, 1:], strict=True)
              if b != PAD)
    np.testing.assert_allclose(scores[0], ref, rtol=1e-5)
    assert gen.generated(tokens, prompt_len, EOS)[1] == []


def test_beam_size_one_equals_greedy(setup):
    table, prompt, prompt_len, encoded = setup
    fn = markov_decode_fn(table)
    allowed = np.zeros((2, V), bool)
    allowed[:, 10:14] = True
    for kw in ({}, {"allowed": allowed}):
        g_tok, g_score = _greedy(fn, encoded, prompt, prompt_len, **kw)
        b_tok, b_score = _beam(fn, encoded, prompt, prompt_len, beam_size=1, **kw)
        np.testing.assert_array_equal(b_tok, g_tok)
        np.testing.assert_allclose(b_score, g_score, rtol=1e-6)


def test_beam_search_finds_a_better_sequence_than_greedy():
    table = np.full((V, V), -30.0)
    table[BOS, 4:7] = np.log([0.1, 0.5, 0.4])  # greedy takes 5 ...
    table[5, 7:12] = 0.0  # ... then 5 equally likely tokens (p = 0.2 each) ...
    table[7:12, EOS] = 0.0  # ... then EOS
    table[[4, 6], EOS] = 0.0  # but BOS 6 EOS is more likely overall (0.4 vs 0.1)
    prompt = np.zeros((1, L), np.int32)
    prompt[0, 0] = BOS
    args = (jnp.zeros((1, 2, 4)), prompt, np.array([1], np.int32))
    fn = markov_decode_fn(table)
    g_tok, g_score = _greedy(fn, *args)
    b_tok, b_score = _beam(fn, *args, beam_size=3)
    np.testing.assert_array_equal(g_tok[0, :4], [BOS, 5, 7, EOS])
    np.testing.assert_array_equal(b_tok[0, :3], [BOS, 6, EOS])
    np.testing.assert_allclose(b_score[0], np.log(0.4), atol=1e-4)
    np.testing.assert_allclose(g_score[0], np.log(0.5 * 0.2), atol=1e-4)


def test_location_constraint_forces_loc_tokens_then_eos(setup):
    table, prompt, prompt_len, encoded = setup
    loc_start, num_loc = 12, 4
    biased = table.copy()
    biased[:, loc_start:] -= 20.0  # the unconstrained model never picks a location token
    allowed = gen.loc_constraint(V, loc_start, num_loc=num_loc, eos_id=EOS)
    assert allowed.shape == (5, V) and allowed[:4].sum() == 16 and allowed[4, EOS]
    fn = markov_decode_fn(biased)
    short = (encoded, prompt[1:], prompt_len[1:])  # rows whose buffer has room for a box
    for tokens, _ in (_greedy(fn, *short, allowed=allowed),
                      _beam(fn, *short, beam_size=3, allowed=allowed)):
        for row, n in zip(np.asarray(tokens), prompt_len[1:], strict=True):
            box = row[n:n + 4]
            assert ((box >= loc_start) & (box < loc_start + num_loc)).all(), row
            if n + 4 < L:
                assert row[n + 4] == EOS
    np.testing.assert_array_equal(_greedy(fn, *short)[0], reference_greedy(biased, *short[1:]))
    # Per-example constraints: row 0 constrained, row 1 free.
    per_example = np.stack([allowed, np.ones_like(allowed)])
    tokens, _ = _greedy(fn, *short, allowed=per_example)
    assert (np.asarray(tokens)[0, 3:7] >= loc_start).all()
    assert not (np.asarray(tokens)[1, 4:] >= loc_start).any()


def random_locca(vocab: int, max_len: int, dec_depth: int, rng: np.random.Generator):
    """A 32-wide LocCa with N(0, 0.25) values in every parameter (an abstract init avoids
    compiling the initializers; the real init's zero head would make every step a tie)."""
    cfg = get_config("tiny", vocab_size=vocab, max_len=max_len, image_size=16, width=32,
                     num_heads=2, mlp_dim=64, depth=1, dec_depth=dec_depth)
    model = LocCa(cfg)
    params = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32) * 0.5,
                          param_shapes(model))
    return model, params


def test_generation_with_a_tiny_locca_matches_a_step_by_step_loop():
    rng = np.random.default_rng(0)
    model, params = random_locca(V, L, 1, rng)
    encoded = jnp.asarray(rng.normal(size=(2, 4, 32)), jnp.float32)
    decode_fn = make_decode_fn(model, params)
    prompt = np.zeros((2, L), np.int32)
    prompt[:, 0], prompt[1, 1] = BOS, 9
    prompt_len = np.array([1, 2], np.int32)
    tokens, _ = _greedy(decode_fn, encoded, prompt, prompt_len)
    step = jax.jit(decode_fn)
    seq, done = np.where(np.arange(L) < prompt_len[:, None], prompt, PAD), np.zeros(2, bool)
    for pos in range(1, L):
        nxt = np.argmax(np.asarray(step(encoded, jnp.asarray(seq)))[:, pos - 1], -1)
        gen_here = (pos >= prompt_len) & ~done
        seq[:, pos] = np.where(gen_here, nxt, seq[:, pos])
        done |= gen_here & (nxt == EOS)
    np.testing.assert_array_equal(tokens, seq)
    assert (seq[:, 2:] != PAD).any()  # something was generated, not just an immediate EOS
    b_tok, _ = _beam(decode_fn, encoded, prompt, prompt_len, beam_size=1)
    np.testing.assert_array_equal(b_tok, tokens)


@pytest.mark.parametrize("beam_size", [1, 3])
def test_box_order_keeps_the_far_edges_beyond_the_near_ones(beam_size):
    loc_start, num_loc = 12, 4
    table = np.full((V, V), -10.0, np.float32)
    # BOS -> y1=14 -> x1=15 -> (prefers) y2=12 -> (prefers) x2=13: an upside-down, inverted box.
    table[BOS, 14] = 5.0
    table[14, 15] = 5.0
    table[15, 12], table[15, 14], table[15, 13] = 5.0, 3.0, 4.0
    table[12, 13] = 5.0
    table[:, EOS] = -1.0
    prompt = np.array([[BOS] + [PAD] * (L - 1)], np.int32)
    lens = np.array([1], np.int32)
    encoded = jnp.zeros((1, 2, 4))
    allowed = gen.loc_constraint(V, loc_start, num_loc=num_loc, eos_id=EOS)
    fn = markov_decode_fn(table)
    run = _greedy if beam_size == 1 else functools.partial(_beam, beam_size=beam_size)
    free, _ = run(fn, encoded, prompt, lens, allowed=allowed)
    np.testing.assert_array_equal(np.asarray(free)[0, 1:5], [14, 15, 12, 13])  # malformed
    ordered, _ = run(fn, encoded, prompt, lens, allowed=allowed, box_order=(loc_start, num_loc))
    y1, x1, y2, x2 = np.asarray(ordered)[0, 1:5]
    assert (y1, x1) == (14, 15)
    assert y2 >= y1 and x2 >= x1
    assert (y2, x2) == (14, 15)  # the best allowed choices: 14 (3.0) over 15; then 15
    assert np.asarray(ordered)[0, 5] == EOS


def reference_expected_greedy(table, loc_start, num_loc, box_order):
    """Python loop: 4 constrained location tokens, each the rounded mean bin of the allowed ones."""
    seq = [BOS]
    for k in range(4):
        logits = np.array(table[seq[-1]], np.float64)[loc_start:loc_start + num_loc]
        low = seq[-2] - loc_start if box_order and k >= 2 else 0
        logits[:low] = -np.inf
        p = np.exp(logits - logits.max())
        p /= p.sum()
        seq.append(loc_start + int(np.round(np.sum(p * np.arange(num_loc)))))
    return seq


@pytest.mark.parametrize("box_order", [False, True])
def test_expected_bin_decoding_emits_the_mean_bin(box_order):
    vocab, loc_start, num_loc = 40, 8, 32
    rng = np.random.default_rng(1)
    # Tilted location logits (the argmax sits on the last bin) plus noise, per previous token.
    table = (np.linspace(0.0, 3.0, num_loc)[None] + rng.normal(size=(vocab, num_loc)))
    table = np.concatenate([np.full((vocab, loc_start), -2.0), table], axis=1).astype(np.float32)
    table[:, EOS] = -50.0
    prompt = np.zeros((1, L), np.int32)
    prompt[0, 0] = BOS
    args = (jnp.zeros((1, 2, 4)), prompt, np.array([1], np.int32))
    allowed = gen.loc_constraint(vocab, loc_start, num_loc=num_loc)
    order = (loc_start, num_loc) if box_order else None
    fn = markov_decode_fn(table)
    tokens, _ = _greedy(fn, *args, allowed=allowed, box_order=order,
                        expected_loc=(loc_start, num_loc))
    ref = reference_expected_greedy(table, loc_start, num_loc, box_order)
    np.testing.assert_array_equal(np.asarray(tokens)[0, :5], ref)
    argmax, _ = _greedy(fn, *args, allowed=allowed, box_order=order)
    assert (np.asarray(argmax)[0, 1:5] != ref[1:]).any()  # the two decodings differ here
    if box_order:
        y1, x1, y2, x2 = ref[1:]
        assert y2 >= y1 and x2 >= x1


def test_expected_bin_decoding_leaves_other_tokens_alone(setup):
    table, prompt, prompt_len, encoded = setup
    loc_start, num_loc = 12, 4
    biased = table.copy()
    biased[:, loc_start:] -= 20.0  # no location token is ever the argmax
    fn = markov_decode_fn(biased)
    plain, _ = _greedy(fn, encoded, prompt, prompt_len)
    expected, _ = _greedy(fn, encoded, prompt, prompt_len, expected_loc=(loc_start, num_loc))
    np.testing.assert_array_equal(expected, plain)
