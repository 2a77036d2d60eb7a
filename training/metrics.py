"""Training metrics: JSONL + TensorBoard writers, FLOP counting and MFU.

FLOPs per step come from XLA's own count for the compiled train step (`compiled.cost_analysis()`,
forward + backward + optimizer, as the compiler sees it); when a backend does not report it we fall
back to the analytic 6 * params * tokens estimate (`analytic_step_flops`). MFU divides achieved
FLOP/s by the device peak: `config.peak_flops_per_device` when set, else a matmul rate measured here.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from pipelines import files


class MetricsWriter:
    """Appends one JSON line per logging step to WORKDIR/metrics.jsonl and scalars to TensorBoard.

    Only the primary process writes; others are no-ops so a pod does not write N copies.
    """

    def __init__(self, workdir: str, *, enabled: bool = True, start_step: int | None = None):
        """start_step: the step training (re)starts from. Rows of later steps, written by a run
        that was killed after its last checkpoint, are dropped: the resumed run logs those steps
        again, and the file keeps one row per step."""
        self.enabled = enabled
        self._tb = None
        self._jsonl = None
        if not enabled:
            return
        workdir = epath.Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / "metrics.jsonl"
        # Object stores (gs://) have no append and show an object only once it is closed: there
        # the rows are kept and the whole object is rewritten at each write (one small upload).
        self._cloud_path = path if "://" in str(path) else None
        lines = path.read_text().splitlines() if path.exists() else []
        if start_step is not None and path.exists():
            kept = [x for x in lines if x.strip() and json.loads(x).get("step", 0) <= start_step]
            if len(kept) < len(lines) and self._cloud_path is None:
                files.write_atomic(path, "".join(x + "\n" for x in kept))
            lines = kept
        self._rows = [x + "\n" for x in lines if x.strip()]
        if self._cloud_path is None:
            self._jsonl = path.open("a")
        try:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(workdir / "tensorboard"))
        except ImportError:  # TensorBoard is a nicety; JSONL is the record.
            self._tb = None

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), "time": time.time()}
        row.update({k: float(v) for k, v in metrics.items()})
        if self._cloud_path is not None:
            self._rows.append(json.dumps(row) + "\n")
            self._cloud_path.write_text("".join(self._rows))
        else:
            self._jsonl.write(json.dumps(row) + "\n")
            self._jsonl.flush()
        if self._tb is not None:
            for k, v in metrics.items():
                self._tb.add_scalar(k, float(v), int(step))
            self._tb.flush()

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


def progress_bar(total: int, initial: int, *, enabled: bool):
    """A tqdm bar on a terminal, None otherwise (logs and CI get metrics.jsonl instead)."""
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)


def compiled_flops(compiled: Any) -> float | None:
    """FLOPs of one call of a compiled executable, per device (XLA's count), or None."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - some backends raise instead of returning nothing
        return None
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    flops = float(cost["flops"])
    return flops if flops > 0 else None


def analytic_step_flops(n_img_params: int, n_txt_params: int, batch: int, n_patches: int,
                        n_text_tokens: int) -> float:
    """6 * params * tokens for the encoder (over patches) and decoder (over all task tokens).

    Ignores attention score FLOPs (small at these sequence lengths) and the embedding gather.
    """
    return 6.0 * batch * (n_img_params * n_patches + n_txt_params * n_text_tokens)


def measure_peak_flops(dtype: Any = jnp.float32, n: int = 2048, repeats: int = 5) -> float:
    """Best observed matmul FLOP/s of one device (a practical peak for MFU on CPUs)."""
    device = jax.devices()[0]
    a = jax.device_put(jnp.ones((n, n), dtype), device)
    b = jax.device_put(jnp.ones((n, n), dtype), device)
    f = jax.jit(lambda x, y: x @ y)
    f(a, b).block_until_ready()
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        f(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2.0 * n**3 / best


class Throughput:
    """Examples/s and tokens/s between logging steps (wall clock, includes input pipeline)."""

    def __init__(self):
        self._t = time.perf_counter()
        self._steps = 0

    def tick(self) -> None:
        self._steps += 1

    def rates(self) -> tuple[float, int]:
        """(seconds per step since last call, steps counted); resets the window."""
        now = time.perf_counter()
        steps, dt = self._steps, now - self._t
        self._t, self._steps = now, 0
        return (dt / steps if steps else float("nan")), steps
