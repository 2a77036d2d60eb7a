"""Finding the trainer's checkpoints without touching its CheckpointManager.

Discovery is read-only on WORKDIR/checkpoints: Orbax's step name format lists only finalized steps
(a `<step>.orbax-checkpoint-tmp` dir left by a killed save is not a step). The newest step is
evaluated from a private copy of its `params` item, so the trainer's keep-N cleanup cannot delete
it mid-evaluation. Only the params are copied (Orbax's `checkpoints_iterator` snapshot copies the
whole step: optimizer state and data iterator too, ~3x the params with Adam), into a local dir,
one per job: WORKDIR/eval/snapshots/<host>-<pid> for a local WORKDIR, the temp dir for a cloud
one. A copy left by a killed job on this host is removed by the next job.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from etils import epath


def checkpoint_dir(workdir: str) -> epath.Path:
    return epath.Path(workdir) / "checkpoints"


def finalized_steps(workdir: str) -> list[int]:
    """Sorted steps whose checkpoint is complete (tmp dirs of interrupted saves are ignored)."""
    import orbax.checkpoint as ocp

    ckpt = checkpoint_dir(workdir)
    _forget_listings(str(ckpt))
    if not ckpt.exists():
        return []
    fmt = ocp.path.step.standard_name_format()
    return sorted(m.step for m in fmt.find_all(ckpt))


def resolve_step(workdir: str, step: int | None = None) -> int:
    """`step` when its checkpoint is complete, else (None) the latest complete one; ValueError
    naming the steps there are."""
    steps = finalized_steps(workdir)
    if not steps or (step is not None and step not in steps):
        want = "complete checkpoint" + ("" if step is None else f" {step}")
        raise ValueError(f"{checkpoint_dir(workdir)} has no {want} (complete: {steps}): train "
                         "first or pick one of those with --step")
    return steps[-1] if step is None else step


def _forget_listings(path: str) -> None:
    """gcsfs (epath's gs:// backend without TensorFlow) caches directory listings for the life of
    the process: a watcher would never see a new checkpoint. Drop them before each look."""
    if "://" not in path:
        return
    try:
        from etils.epath import backend

        backend.fsspec_backend.fs(path).invalidate_cache()
    except Exception:  # noqa: BLE001 - another backend (TensorFlow's gfile) caches nothing
        pass


def step_path(workdir: str, step: int) -> epath.Path:
    return checkpoint_dir(workdir) / str(step)


def final_step(workdir: str) -> int | None:
    """The step number in WORKDIR/DONE (the trainer's last step), or None while training runs."""
    done = epath.Path(workdir) / "DONE"
    _forget_listings(str(done))
    if not done.exists():
        return None
    text = done.read_text().strip()
    try:
        return int(text.split()[0]) if text else -1
    except ValueError:
        return -1  # DONE without a step number still means training ended


def _clean_dead_snapshots(root: Path) -> None:
    """Removes snapshot dirs of jobs on this host that are gone (a killed job leaves its copy)."""
    if not root.exists():
        return
    host = socket.gethostname()
    for d in root.iterdir():
        name_host, _, pid = d.name.rpartition("-")
        if name_host != host or not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except PermissionError:
            pass


def snapshot_root(workdir: str) -> Path:
    """Local dir that holds every job's snapshot dir (see the module docstring)."""
    if "://" in str(workdir):
        return Path(tempfile.gettempdir()) / "locca-eval-snapshots"
    return Path(workdir) / "eval" / "snapshots"


def snapshot_params(step_dir: epath.Path, dest: Path) -> Path | None:
    """Copies step_dir/params to dest/params (atomically: a tmp dir, then a rename). Returns dest,
    or None when the step vanished meanwhile (the trainer's keep-N got there first)."""
    src = epath.Path(step_dir) / "params"
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if "://" in str(src):
            for f in src.rglob("*"):
                if f.is_file():
                    out = tmp / "params" / f.relative_to(src)
                    out.parent.mkdir(parents=True, exist_ok=True)
                    f.copy(epath.Path(out), overwrite=True)
        else:
            shutil.copytree(src, tmp / "params")
    except FileNotFoundError:
        shutil.rmtree(tmp, ignore_errors=True)
        return None
    tmp.rename(dest)
    return dest


def watch(
    workdir: str,
    sweep: Callable[[dict[int, epath.Path]], bool],
    *,
    poll_s: int = 5,
    idle_timeout_s: float | None = None,
    log: Callable[[str], None] = print,
) -> None:
    """Calls `sweep({step: path})` with every finalized step whenever a new checkpoint appears and
    whenever a poll finds none (so work abandoned by a dead job is picked up). `sweep` returns True
    when every step it was given is fully evaluated. Stops once WORKDIR/DONE exists and the last
    sweep covered everything, or when no new checkpoint came for `idle_timeout_s`.
    """
    snap_root = snapshot_root(workdir)
    _clean_dead_snapshots(snap_root)
    snap_dir = snap_root / f"{socket.gethostname()}-{os.getpid()}"
    snap_dir.mkdir(parents=True, exist_ok=True)
    last_progress = time.time()

    def paths(latest: int | None, snap: Path | None) -> dict[int, epath.Path]:
        out = {s: step_path(workdir, s) for s in finalized_steps(workdir)}
        if latest is not None and snap is not None:
            out[latest] = epath.Path(snap)  # the private copy, safe from keep-N deletion
        return out

    latest = None
    try:
        while True:
            steps = finalized_steps(workdir)
            if steps and steps[-1] != latest:
                latest = steps[-1]
                last_progress = time.time()
                log(f"new checkpoint: step {latest}")
                for old in snap_dir.iterdir():  # only the newest step is kept
                    shutil.rmtree(old, ignore_errors=True)
                snap = snapshot_params(step_path(workdir, latest), snap_dir / str(latest))
                sweep(paths(latest, snap))
                continue
            complete = sweep(paths(None, None))
            if final_step(workdir) is not None and complete:
                log("training finished (DONE) and every checkpoint is evaluated: stopping")
                return
            if idle_timeout_s is not None and time.time() - last_progress > idle_timeout_s:
                log(f"no new checkpoint for {idle_timeout_s:.0f}s: stopping (--timeout)")
                return
            time.sleep(poll_s)
    finally:
        shutil.rmtree(snap_dir, ignore_errors=True)


def wait_forever_message(workdir: str) -> str:
    return f"waiting for checkpoints in {checkpoint_dir(workdir)} (Ctrl-C to stop)"


def iter_once(workdir: str, step: int | None) -> Iterator[tuple[int, epath.Path]]:
    """The one checkpoint a non-watch run evaluates: `step`, or the latest complete one."""
    steps = finalized_steps(workdir)
    if not steps:
        raise SystemExit(
            f"no complete checkpoint in {checkpoint_dir(workdir)}: train first, check --workdir, "
            "or pass --watch to wait for one"
        )
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise SystemExit(f"step {step} has no complete checkpoint; available steps: {steps}")
    yield step, step_path(workdir, step)
