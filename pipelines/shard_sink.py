"""ArrayRecord shards on any Beam filesystem, written so retries and reruns leave no partial shards.

array_record's own Beam sink writes to local disk only. Here records are grouped by a deterministic
shard key (a hash of the record key, so a retried bundle sends every record to the same shard), each
shard is written to a local temp file with `group_size:1` (Grain's random access needs it), copied
through `apache_beam.io.filesystems.FileSystems` to `OUT/.tmp/`, and renamed to its final name only
when complete. On an object store (gs://) the copy goes straight to the final name: an object
appears only whole, when its upload ends, and a rename there is a copy plus a delete
(`writes_in_place`). A shard written twice is the same shard: the result is the same.
`finalize_shards` then writes empty shards for indices that got no records (so every name in
`-of-N` exists), and deletes shards of an earlier run with a different N (a rerun never leaves a
mix of two shardings next to each other).

Records arrive at a shard in whatever order the runner's shuffle delivers them (it differs between
runs, workers and runners), so a shard is written in record-key order: the same input gives
byte-identical shards on every run, and the trainer's shuffle (by record index) then replays the
same example order. The records are first spilled to a local file in arrival order and read back
sorted, so only the keys are held in memory, never a whole shard.
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


def writes_in_place(path: str) -> bool:
    """Whether files under `path` are written at their final name (object stores: an object is
    visible only once complete, and rename is copy + delete) rather than temp name + rename."""
    return FileSystems.get_scheme(path) not in (None, "file")


def _copy_to(local_path: str, dest: str) -> None:
    with open(local_path, "rb") as src, FileSystems.create(dest) as dst:
        while chunk := src.read(_COPY_CHUNK):
            dst.write(chunk)


def _writer(path: str):
    from array_record.python.array_record_module import ArrayRecordWriter

    writer = ArrayRecordWriter(path, "group_size:1")
    if not writer.ok():
        raise OSError(f"cannot open a local ArrayRecord writer at {path}")
    return writer


def write_shard(output_dir: str, name: str, keyed: Iterable[tuple[str, bytes]]) -> int:
    """Writes one complete shard at OUT/name atomically, in key order; returns its record count.

    keyed: (record key, serialized record) pairs in any order. They are spilled to a local file in
    arrival order, then written sorted by key; ties (the same key twice, e.g. a duplicated input
    row) by a digest of the record bytes, so the order is total and the output is the same for
    any arrival order (see the module docstring).
    """
    from array_record.python.array_record_module import ArrayRecordReader

    local_dir = tempfile.mkdtemp(prefix="annotate-shard-")
    try:
        local = os.path.join(local_dir, name)
        spill_path = local + ".arrival"
        spill = _writer(spill_path)
        order = []
        for pos, (key, record) in enumerate(keyed):
            spill.write(record)
            order.append((key, hashlib.blake2b(record, digest_size=8).digest(), pos))
        spill.close()
        order.sort()
        reader = ArrayRecordReader(spill_path, "readahead_buffer_size:0")
        writer = _writer(local)
        try:
            for start in range(0, len(order), 256):  # at most 256 records in memory at a time
                for record in reader.read([pos for _, _, pos in order[start : start + 256]]):
                    writer.write(record)
        finally:
            reader.close()
            writer.close()
        count = len(order)
        final = FileSystems.join(output_dir, name)
        if writes_in_place(output_dir):
            _copy_to(local, final)
            return count
        tmp = FileSystems.join(output_dir, TMP_DIR, f"{name}.{uuid.uuid4().hex}")
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
    # Leftover temp files of failed or retried writes. Listed by pattern, not behind an exists()
    # check of the directory: on an object store (gs://) "OUT/.tmp" is never an object itself,
    # so exists() is False there even when temp files are left under it.
    tmp = FileSystems.join(output_dir, TMP_DIR)
    try:
        leftovers = FileSystems.match([FileSystems.join(tmp, "*")])[0].metadata_list
    except Exception:  # A local .tmp directory that was never created: nothing to remove.
        leftovers = []
    if leftovers:
        FileSystems.delete([m.path for m in leftovers])
    if FileSystems.exists(tmp):
        try:
            FileSystems.delete([tmp])
        except Exception:  # Object stores have no directories to delete; nothing is left there.
            pass
    return shards
