"""Batched, jitted encode + prompted generation on a LocCa model, shared by the evaluators.

Batches are padded to a fixed size so each (batch, length) shape compiles once per job, not once per
ragged last batch; padded rows are dropped from the outputs.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from model import generate, locca


def pad_batch(x: np.ndarray, size: int) -> np.ndarray:
    """Pads axis 0 to `size` by repeating the last row (valid inputs, results discarded)."""
    if len(x) == size:
        return x
    return np.concatenate([x, np.repeat(x[-1:], size - len(x), axis=0)])


def prompts_array(prompts: Sequence[Sequence[int]], length: int, pad_id: int):
    """Ragged prompts -> (int32[B, L] buffer, int32[B] lengths); a prompt that fills the whole
    buffer leaves no room to generate, so it is cut to L - 1 (counted by the caller as malformed)."""
    buf = np.full((len(prompts), length), pad_id, np.int32)
    lens = np.zeros(len(prompts), np.int32)
    for i, p in enumerate(prompts):
        p = list(p)[: length - 1]
        buf[i, : len(p)] = p
        lens[i] = len(p)
    return buf, lens


class Predictor:
    """encode(images) and generate(encoded, prompts) for one model; params are call arguments so
    one compiled function serves every checkpoint."""

    def __init__(self, model: Any, *, batch_size: int = 32, eos_id: int, pad_id: int = 0):
        self.model = model
        self.batch_size = batch_size
        self.eos_id = eos_id
        self.pad_id = pad_id
        self.max_len = int(model.config.max_len)
        self._encode = jax.jit(lambda p, x: model.apply({"params": p}, x, method="encode"))

        def _gen(params, encoded, prompt, prompt_len, allowed, beam_size, box_order,
                 expected_loc):
            decoder = locca.make_incremental_decoder(model, params)  # KV-cached
            kw = dict(eos_id=eos_id, pad_id=pad_id, allowed=allowed, box_order=box_order)
            if beam_size == 1:
                return generate.greedy(decoder, encoded, prompt, prompt_len,
                                       expected_loc=expected_loc, **kw)
            if expected_loc is not None:
                raise ValueError("expected-bin location decoding is greedy only (beam_size 1)")
            return generate.beam_search(decoder, encoded, prompt, prompt_len,
                                        beam_size=beam_size, **kw)

        self._generate = jax.jit(_gen, static_argnames=("beam_size", "box_order",
                                                        "expected_loc"))

        def _nll(params, encoded, inputs, targets):
            logits = model.apply({"params": params}, encoded, inputs, method="decode")
            logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
            return -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]

        self._nll = jax.jit(_nll)

        def _loc(params, encoded, inputs, min_bin, loc_start, num_loc):
            logits = model.apply({"params": params}, encoded, inputs, method="decode")
            loc = logits[..., loc_start : loc_start + num_loc].astype(jnp.float32)
            bins = jnp.arange(num_loc)
            out = {}
            for name, x in (("", loc), ("_min", jnp.where(bins >= min_bin[..., None], loc,
                                                          -jnp.inf))):
                out["expected" + name] = jax.nn.softmax(x, axis=-1) @ bins.astype(jnp.float32)
                out["argmax" + name] = jnp.argmax(x, axis=-1).astype(jnp.int32)
            return out

        self._loc = jax.jit(_loc, static_argnames=("loc_start", "num_loc"))

    def _in_batches(self, fn, *arrays: np.ndarray):
        """fn over fixed-size chunks of the arrays' rows (the last chunk padded: one compile per
        shape) -> fn's outputs (a pytree of [B, ...] arrays), padded rows dropped, concatenated
        on the host; None when there are no rows."""
        parts = []
        for i in range(0, len(arrays[0]), self.batch_size):
            n = len(arrays[0][i : i + self.batch_size])
            out = fn(*(jnp.asarray(pad_batch(a[i : i + self.batch_size], self.batch_size))
                       for a in arrays))
            parts.append(jax.tree.map(lambda x, n=n: np.asarray(x)[:n], out))
        return jax.tree.map(lambda *xs: np.concatenate(xs), *parts) if parts else None

    def encode(self, params: Any, images: np.ndarray) -> np.ndarray:
        """float32[B, H, W, 3] -> float32[B, N, D] (host numpy), in fixed-size batches."""
        out = self._in_batches(lambda x: self._encode(params, x), images)
        return out if out is not None else np.zeros((0,), np.float32)

    def generate(self, params: Any, encoded: np.ndarray, prompts: Sequence[Sequence[int]], *,
                 allowed: np.ndarray | None = None, beam_size: int = 1,
                 box_order: tuple[int, int] | None = None,
                 expected_loc: tuple[int, int] | None = None) -> list[list[int]]:
        """encoded float[B, N, D] with one prompt per row -> the generated ids per row (after the
        prompt, up to but excluding EOS). box_order, expected_loc: see model/generate.py."""
        return [ids for ids, _ in self.generate_scored(
            params, encoded, prompts, allowed=allowed, beam_size=beam_size, box_order=box_order,
            expected_loc=expected_loc)]

    def generate_scored(self, params: Any, encoded: np.ndarray,
                        prompts: Sequence[Sequence[int]], *, allowed: np.ndarray | None = None,
                        beam_size: int = 1, box_order: tuple[int, int] | None = None,
                        expected_loc: tuple[int, int] | None = None
                        ) -> list[tuple[list[int], float]]:
        """As generate, with each row's score: the sum of its generated tokens' log-probs (EOS
        included) under the model's full softmax, as model/generate.py reports it."""
        buf, lens = prompts_array(prompts, self.max_len, self.pad_id)
        allowed_j = None if allowed is None else jnp.asarray(allowed)
        out: list[tuple[list[int], float]] = []
        for i in range(0, len(buf), self.batch_size):
            n = len(buf[i : i + self.batch_size])
            args = [pad_batch(a[i : i + self.batch_size], self.batch_size)
                    for a in (encoded, buf, lens)]
            tokens, scores = self._generate(params, *map(jnp.asarray, args), allowed_j,
                                            beam_size=beam_size, box_order=box_order,
                                            expected_loc=expected_loc)
            ids = generate.generated(np.asarray(tokens)[:n], lens[i : i + n], self.eos_id)
            out += zip(ids, np.asarray(scores)[:n].tolist(), strict=True)
        return out

    def token_nll(self, params: Any, encoded: np.ndarray, inputs: np.ndarray,
                  targets: np.ndarray) -> np.ndarray:
        """Teacher-forced NLL of every target token: encoded float[B, N, D], inputs/targets
        int[B, L] -> float32[B, L] (nats; the caller applies its loss mask)."""
        out = self._in_batches(lambda *a: self._nll(params, *a), encoded, inputs, targets)
        return out if out is not None else np.zeros((0, inputs.shape[1]), np.float32)

    def loc_readout(self, params: Any, encoded: np.ndarray, inputs: np.ndarray, *,
                    loc_start: int, num_loc: int,
                    min_bin: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Teacher-forced location readout at every position: encoded float[B, N, D], inputs
        int[B, L] -> {"expected": float32[B, L], "argmax": int32[B, L]}: the expected and the
        most likely bin of the softmax over the `num_loc` location logits alone (ids
        loc_start..loc_start + num_loc - 1); "expected_min", "argmax_min": the same over the bins
        >= min_bin int[B, L] only (default 0; each < num_loc), as constrained decoding keeps
        y2 >= y1 and x2 >= x1."""
        if min_bin is None:
            min_bin = np.zeros(inputs.shape, np.int32)
        out = self._in_batches(
            lambda *a: self._loc(params, *a, loc_start=loc_start, num_loc=num_loc),
            encoded, inputs, np.asarray(min_bin, np.int32))
        if out is not None:
            return out
        keys = ("expected", "argmax", "expected_min", "argmax_min")
        return {k: np.zeros((0, inputs.shape[1]), np.int32 if "argmax" in k else np.float32)
                for k in keys}


@functools.lru_cache(maxsize=8)
def box_constraint(tok) -> np.ndarray:
    """bool[5, V]: four of the tokenizer's `tok.num_loc` location tokens then EOS (a well-formed
    box answer)."""
    return generate.loc_constraint(tok.vocab_size, tok.loc_start, num_loc=tok.num_loc,
                                   eos_id=tok.eos_id)
