"""WORKDIR/eval/curves.png: every metric over training steps (matplotlib, Agg backend)."""

from __future__ import annotations

import collections
import io
import math
import os
from pathlib import Path

from pipelines import files


def plot_curves(rows: list[dict], path: str | os.PathLike) -> Path | None:
    """One panel per (evaluator, metric), one line per split. Returns the path, or None if no rows."""
    import matplotlib

    matplotlib.use("Agg")  # headless: the job runs in a container without a display
    import matplotlib.pyplot as plt

    series: dict[tuple[str, str], dict[str, list[tuple[int, float]]]] = collections.defaultdict(
        lambda: collections.defaultdict(list)
    )
    for r in rows:
        if r["metric"] == "eval_seconds":
            continue
        series[(r["evaluator"], r["metric"])][r["split"]].append((r["step"], r["value"]))
    if not series:
        return None
    n = len(series)
    cols = min(3, n)
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 3.5 * nrows), squeeze=False)
    for ax, ((evaluator, metric), splits) in zip(axes.flat, sorted(series.items()), strict=False):
        for split, points in sorted(splits.items()):
            points.sort()
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=split)
        ax.set_title(f"{evaluator}: {metric}", fontsize=9)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=80)
    plt.close(fig)
    files.write_atomic(path, png.getvalue())  # readers never see a half-written image
    return path
