"""Cloud shards (gs://...) are copied to a local cache before Grain reads them.

Why not read them in place: array_record's own gs:// reading depends on the release (upstream
google/array_record#120) and goes around the GCS settings every other client honours (it hangs
against a local GCS server here), and the loader's global shuffle reads single records at random
(`group_size:1`), which over object storage is one ranged GET per record. A host's local disk
serves those reads; each shard is downloaded once, whole, with etils.epath (gcsfs).

The cache is keyed by the shard's URL and size, written under a temp name and renamed, so a killed
copy is redone and a restarted run (same host) reuses complete files. The local paths keep the
shards' sorted order, so record indices, and with them the batches, are the same as a run on local
shards. Corpora larger than a host's disk: mount the bucket (gcsfuse, GKE's Cloud Storage FUSE CSI
driver) and give the mount's local path as data.train_glob (or a data.mixture part's glob)
instead; nothing is copied then.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import uuid
from collections.abc import Sequence

_CHUNK = 16 << 20


def default_cache_dir() -> str:
    return os.path.join(tempfile.gettempdir(), "locca-shard-cache")


def is_cloud(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def local_copy(url: str, cache_dir: str) -> str:
    """The local path of `url`'s whole content, downloaded once per (url, size)."""
    from etils import epath

    src = epath.Path(url)
    size = src.stat().length
    digest = hashlib.blake2b(f"{url}\0{size}".encode(), digest_size=8).hexdigest()
    dest = os.path.join(cache_dir, f"{digest}-{os.path.basename(url)}")
    if os.path.exists(dest) and os.path.getsize(dest) == size:
        return dest
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{dest}.{uuid.uuid4().hex}.part"
    try:
        with src.open("rb") as fin, open(tmp, "wb") as fout:
            while chunk := fin.read(_CHUNK):
                fout.write(chunk)
        if os.path.getsize(tmp) != size:
            raise OSError(f"{url}: copied {os.path.getsize(tmp)} of {size} bytes")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def stage(paths: Sequence[str], cache_dir: str = "") -> list[str]:
    """Local paths for `paths`, in the same order: cloud URLs copied, local paths unchanged."""
    cache_dir = cache_dir or default_cache_dir()
    return [local_copy(p, cache_dir) if is_cloud(p) else p for p in paths]
