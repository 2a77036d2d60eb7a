"""Orbax checkpoints of the whole training state: params, optimizer state + step + rng, data iterator.

Layout (fixed in helper interfaces; the evaluation stage reads `params/` only):
  WORKDIR/checkpoints/<step>/params/        model params (StandardSave)
  WORKDIR/checkpoints/<step>/train_state/   {"opt_state", "step", "rng"} (StandardSave)
  WORKDIR/checkpoints/<step>/data_iter/     Grain iterator state (grain.checkpoint.CheckpointSave)

Saves are async: Orbax writes `<step>.orbax-checkpoint-tmp` and renames it when complete, so a process
killed mid-save leaves only a tmp dir, which `latest_step` ignores and the next start cleans up.
"""

from __future__ import annotations

import json
import os
from typing import Any

import grain
import orbax.checkpoint as ocp
from etils import epath

ITEMS = ("params", "train_state", "data_iter")


class _IteratorSnapshot:
    """The iterator's state frozen at save time.

    Grain's checkpoint handler is synchronous, and with async checkpointing Orbax may run it after
    the training loop has already pulled more batches; saving a snapshot taken at the step boundary
    keeps params and data position consistent. Written as the JSON that Grain's own handler writes
    for a DatasetIterator, so `CheckpointRestore(iterator)` reads it back.
    """

    def __init__(self, state: Any):
        self._json = json.dumps(state, indent=4)

    def get_state(self) -> bytes:
        return self._json.encode()


def restore_params(path: str, sharding: Any = None) -> Any:
    """The params item of one checkpoint (`WORKDIR/checkpoints/<step>/params`), on any topology.

    Orbax refuses to restore arrays saved under another device topology (a pod's checkpoint on a
    CPU box) without a target, so one is built from the saved shapes with `sharding` (default:
    the first local device). A relative local path is taken from the working directory (Orbax
    itself accepts absolute paths only).
    """
    import jax

    path = path if "://" in str(path) else os.path.abspath(path)
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    ckptr = ocp.StandardCheckpointer()
    meta = ckptr.metadata(epath.Path(path))
    tree = getattr(meta, "item_metadata", meta)
    tree = getattr(tree, "tree", tree)
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
                          tree)
    return ckptr.restore(epath.Path(path), target)


class Checkpointer:
    """A CheckpointManager over WORKDIR/checkpoints with the three items above."""

    def __init__(self, directory: str, *, interval: int, keep: int, use_async: bool = True):
        self.directory = epath.Path(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            save_interval_steps=interval,
            enable_async_checkpointing=use_async,
            cleanup_tmp_directories=True,
            create=True,
        )
        self._mngr = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    def latest_step(self) -> int | None:
        return self._mngr.latest_step()

    def save(self, step: int, params: Any, train_state: Any, data_iter: Any,
             *, force: bool = False) -> bool:
        """Starts saving (async) when `step` is on the interval or `force`; True if it did."""
        if not force and not self._mngr.should_save(step):
            return False
        state = data_iter.get_state() if data_iter is not None else {}
        args = ocp.args.Composite(
            params=ocp.args.StandardSave(params),
            train_state=ocp.args.StandardSave(train_state),
            data_iter=grain.checkpoint.CheckpointSave(_IteratorSnapshot(state)),
        )
        return self._mngr.save(step, args=args, force=force)

    def restore(self, step: int, abstract_params: Any, abstract_train_state: Any,
                data_iter: Any) -> tuple[Any, Any]:
        """Restores (params, train_state) with the shardings carried by the abstract trees, and
        sets `data_iter`'s position in place."""
        items = dict(
            params=ocp.args.StandardRestore(abstract_params),
            train_state=ocp.args.StandardRestore(abstract_train_state),
        )
        if data_iter is not None:
            items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
        out = self._mngr.restore(step, args=ocp.args.Composite(**items))
        return out["params"], out["train_state"]

    def reached_preemption(self, step: int) -> bool:
        """True on every host once any host got a preemption notice (multi-host agreement)."""
        return self._mngr.reached_preemption(step)

    def wait(self) -> None:
        self._mngr.wait_until_finished()

    def close(self) -> None:
        self._mngr.wait_until_finished()
        self._mngr.close()
