"""A fresh decoder trained on frozen encoder features (the LocCa paper's REC transfer protocol).

The encoder never runs here: its features float[I, N, D] are computed once per image, and each
training step gathers the batch's rows, so a small decoder trains in seconds to minutes on a CPU.
Loss: token cross-entropy on the `aref` targets weighted by tasks' loss mask.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from model import generate, tasks
from model.decoder import Decoder, make_incremental


@dataclasses.dataclass(frozen=True)
class DecoderSpec:
    width: int = 128
    depth: int = 2  # the paper uses 6; small for the CPU demo
    num_heads: int = 4
    mlp_dim: int = 512
    max_len: int = 0  # 0: fit the data (fit_max_len); > 0: fixed, longer expressions are cut
    steps: int = 300
    batch_size: int = 64
    learning_rate: float = 1e-3
    warmup: int = 30
    seed: int = 0


MAX_FIT_LEN = 128  # fit_max_len's ceiling: a stray essay-length expression is cut, not paid for


def fit_max_len(tokenizer, sentences: Sequence[str], cap: int = MAX_FIT_LEN) -> int:
    """The decoder length that holds every `aref` row of these expressions whole (prompt + 4
    box tokens; EOS is the last target), rounded up to a multiple of 8, at most `cap`.

    The decoder's cost grows with its length, so a fixed 32 for expressions of ~12 tokens spent a
    third of the transfer's training on padding, and a fixed length cut long ones (RefCOCOg).
    """
    longest = max((len(tasks.make_prompt("aref", tokenizer, phrase=s)) + 4 for s in sentences),
                  default=8)
    return min(cap, -(-longest // 8) * 8)


def make_decoder(spec: DecoderSpec, vocab_size: int, pad_id: int) -> Decoder:
    return Decoder(vocab_size=vocab_size, width=spec.width, depth=spec.depth,
                   num_heads=spec.num_heads, mlp_dim=spec.mlp_dim, max_len=spec.max_len,
                   pad_id=pad_id)


def format_aref(tokenizer, sentences: Sequence[str], boxes: Sequence[Sequence[float]],
                max_len: int) -> dict[str, np.ndarray]:
    """int32[M, L] inputs/targets and float32[M, L] loss_mask for (expression, box) pairs."""
    rows = [tasks.format_task("aref", tokenizer, max_len=max_len, phrase=s, box=b)
            for s, b in zip(sentences, boxes, strict=True)]
    return {"inputs": np.stack([r.inputs for r in rows]),
            "targets": np.stack([r.targets for r in rows]),
            "loss_mask": np.stack([r.loss_mask for r in rows])}


def init(decoder: Decoder, feature_shape: tuple[int, ...], seed: int):
    enc = jnp.zeros((1, *feature_shape), jnp.float32)
    return decoder.init(jax.random.key(seed), enc, jnp.zeros((1, decoder.max_len), jnp.int32))[
        "params"]


def train(decoder: Decoder, spec: DecoderSpec, feats: np.ndarray, image_index: np.ndarray,
          data: dict[str, np.ndarray]) -> tuple[dict, list[float]]:
    """Trains a fresh decoder. feats float[I, N, D]; image_index int[M] row of feats for example m;
    data from format_aref (M examples). Returns (params, per-step losses)."""
    params = init(decoder, feats.shape[1:], spec.seed)
    schedule = optax.warmup_cosine_decay_schedule(0.0, spec.learning_rate, spec.warmup,
                                                  max(spec.steps, spec.warmup + 1))
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=1e-4))
    opt_state = opt.init(params)
    feats_j = jnp.asarray(feats)

    def loss_fn(p, idx, inputs, targets, mask):
        logits = decoder.apply({"params": p}, feats_j[idx], inputs)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
        return jnp.sum(ce * mask) / jnp.maximum(jnp.sum(mask), 1.0)

    @jax.jit
    def step(p, s, idx, inputs, targets, mask):
        loss, grads = jax.value_and_grad(loss_fn)(p, idx, inputs, targets, mask)
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    rng = np.random.default_rng(spec.seed)
    m = len(image_index)
    losses = []
    for _ in range(spec.steps):
        b = rng.integers(0, m, size=spec.batch_size)  # with replacement: fixed shapes, any M
        params, opt_state, loss = step(params, opt_state, jnp.asarray(image_index[b]),
                                       *(jnp.asarray(data[k][b]) for k in
                                         ("inputs", "targets", "loss_mask")))
        losses.append(float(loss))
    return params, losses


def make_generate(decoder: Decoder, tokenizer, batch_size: int):
    """(params, encoded float[B, N, D], prompts) -> generated ids per row, four location tokens
    forced (the same constraint as the pretrained-decoder REC evaluator)."""
    from evaluation.predict import box_constraint, pad_batch, prompts_array

    allowed = jnp.asarray(box_constraint(tokenizer))

    @jax.jit
    def run(params, enc, prompt, prompt_len):
        fn = make_incremental(lambda e, x, **kw: decoder.apply({"params": params}, e, x, **kw))
        return generate.greedy(fn, enc, prompt, prompt_len, eos_id=tokenizer.eos_id,
                               pad_id=tokenizer.pad_id, allowed=allowed,
                               box_order=(tokenizer.loc_start, tokenizer.num_loc))[0]

    def gen(params, encoded: np.ndarray, prompts) -> list[list[int]]:
        buf, lens = prompts_array(prompts, decoder.max_len, tokenizer.pad_id)
        out = []
        for i in range(0, len(buf), batch_size):
            n = len(buf[i : i + batch_size])
            args = [pad_batch(a[i : i + batch_size], batch_size) for a in (encoded, buf, lens)]
            tokens = np.asarray(run(params, *map(jnp.asarray, args)))[:n]
            out += generate.generated(tokens, lens[i : i + n], tokenizer.eos_id)
        return out

    return gen
