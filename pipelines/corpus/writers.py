"""Byte-deterministic output: tar shards and JSON files.

Tar headers carry mtime, uid/gid, user names and (in PAX) extended records that differ between
runs and machines; here they are fixed, and members are written in the caller's order. Files are
written to a temporary name and renamed, so a killed run never leaves a half shard that looks whole.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

from pipelines import files


def dumps(obj: Any) -> str:
    """Canonical JSON: sorted keys, fixed separators, UTF-8 text kept readable."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def write_json(path: Path, obj: Any) -> None:
    _atomic_write(path, (dumps(obj) + "\n").encode("utf-8"))


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    files.write_atomic(path, data)


def write_bytes(path: Path, data: bytes) -> None:
    _atomic_write(path, data)


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    """A USTAR archive of (name, data) members in the given order, with fixed metadata."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.type = tarfile.REGTYPE
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    _atomic_write(path, tar_bytes(members))
