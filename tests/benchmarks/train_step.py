"""Train-step time and MFU of LocCa configs, against a matmul peak measured in the same run.

    .venv/bin/python tests/benchmarks/train_step.py                       # CPU: tiny + S16
    .venv/bin/python tests/benchmarks/train_step.py --configs S16 --batches 4,8,16
    python tests/benchmarks/train_step.py --configs B16 --batches 64,128 --dtype bfloat16   # GPU

The step is the trainer's own jitted train_step (loss over all three tasks, AdamW update) on a
random batch (no input pipeline), over all local devices. FLOPs per step are XLA's count for the
compiled step (cost_analysis); the peak is the best rate of an n x n matmul in the same dtype, so
"MFU" here means "fraction of what this device's matmul unit delivers in this process".
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from model.locca import LocCa, init_params  # noqa: E402
from model.tasks import TASKS  # noqa: E402
from training import metrics, sharding  # noqa: E402
from training import train_state as ts  # noqa: E402
from training.configs.locca import get_config  # noqa: E402
from training.optim import make_optimizer  # noqa: E402


def random_batch(b: int, size: int, length: int, vocab: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {"image": rng.uniform(-1, 1, (b, size, size, 3)).astype(np.float32)}
    for t in TASKS:
        out[f"{t}/inputs"] = rng.integers(5, vocab, (b, length)).astype(np.int32)
        out[f"{t}/targets"] = rng.integers(5, vocab, (b, length)).astype(np.int32)
        out[f"{t}/loss_mask"] = np.ones((b, length), np.float32)
    return out


def bench(variant: str, batch: int, steps: int, dtype: str, vocab: int) -> dict[str, float]:
    c = get_config(variant)
    c.model.dtype = dtype
    c.model.vocab_size = vocab
    c.batch_size = batch
    c.mesh.data, c.mesh.fsdp = -1, 1
    model = LocCa(c.model)
    mesh = sharding.make_mesh(c.mesh)
    params = jax.eval_shape(lambda r: init_params(model, r), jax.random.PRNGKey(0))
    tx, lr_fn = make_optimizer(c.optim, c.total_steps, params)
    _, shard = ts.state_shardings(model, tx, mesh, c.sharding)
    state = ts.init_state(model, tx, shard, 0, c.init)
    step = ts.jit_train_step(ts.make_train_step(model, tx, lr_fn, c, 4, params), shard, mesh)
    data = sharding.put_batch(random_batch(batch, c.model.image_size, c.model.max_len, vocab),
                              mesh)
    t = time.perf_counter()
    compiled = step.lower(state, data).compile()
    compile_s = time.perf_counter() - t
    flops = (metrics.compiled_flops(compiled) or 0.0) * mesh.devices.size
    state, m = compiled(state, data)  # warm-up
    jax.block_until_ready(m)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        state, m = compiled(state, data)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t)
    return {"step_s": float(np.median(times)), "flops": flops, "compile_s": compile_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="tiny,S16")
    ap.add_argument("--batches", default="", help="comma list; default per config")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--dtype", default="", help="float32 | bfloat16 (default: bf16 on GPU/TPU)")
    ap.add_argument("--vocab", type=int, default=0,
                    help="vocabulary size; default 1800 (the demo tokenizer) for tiny, else 32000")
    args = ap.parse_args()
    platform = jax.devices()[0].platform
    dtype = args.dtype or ("float32" if platform == "cpu" else "bfloat16")
    peak = metrics.measure_peak_flops(jnp.bfloat16 if dtype == "bfloat16" else jnp.float32,
                                      n=2048 if platform == "cpu" else 8192)
    # One process drives all local devices; on a CPU the "devices" share the host's cores.
    peak_total = peak * (1 if platform == "cpu" else jax.local_device_count())
    print(f"device: {jax.devices()[0].device_kind} x{jax.local_device_count()} ({platform}); "
          f"measured {dtype} matmul peak {peak / 1e9:.1f} GFLOP/s per device")
    defaults = {"tiny": "8,16,32", "micro": "8,16", "S16": "4,8,16", "B16": "64,128",
                "L14": "16,32"}
    print("| config | batch | step s | examples/s | GFLOP/step (XLA) | MFU | compile s |")
    print("|---|---|---|---|---|---|---|")
    for variant in args.configs.split(","):
        batches = args.batches or defaults.get(variant, "8")
        for b in map(int, batches.split(",")):
            vocab = args.vocab or (1800 if variant in ("tiny", "micro") else 32_000)
            r = bench(variant, b, args.steps, dtype, vocab)
            mfu = r["flops"] / r["step_s"] / peak_total
            print(f"| {variant} | {b} | {r['step_s']:.3f} | {b / r['step_s']:.1f} | "
                  f"{r['flops'] / 1e9:.1f} | {mfu:.1%} | {r['compile_s']:.0f} |", flush=True)
    print(f"reproduce: python {' '.join(sys.argv)}")


if __name__ == "__main__":
    main()
