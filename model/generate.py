"""Greedy and beam-search generation from a prompt, with an optional per-step token constraint.

The functions take the decoder in one of two forms, so they know nothing about the trainer or the
model:
- an `IncrementalDecoder` (for LocCa: `locca.make_incremental_decoder(model, params)`): `prefill`
  runs the decoder once over the whole prompt buffer and returns its keys/values (a KV cache, the
  encoder tokens' cross-attention keys/values included), then `step` decodes one position per call
  against that cache. G generated tokens cost one teacher-forced pass + G single-position passes.
- a plain `decode_fn(encoded, inputs int32[B, L]) -> logits float[B, L, V]` (any decoder, e.g.
  `locca.make_decode_fn(model, params)`): every step re-runs it over the whole fixed-length
  buffer (`from_decode_fn`), up to ~L times the work of the cached form. Same tokens, same scores
  (tests/test_kv_cache.py checks the two agree).
Shapes stay fixed either way, so the loop compiles once under jit (lax.while_loop, which also stops
when every sequence has ended).

Layout. `prompt` is int32[B, L] (L = the model's input length, max_len) holding, per example,
[BOS] + prefix tokens (+ any given target tokens, e.g. the phrase and " : " for `aref`), and
`prompt_len` int32[B] says how many of them are real (>= 1); the rest of the buffer is ignored.
Generation writes one token per position after the prompt until EOS or the end of the buffer.
The returned tokens are the whole buffer (prompt, generated tokens, EOS, then pad).

Constraint. `allowed` is bool[K, V] or bool[B, K, V]: row k lists the tokens allowed as the k-th
generated token; steps k >= K are unconstrained. `loc_constraint` builds the one that forces a box
(4 location tokens, then EOS). Scores are log-probabilities under the full softmax (the
constraint removes tokens, it does not renormalize). `box_order=(loc_start, num_loc)` adds the
one constraint a fixed table cannot express: in each generated box (y1 x1 y2 x2), y2 >= y1 and
x2 >= x1, so a model unsure of an edge picks the best well-formed box instead of a malformed one
(the 3rd and 4th location token of every 4 are bounded below by the token two steps before).

Expected-bin location decoding (greedy only). `expected_loc=(loc_start, num_loc)`: wherever the
argmax is a location id, emit the id of the expected bin instead, round(sum_k p_k * k) under the
softmax over the (allowed) location ids. The argmax of a model that is unsure where an edge lies
can sit anywhere on a broad distribution, often on a border bin when the distribution is tilted;
its mean is the point estimate that minimises squared error. Models trained with Gaussian location
targets (training/loc_targets.py) predict such a smoothed density; Generalized Focal Loss
(Li et al., 2020) decodes its discretised box distributions the same way. The paper decodes the
argmax; both are reported by the REC evaluator.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

DecodeFn = Callable[[jax.Array, jax.Array], jax.Array]


class IncrementalDecoder(NamedTuple):
    """A decoder that generation can run one position at a time.

    prefill(encoded float[B, N, D], tokens int32[B, L]) -> (logits float[B, L, V], static, state):
        the teacher-forced pass over the buffer; `static` (e.g. the cross-attention keys/values of
        the encoder tokens) never changes, `state` (e.g. self-attention keys/values) does. Both are
        pytrees with leading axis B.
    step(static, state, token int32[B], pos int32[]) -> (logits float[B, V], state): the token at
        position `pos` goes in, the logits for position pos + 1 come out. Entries of `state` at
        positions > pos may be stale: steps are causal, so they are never read before rewritten.
    """

    prefill: Callable[[jax.Array, jax.Array], tuple[jax.Array, Any, Any]]
    step: Callable[[Any, Any, jax.Array, jax.Array], tuple[jax.Array, Any]]


def from_decode_fn(decode_fn: DecodeFn) -> IncrementalDecoder:
    """The uncached form: the state is the token buffer, each step reruns the whole decoder."""

    def prefill(encoded, tokens):
        return decode_fn(encoded, tokens), encoded, tokens

    def step(encoded, tokens, token, pos):
        tokens = jax.lax.dynamic_update_slice_in_dim(tokens, token[:, None], pos, axis=1)
        logits = jax.lax.dynamic_index_in_dim(decode_fn(encoded, tokens), pos, axis=1,
                                              keepdims=False)
        return logits, tokens

    return IncrementalDecoder(prefill, step)


def _incremental(decoder: DecodeFn | IncrementalDecoder) -> IncrementalDecoder:
    return decoder if isinstance(decoder, IncrementalDecoder) else from_decode_fn(decoder)


def _log_softmax(logits: jax.Array) -> jax.Array:
    return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)


def _prefill(dec: IncrementalDecoder, encoded, tokens, start):
    """(static, state, log-probs float32[B, V] of the token at `start`) from the prompt buffer."""
    logits, static, state = dec.prefill(encoded, tokens)
    last = jax.lax.dynamic_index_in_dim(logits, start - 1, axis=1, keepdims=False)
    return static, state, _log_softmax(last)
NEG = -1e9  # finite "minus infinity": sums of masked scores stay NaN-free


def loc_constraint(vocab_size: int, loc_start: int, *, num_loc: int, num_boxes: int = 1,
                   eos_id: int | None = None) -> np.ndarray:
    """bool[K, V]: 4 * num_boxes location tokens, then (if eos_id is given) EOS. K = 4n (+1)."""
    rows = np.zeros((4 * num_boxes + (eos_id is not None), vocab_size), bool)
    rows[: 4 * num_boxes, loc_start:loc_start + num_loc] = True
    if eos_id is not None:
        rows[-1, eos_id] = True
    return rows


def _step_mask(allowed: jax.Array | None, step: jax.Array, vocab: int) -> jax.Array:
    """bool[B, V] allowed tokens for per-example generation step `step` int[B]."""
    if allowed is None:
        return jnp.ones((step.shape[0], vocab), bool)
    allowed = jnp.asarray(allowed, bool)
    if allowed.ndim == 2:
        allowed = jnp.broadcast_to(allowed[None], (step.shape[0], *allowed.shape))
    k = allowed.shape[1]
    rows = jnp.take_along_axis(allowed, jnp.clip(step, 0, k - 1)[:, None, None], axis=1)[:, 0]
    constrained = (step >= 0) & (step < k)
    return jnp.where(constrained[:, None], rows, True)


def _order_mask(box_order: tuple[int, int] | None, tokens: jax.Array, pos: jax.Array,
                step: jax.Array, vocab: int) -> jax.Array:
    """bool[B, V]: False for location ids below the box's opposite edge (see `box_order`).

    tokens int32[B, L] (positions < pos are filled), step int32[B] = generated-token index at pos.
    """
    if box_order is None:
        return jnp.ones((step.shape[0], vocab), bool)
    loc_start, num_loc = box_order
    ids = jnp.arange(vocab)[None]
    is_loc = (ids >= loc_start) & (ids < loc_start + num_loc)
    opposite = jax.lax.dynamic_index_in_dim(tokens, jnp.maximum(pos - 2, 0), axis=1,
                                            keepdims=True)  # [B, 1]
    bounded = (step >= 2) & (step % 4 >= 2)
    bounded = bounded[:, None] & (opposite >= loc_start) & (opposite < loc_start + num_loc)
    return ~(bounded & is_loc & (ids < opposite))


def _prepare(prompt: jax.Array, prompt_len: jax.Array, pad_id: int):
    prompt = jnp.asarray(prompt, jnp.int32)
    prompt_len = jnp.asarray(prompt_len, jnp.int32)
    positions = jnp.arange(prompt.shape[1])[None]
    tokens = jnp.where(positions < prompt_len[:, None], prompt, pad_id)
    start = jnp.maximum(jnp.min(prompt_len), 1)  # positions before it are all prompt
    return tokens, prompt_len, start


def _expected_bin(logp: jax.Array, best: jax.Array,
                  expected_loc: tuple[int, int] | None) -> jax.Array:
    """best int32[B] -> int32[B]: each location id replaced by the id of the expected bin under
    logp float[B, V] (already masked, so the mean stays within the allowed bins)."""
    if expected_loc is None:
        return best
    loc_start, num_loc = expected_loc
    p = jax.nn.softmax(logp[:, loc_start:loc_start + num_loc], axis=-1)
    mean = jnp.sum(p * jnp.arange(num_loc, dtype=jnp.float32), axis=-1)
    tok = loc_start + jnp.clip(jnp.round(mean), 0, num_loc - 1).astype(jnp.int32)
    return jnp.where((best >= loc_start) & (best < loc_start + num_loc), tok, best)


def greedy(decoder: DecodeFn | IncrementalDecoder, encoded: jax.Array, prompt: jax.Array,
           prompt_len: jax.Array, *, eos_id: int, pad_id: int = 0,
           allowed: jax.Array | None = None, box_order: tuple[int, int] | None = None,
           expected_loc: tuple[int, int] | None = None):
    """Greedy decoding (`expected_loc`: expected-bin location tokens, see the module docstring).

    encoded float[B, N, D], prompt int32[B, L], prompt_len int32[B]
    -> (tokens int32[B, L], scores float32[B] = sum of generated tokens' log-probs).
    """
    dec = _incremental(decoder)
    tokens, prompt_len, start = _prepare(prompt, prompt_len, pad_id)
    batch, length = tokens.shape
    static, state, logp = _prefill(dec, encoded, tokens, start)
    init = (start, tokens, jnp.zeros(batch, bool), jnp.zeros(batch, jnp.float32), state, logp)

    def cond(carry):
        pos, _, done, *_ = carry
        return (pos < length) & ~jnp.all(done)

    def body(carry):
        pos, tokens, done, scores, state, logp = carry  # logp: of the token at pos
        step = pos - prompt_len
        ok = _step_mask(allowed, step, logp.shape[-1])
        ok = ok & _order_mask(box_order, tokens, pos, step, logp.shape[-1])
        logp = jnp.where(ok, logp, NEG)
        best = _expected_bin(logp, jnp.argmax(logp, axis=-1).astype(jnp.int32), expected_loc)
        forced = pos < prompt_len
        new = jnp.where(forced, tokens[:, pos], jnp.where(done, pad_id, best))
        gain = jnp.take_along_axis(logp, best[:, None], axis=-1)[:, 0]
        scores = scores + jnp.where(forced | done, 0.0, gain)
        done = done | (~forced & (best == eos_id))
        logits, state = dec.step(static, state, new, pos)
        return pos + 1, tokens.at[:, pos].set(new), done, scores, state, _log_softmax(logits)

    _, tokens, _, scores, _, _ = jax.lax.while_loop(cond, body, init)
    return tokens, scores


def beam_search(decoder: DecodeFn | IncrementalDecoder, encoded: jax.Array, prompt: jax.Array,
                prompt_len: jax.Array, *, beam_size: int, eos_id: int, pad_id: int = 0,
                allowed: jax.Array | None = None, length_penalty: float = 0.0,
                box_order: tuple[int, int] | None = None):
    """Beam search; finished beams keep their slot (and score) and extend with pad.

    The best beam is chosen by score / num_generated_tokens ** length_penalty (0: raw log-prob).
    encoded float[B, N, D], prompt int32[B, L], prompt_len int32[B]
    -> (tokens int32[B, L], scores float32[B] raw log-prob of the chosen beam).
    beam_size 1 gives exactly greedy's result.
    """
    dec = _incremental(decoder)
    tokens, prompt_len, start = _prepare(prompt, prompt_len, pad_id)
    batch, length = tokens.shape
    k = beam_size
    # One prefill per example; the beams of an example share its static part (the encoder's
    # keys/values) and start from copies of its state, which follows its beam from then on.
    static, state, logp = jax.tree.map(lambda x: jnp.repeat(x, k, axis=0),
                                       _prefill(dec, encoded, tokens, start))  # B*K rows
    beams = jnp.repeat(tokens[:, None], k, axis=1)  # [B, K, L]
    # Only beam 0 is live at first, so the K identical copies don't fill the beam with duplicates.
    scores = jnp.tile(jnp.array([0.0] + [NEG] * (k - 1), jnp.float32)[None], (batch, 1))
    done = jnp.zeros((batch, k), bool)
    gen_len = jnp.zeros((batch, k), jnp.int32)
    flat_len = jnp.repeat(prompt_len, k)
    allowed_flat = None
    if allowed is not None:
        allowed_flat = jnp.asarray(allowed, bool)
        if allowed_flat.ndim == 3:
            allowed_flat = jnp.repeat(allowed_flat, k, axis=0)

    def cond(carry):
        pos, _, _, done, *_ = carry
        return (pos < length) & ~jnp.all(done)

    def body(carry):
        pos, beams, scores, done, gen_len, state, logp = carry  # logp [B*K, V]: token at pos
        vocab = logp.shape[-1]
        flat = beams.reshape(batch * k, length)
        ok = _step_mask(allowed_flat, pos - flat_len, vocab)
        ok = ok & _order_mask(box_order, flat, pos, pos - flat_len, vocab)
        logp = jnp.where(ok, logp, NEG)
        logp = logp.reshape(batch, k, vocab)
        forced = (pos < prompt_len)[:, None, None]  # [B, 1, 1]
        only = lambda tok: jnp.where(jnp.arange(vocab) == tok[..., None], 0.0, NEG)  # noqa: E731
        logp = jnp.where(forced, only(beams[:, :, pos]), logp)
        logp = jnp.where(done[..., None], only(jnp.full((batch, k), pad_id)), logp)
        cand = (scores[..., None] + logp).reshape(batch, k * vocab)
        scores, idx = jax.lax.top_k(cand, k)
        src, tok = idx // vocab, (idx % vocab).astype(jnp.int32)
        beams = jnp.take_along_axis(beams, src[..., None], axis=1).at[:, :, pos].set(tok)
        rows = (jnp.arange(batch)[:, None] * k + src).reshape(-1)
        state = jax.tree.map(lambda x: x[rows], state)
        was_done = jnp.take_along_axis(done, src, axis=1)
        generating = ~forced[..., 0] & ~was_done
        done = was_done | (generating & (tok == eos_id))
        gen_len = jnp.take_along_axis(gen_len, src, axis=1) + generating
        logits, state = dec.step(static, state, tok.reshape(-1), pos)
        return pos + 1, beams, scores, done, gen_len, state, _log_softmax(logits)

    carry = (start, beams, scores, done, gen_len, state, logp)
    _, beams, scores, _, gen_len, _, _ = jax.lax.while_loop(cond, body, carry)
    norm = scores / jnp.maximum(gen_len, 1).astype(jnp.float32) ** length_penalty
    best = jnp.argmax(norm, axis=1)
    tokens = jnp.take_along_axis(beams, best[:, None, None], axis=1)[:, 0]
    return tokens, jnp.take_along_axis(scores, best[:, None], axis=1)[:, 0]


def generated(tokens: np.ndarray, prompt_len: np.ndarray, eos_id: int) -> list[list[int]]:
    """Host helper: the generated ids of each row (after the prompt, before EOS)."""
    out = []
    for row, n in zip(np.asarray(tokens), np.asarray(prompt_len), strict=True):
        ids = row[int(n):].tolist()
        out.append(ids[: ids.index(eos_id)] if eos_id in ids else ids)
    return out
