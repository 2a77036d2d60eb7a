"""Whole-file writes that a reader never sees half done, on local disk or an object store.

Shared by the trainer and the evaluator (like pipelines/shards.py: etils only, no Beam or JAX);
the annotate pipeline's own writes go through Beam's FileSystems (manifest.write_atomic).
"""

from __future__ import annotations

import os
import uuid

from etils import epath


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """Writes `data` at `path`, replacing any earlier file. Locally through a temp name and a
    rename (atomic on POSIX); on an object store (gs://) directly, since an object appears whole
    only when its upload ends and stores have no rename."""
    path = epath.Path(path)
    write = path.write_bytes if isinstance(data, bytes) else path.write_text
    if "://" in str(path):
        write(data)
        return
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    (tmp.write_bytes if isinstance(data, bytes) else tmp.write_text)(data)
    tmp.replace(path)
