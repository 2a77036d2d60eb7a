"""WORKDIR/eval/: results.jsonl (one line per metric), claims, TensorBoard scalars.

Exactly-once across restarts and concurrent copies: before evaluating (step, evaluator) a job takes
a claim, a file created with O_CREAT|O_EXCL under an flock on eval/.lock. Work is done when
results.jsonl has a line for the pair; each pair's lines are appended in one write() under the lock,
so a reader never sees half of a pair. A claim whose owner died (same host, pid gone) or that is
older than `stale_after_s` is broken, so a crashed job's work is redone by the next one.

Needs a POSIX filesystem for eval/ (local disk, NFS/Filestore, or a FUSE-mounted bucket with
locking support); checkpoints themselves may live anywhere Orbax reads.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterable, Iterator
from pathlib import Path


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
        self.dir = Path(eval_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "claims").mkdir(exist_ok=True)
        self.results_path = self.dir / "results.jsonl"
        self.stale_after_s = stale_after_s
        self._tb = None
        self._use_tb = tensorboard

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.dir / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def read(self) -> list[dict]:
        """All result lines; a torn last line (a writer killed mid-write) is ignored."""
        if not self.results_path.exists():
            return []
        rows = []
        for line in self.results_path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return rows

    def done(self) -> set[tuple[int, str]]:
        return {(int(r["step"]), str(r["evaluator"])) for r in self.read()}

    def _claim_path(self, step: int, evaluator: str) -> Path:
        return self.dir / "claims" / f"{step:012d}-{evaluator}.claim"

    def _is_stale(self, path: Path) -> bool:
        try:
            info = json.loads(path.read_text() or "{}")
            age = time.time() - path.stat().st_mtime
        except (OSError, json.JSONDecodeError):
            return True
        if info.get("host") == socket.gethostname() and not _pid_alive(int(info.get("pid", -1))):
            return True
        return age > self.stale_after_s

    def try_claim(self, step: int, evaluator: str) -> bool:
        """True if this process now owns (step, evaluator): not done and not claimed by a live job."""
        with self._locked():
            if (step, evaluator) in self.done():
                return False
            path = self._claim_path(step, evaluator)
            if path.exists() and self._is_stale(path):
                path.unlink(missing_ok=True)
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as f:
                json.dump({"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}, f)
            return True

    def release(self, step: int, evaluator: str) -> None:
        self._claim_path(step, evaluator).unlink(missing_ok=True)

    def write(self, step: int, evaluator: str, metrics: Iterable[tuple[str, float]]) -> list[dict]:
        """Appends one line per metric for (step, evaluator) and releases the claim."""
        now = time.time()
        rows = []
        for name, value in metrics:
            split, metric = split_name(name)
            rows.append(
                {"step": int(step), "evaluator": evaluator, "split": split, "metric": metric,
                 "value": float(value), "time": now}
            )
        payload = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode()
        with self._locked():
            fd = os.open(self.results_path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o644)
            try:
                os.write(fd, payload)
                os.fsync(fd)
            finally:
                os.close(fd)
            self.release(step, evaluator)
        self._write_tensorboard(rows)
        return rows

    def _write_tensorboard(self, rows: list[dict]) -> None:
        if not self._use_tb:
            return
        try:
            from tensorboardX import SummaryWriter
        except ImportError:  # TensorBoard is a convenience; results.jsonl is the record.
            return
        if self._tb is None:
            self._tb = SummaryWriter(str(self.dir / "tensorboard"))
        for r in rows:
            # TensorBoard tags allow [A-Za-z0-9_./-] only ("acc@0.5" -> "acc_0.5").
            tag = f"{r['evaluator']}/{r['split']}/{r['metric']}".replace("@", "_")
            self._tb.add_scalar(tag, r["value"], r["step"], walltime=r["time"])
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
