"""Device mesh, parameter sharding rules and batch placement.

The mesh has two axes: "data" (pure data parallelism) and "fsdp" (data parallel too, and parameters
plus optimizer state are split over it, ZeRO-3 style). The batch is split over both axes.

Sharding rules (config.sharding.rules) are ((regex, spec), ...); the first regex that matches a
leaf's "/"-joined path (params and optimizer state alike, so "img/.*kernel" also catches the Adam
moments of those kernels) decides its spec:
  "fsdp"       split the largest dimension divisible by the fsdp axis size over "fsdp"
  "replicate"  keep a full copy on every device
  (None, "fsdp", ...)  an explicit PartitionSpec; falls back to "replicate" when the rank differs
Leaves smaller than `min_shard_size` elements are replicated: splitting biases costs more
communication than it saves memory.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from training.optim import path_str

DATA_AXES = ("data", "fsdp")


def make_mesh(mesh_cfg: Any, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ("data", "fsdp") mesh; a -1 size takes all remaining devices.

    mesh_cfg.num_devices > 0 uses only the first that many devices (tests compare 1 vs 8).
    """
    devices = list(devices if devices is not None else jax.devices())
    if int(mesh_cfg.get("num_devices", 0)) > 0:
        devices = devices[: int(mesh_cfg.num_devices)]
    n = len(devices)
    data, fsdp = int(mesh_cfg.get("data", -1)), int(mesh_cfg.get("fsdp", 1))
    if data == -1 and fsdp == -1:
        raise ValueError("mesh: at most one of data/fsdp may be -1")
    if data == -1:
        data = n // max(fsdp, 1)
    if fsdp == -1:
        fsdp = n // max(data, 1)
    if data * fsdp != n:
        raise SystemExit(
            f"mesh data={data} x fsdp={fsdp} needs {data * fsdp} devices but {n} are visible; "
            "set --config.mesh.data/--config.mesh.fsdp so their product is the device count"
        )
    grid = np.asarray(devices).reshape(data, fsdp)
    return Mesh(grid, DATA_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 2)


def _spec(name: str, shape: tuple[int, ...], rules, mesh: Mesh, min_size: int) -> PartitionSpec:
    rule = "replicate"
    for pattern, spec in rules:
        if re.search(pattern, name):
            rule = spec
            break
    fsdp = mesh.shape["fsdp"]
    if int(np.prod(shape, dtype=np.int64)) < min_size or rule == "replicate":
        return PartitionSpec()
    if rule == "fsdp":
        if fsdp == 1:
            return PartitionSpec()
        order = sorted(range(len(shape)), key=lambda i: -shape[i])
        for i in order:
            if shape[i] % fsdp == 0:
                return PartitionSpec(*[("fsdp" if j == i else None) for j in range(len(shape))])
        return PartitionSpec()
    spec = tuple(rule)
    if len(spec) != len(shape):
        return PartitionSpec()
    for dim, axis in zip(shape, spec, strict=True):
        if axis is not None and dim % mesh.shape[axis] != 0:
            return PartitionSpec()
    return PartitionSpec(*spec)


def tree_shardings(tree: Any, mesh: Mesh, sharding_cfg: Any) -> Any:
    """NamedSharding for every leaf of `tree` (arrays or ShapeDtypeStructs) by the config rules."""
    rules = tuple(tuple(r) for r in sharding_cfg.get("rules", ((".*", "fsdp"),)))
    min_size = int(sharding_cfg.get("min_shard_size", 1024))
    return jax.tree_util.tree_map_with_path(
        lambda p, x: NamedSharding(mesh, _spec(path_str(p), tuple(np.shape(x)), rules, mesh,
                                               min_size)),
        tree,
    )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over every device."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def put_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Global arrays from this process's slice of the batch (multi-host safe)."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in batch.items()}
