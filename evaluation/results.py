"""WORKDIR/eval/: one write-once result object per (step, evaluator), claims, results.jsonl.

Exactly-once without POSIX locks, on a local disk or on gs:// alike (evaluation/write_once.py):
- The record of (step, evaluator) is `results/<step>-<evaluator>.json`, created only if absent
  (gs://: `if_generation_match=0`; locally: link of a complete temp file). Whoever creates it
  first scored the pair; a second job that computed it too (after breaking a claim it judged
  stale) finds the object there and discards its own rows. So each pair is scored exactly once,
  and a job killed at any point leaves either the whole object or none.
- A claim (`claims/<step>-<evaluator>.claim`, also create-if-absent) only saves duplicate work.
  One whose owner died (same host, pid gone) or older than `stale_after_s` is removed with a
  precondition on the version that was read, so two jobs breaking it do not remove a fresh one.
- `results.jsonl` (one line per metric) is a view rebuilt from the result objects after each
  write, for people and plots; readers of record use `read()`.

Checkpoints themselves may live anywhere Orbax reads. TensorBoard scalars are written for a local
eval dir only.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterable

from evaluation import write_once


def split_name(name: str) -> tuple[str, str]:
    """'val/acc@0.5' -> ('val', 'acc@0.5'); a name without a split gets split 'all'."""
    split, _, metric = name.rpartition("/")
    return (split or "all", metric)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ResultsStore:
    def __init__(self, eval_dir: str | os.PathLike, stale_after_s: float = 6 * 3600,
                 tensorboard: bool = True):
        self.dir = str(eval_dir)
        write_once._check(self.dir)
        self.local = not write_once.is_gcs(self.dir)
        self.results_path = write_once.join(self.dir, "results.jsonl")
        self.stale_after_s = stale_after_s
        self._tb = None
        self._use_tb = tensorboard and self.local
        self._adopt_legacy_jsonl()

    def _adopt_legacy_jsonl(self) -> None:
        """A results.jsonl written before result objects existed: its pairs become objects, so
        the rebuilt view keeps them (create-if-absent: running this twice changes nothing)."""
        if write_once.list_names(write_once.join(self.dir, "results"), ".json"):
            return
        got = write_once.read(self.results_path)
        if got is None:
            return
        pairs: dict[tuple[int, str], list[dict]] = {}
        for line in got[0].decode().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a torn last line of an old writer
                continue
            pairs.setdefault((int(row["step"]), str(row["evaluator"])), []).append(row)
        for (step, evaluator), rows in pairs.items():
            write_once.create(self._path("results", step, evaluator),
                              json.dumps(rows, sort_keys=True).encode())

    def _path(self, kind: str, step: int, evaluator: str) -> str:
        suffix = ".json" if kind == "results" else ".claim"
        return write_once.join(self.dir, kind, f"{step:012d}-{evaluator}{suffix}")

    def read(self) -> list[dict]:
        """All result rows, from the result objects (one per scored (step, evaluator))."""
        rows = []
        for name in write_once.list_names(write_once.join(self.dir, "results"), ".json"):
            got = write_once.read(write_once.join(self.dir, "results", name))
            if got is not None:
                rows.extend(json.loads(got[0]))
        return sorted(rows, key=lambda r: (r["step"], r["evaluator"], r["split"], r["metric"]))

    def done(self) -> set[tuple[int, str]]:
        out = set()
        for name in write_once.list_names(write_once.join(self.dir, "results"), ".json"):
            step, _, evaluator = name.removesuffix(".json").partition("-")
            out.add((int(step), evaluator))
        return out

    def _is_stale(self, info: dict) -> bool:
        if info.get("host") == socket.gethostname() and not _pid_alive(int(info.get("pid", -1))):
            return True
        return time.time() - float(info.get("time", 0)) > self.stale_after_s

    def try_claim(self, step: int, evaluator: str) -> bool:
        """True if this process now owns (step, evaluator): not done and not claimed by a live job."""
        if (step, evaluator) in self.done():
            return False
        path = self._path("claims", step, evaluator)
        mine = json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                           "time": time.time()}).encode()
        for _ in range(2):  # the second try follows breaking a stale claim
            if write_once.create(path, mine):
                if (step, evaluator) in self.done():  # scored while we were claiming
                    write_once.delete(path)
                    return False
                return True
            got = write_once.read(path)
            if got is None:
                continue  # released in between
            try:
                info = json.loads(got[0] or b"{}")
            except json.JSONDecodeError:
                info = {}
            if not self._is_stale(info) or not write_once.delete_if_unchanged(path, got[1]):
                return False
        return False

    def release(self, step: int, evaluator: str) -> None:
        write_once.delete(self._path("claims", step, evaluator))

    def write(self, step: int, evaluator: str, metrics: Iterable[tuple[str, float]]) -> list[dict]:
        """Records (step, evaluator) once and releases the claim; returns the rows recorded by this
        call ([] when another job had already recorded the pair: its rows stand)."""
        now = time.time()
        rows = []
        for name, value in metrics:
            split, metric = split_name(name)
            rows.append(
                {"step": int(step), "evaluator": evaluator, "split": split, "metric": metric,
                 "value": float(value), "time": now}
            )
        payload = json.dumps(rows, sort_keys=True).encode()
        created = write_once.create(self._path("results", step, evaluator), payload)
        self.release(step, evaluator)
        self.export_jsonl()
        if not created:
            return []
        self._write_tensorboard(rows)
        return rows

    def export_jsonl(self) -> None:
        """Rewrites results.jsonl from the result objects (every writer converges on the same)."""
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.read())
        write_once.overwrite(self.results_path, text.encode())

    def save_curves(self) -> None:
        """curves.png from every recorded row (plotted locally, then copied for gs://)."""
        import tempfile

        from evaluation import plots

        if self.local:
            plots.plot_curves(self.read(), os.path.join(self.dir, "curves.png"))
            return
        with tempfile.TemporaryDirectory() as tmp:
            png = plots.plot_curves(self.read(), os.path.join(tmp, "curves.png"))
            if png is not None:
                write_once.overwrite(write_once.join(self.dir, "curves.png"), png.read_bytes())

    def _write_tensorboard(self, rows: list[dict]) -> None:
        if not self._use_tb:
            return
        try:
            from tensorboardX import SummaryWriter
        except ImportError:  # TensorBoard is a convenience; results.jsonl is the record.
            return
        if self._tb is None:
            self._tb = SummaryWriter(os.path.join(self.dir, "tensorboard"))
        for r in rows:
            # TensorBoard tags allow [A-Za-z0-9_./-] only ("acc@0.5" -> "acc_0.5").
            tag = f"{r['evaluator']}/{r['split']}/{r['metric']}".replace("@", "_")
            self._tb.add_scalar(tag, r["value"], r["step"], walltime=r["time"])
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
