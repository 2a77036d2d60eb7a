"""ArrayRecord shards on any Beam filesystem, written so retries and reruns leave no partial shards.

array_record's own Beam sink writes to local disk only. Here records are grouped by a deterministic
shard key (a hash of the record key, so a retried bundle sends every record to the same shard), each
shard is written to a local temp file with `group_size:1` (Grain's random access needs it), copied
through `apache_beam.io.filesystems.FileSystems` to `OUT/.tmp/`, and renamed to its final name only
when complete. A rename that happens twice writes the same shard twice: the result is the same.
`finalize_shards` then writes empty shards for indices that got no records (so every name in
`-of-N` exists), and deletes shards of an earlier run with a different N (a rerun never leaves a
mix of two shardings next to each other).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterable

from apache_beam.io.filesystems import FileSystems

TMP_DIR = ".tmp"
_COPY_CHUNK = 8 << 20


def shard_name(split: str, index: int, num_shards: int) -> str:
    return f"{split}-{index:05d}-of-{num_shards:05d}.array_record"


def shard_index(key: str, num_shards: int) -> int:
    """Deterministic across processes and runs (Python's hash() is salted per process)."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % num_shards


def _copy_to(local_path: str, dest: str) -> None:
    with open(local_path, "rb") as src, FileSystems.create(dest) as dst:
        while chunk := src.read(_COPY_CHUNK):
            dst.write(chunk)


def write_shard(output_dir: str, name: str, records: Iterable[bytes]) -> int:
    """Writes one complete shard at OUT/name atomically; returns its record count."""
    from array_record.python.array_record_module import ArrayRecordWriter

    local_dir = tempfile.mkdtemp(prefix="annotate-shard-")
    try:
        local = os.path.join(local_dir, name)
        writer = ArrayRecordWriter(local, "group_size:1")
        if not writer.ok():
            raise OSError(f"cannot open a local ArrayRecord writer at {local}")
        count = 0
        for record in records:
            writer.write(record)
            count += 1
        writer.close()
        tmp = FileSystems.join(output_dir, TMP_DIR, f"{name}.{uuid.uuid4().hex}")
        final = FileSystems.join(output_dir, name)
        _copy_to(local, tmp)
        if FileSystems.exists(final):
            FileSystems.delete([final])  # A retry or rerun replaces it with identical content.
        FileSystems.rename([tmp], [final])
        return count
    finally:
        shutil.rmtree(local_dir, ignore_errors=True)


def finalize_shards(output_dir: str, split: str, num_shards: int,
                    written: dict[int, int]) -> list[dict]:
    """Fills in empty shards, removes stale ones and the temp dir; returns the shard list."""
    shards = []
    for i in range(num_shards):
        name = shard_name(split, i, num_shards)
        if i not in written:
            write_shard(output_dir, name, [])
        shards.append({"name": name, "records": int(written.get(i, 0))})
    keep = {s["name"] for s in shards}
    pattern = re.compile(rf"^{re.escape(split)}-\d{{5}}-of-\d{{5}}\.array_record$")
    stale = [
        m.path for m in FileSystems.match([FileSystems.join(output_dir, f"{split}-*")])[0].metadata_list
        if pattern.match(m.path.rstrip("/").rsplit("/", 1)[-1])
        and m.path.rstrip("/").rsplit("/", 1)[-1] not in keep
    ]
    if stale:
        FileSystems.delete(stale)
    tmp = FileSystems.join(output_dir, TMP_DIR)
    if FileSystems.exists(tmp):
        leftovers = FileSystems.match([FileSystems.join(tmp, "*")])[0].metadata_list
        if leftovers:
            FileSystems.delete([m.path for m in leftovers])
        try:
            FileSystems.delete([tmp])
        except Exception:  # Object stores have no directories to delete; nothing is left there.
            pass
    return shards
