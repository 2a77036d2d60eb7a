"""Generation speed: the KV-cached decoder against re-running the whole decoder every step.

    .venv/bin/python tests/benchmarks/generation.py                     # CPU: tiny + S16
    .venv/bin/python tests/benchmarks/generation.py --configs B16 --batch 64 --beam 1,4   # GPU

Both sides run model/generate.py's own loop (greedy, or beam search with --beam K > 1) on the
same random-weight model, encoder tokens and prompt ([BOS] + the `cap` prefix), jitted, with EOS
masked out so every row generates to the end of the buffer (the worst case, and the same number
of steps on both sides). Rounds alternate the two sides; the ratio is rerun time / cached time per
round (median and best over rounds), so machine load shifts both. The tokens are checked equal.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from model import generate  # noqa: E402
from model.configs import get_config  # noqa: E402
from model.locca import LocCa, make_decode_fn, make_incremental_decoder, param_shapes  # noqa: E402

EOS, BOS = 1, 2


def _time(fn, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        out.append(time.perf_counter() - t0)
    return out


def bench(variant: str, batch: int, beam: int, rounds: int, vocab: int) -> dict[str, float]:
    cfg = get_config(variant, vocab_size=vocab)
    model = LocCa(cfg)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape) * 0.02, jnp.float32),
                          param_shapes(model))
    tokens = (cfg.image_size // cfg.patch_size) ** 2
    encoded = jnp.asarray(rng.normal(size=(batch, tokens, cfg.width)), jnp.float32)
    prompt = np.zeros((batch, cfg.max_len), np.int32)
    prompt[:, :2] = [BOS, 3]
    prompt_len = np.full(batch, 2, np.int32)
    allowed = np.ones((cfg.max_len, vocab), bool)
    allowed[:, EOS] = False  # generate to the end of the buffer
    kw = dict(eos_id=EOS, allowed=jnp.asarray(allowed))
    run = (functools.partial(generate.greedy, **kw) if beam == 1 else
           functools.partial(generate.beam_search, beam_size=beam, **kw))
    sides = {}
    for name, make in (("cached", make_incremental_decoder), ("rerun", make_decode_fn)):
        fn = jax.jit(lambda p, e, x, n, make=make: run(make(model, p), e, x, n))
        sides[name] = functools.partial(fn, params, encoded, prompt, prompt_len)
        jax.block_until_ready(sides[name]())  # compile
    np.testing.assert_array_equal(sides["cached"]()[0], sides["rerun"]()[0])
    times = {"cached": [], "rerun": []}
    for _ in range(rounds):
        for name in ("rerun", "cached"):
            times[name] += _time(sides[name], 1)
    ratios = [r / c for r, c in zip(times["rerun"], times["cached"], strict=True)]
    generated = cfg.max_len - 2
    return dict(
        cached_ms=1e3 * min(times["cached"]), rerun_ms=1e3 * min(times["rerun"]),
        tokens_per_s=batch * generated / min(times["cached"]),
        ratio_median=statistics.median(ratios), ratio_best=max(ratios), length=cfg.max_len)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="tiny,S/16", help="model/configs.py variants")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--beam", default="1,4", help="beam sizes; 1 = greedy")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--vocab", type=int, default=2048)
    args = ap.parse_args()
    print(f"devices: {jax.devices()}")
    print("| model | L | beam | cached ms/batch | rerun ms/batch | speed-up median (best) | "
          "cached tokens/s |")
    print("|---|---|---|---|---|---|---|")
    for variant in args.configs.split(","):
        for beam in map(int, args.beam.split(",")):
            r = bench(variant, args.batch, beam, args.rounds, args.vocab)
            print(f"| {variant} | {r['length']} | {beam} | {r['cached_ms']:.1f} | "
                  f"{r['rerun_ms']:.1f} | {r['ratio_median']:.2f}x ({r['ratio_best']:.2f}x) | "
                  f"{r['tokens_per_s']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
