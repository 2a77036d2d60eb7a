"""Create-if-absent objects on a local disk or on gs://, without locks or renames.

Object stores have no flock and no atomic rename; what they do have is a conditional create. One
call, `create(path, data)`, is the portable "write this whole object unless it exists":
- gs://: an upload with `if_generation_match=0` (google-cloud-storage). GCS makes the object
  visible only when the upload completes, and refuses it when any generation exists.
- local: the data goes to a private temp file, then `os.link` gives it the final name; link fails
  if the name exists, so readers see a whole file or none, and only one writer wins.

`delete_if_unchanged(path, token)` removes an object only if it is still the one read (the
generation on gs://, inode + mtime locally), so two jobs breaking the same stale claim do not
remove a fresh one. Other stores (s3://, ...) are refused with one line naming the supported ones.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def is_gcs(path: str) -> bool:
    return str(path).startswith("gs://")


def join(root: str, *parts: str) -> str:
    return "/".join([str(root).rstrip("/"), *parts]) if is_gcs(root) else str(
        Path(root).joinpath(*parts))


def _check(path: str) -> None:
    if "://" in str(path) and not is_gcs(path):
        raise ValueError(f"{path}: evaluation results need a local path or gs:// (got another "
                         "object store); point --workdir at one of those")


_CLIENTS: dict = {}


def _client():
    """One client per endpoint (STORAGE_EMULATOR_HOST points tests at a local server)."""
    from google.cloud import storage

    endpoint = os.environ.get("STORAGE_EMULATOR_HOST", "")
    if endpoint not in _CLIENTS:
        if endpoint:  # an emulator takes no credentials
            from google.auth.credentials import AnonymousCredentials

            _CLIENTS[endpoint] = storage.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT",
                                                                       "local"),
                                                credentials=AnonymousCredentials())
        else:
            _CLIENTS[endpoint] = storage.Client()
    return _CLIENTS[endpoint]


def _blob(path: str):
    bucket, _, name = str(path).removeprefix("gs://").partition("/")
    return _client().bucket(bucket).blob(name)


def create(path: str, data: bytes) -> bool:
    """Writes `data` at `path` if nothing is there; True if this call created it."""
    _check(path)
    if is_gcs(path):
        from google.api_core import exceptions

        try:
            _blob(path).upload_from_string(data, if_generation_match=0)
        except exceptions.PreconditionFailed:
            return False
        return True
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    return True


def read(path: str) -> tuple[bytes, str] | None:
    """(content, change token) of the object, or None if absent."""
    _check(path)
    if is_gcs(path):
        from google.api_core import exceptions

        blob = _blob(path)
        try:
            data = blob.download_as_bytes()
        except exceptions.NotFound:
            return None
        return data, str(blob.generation)
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            return f.read(), f"{st.st_ino}:{st.st_mtime_ns}"
    except FileNotFoundError:
        return None


def delete_if_unchanged(path: str, token: str) -> bool:
    """Removes the object if it is still the version `read` returned with `token`."""
    _check(path)
    if is_gcs(path):
        from google.api_core import exceptions

        try:
            _blob(path).delete(if_generation_match=int(token))
        except (exceptions.PreconditionFailed, exceptions.NotFound):
            return False
        return True
    # Locally: move it aside first (atomic), then check it was the version we judged stale.
    aside = f"{path}.{uuid.uuid4().hex}.breaking"
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    st = os.stat(aside)
    if f"{st.st_ino}:{st.st_mtime_ns}" != token:
        try:  # someone else's fresh claim: put it back unless yet another one took the name
            os.link(aside, path)
        except FileExistsError:
            pass
        os.unlink(aside)
        return False
    os.unlink(aside)
    return True


def delete(path: str) -> None:
    _check(path)
    if is_gcs(path):
        from google.api_core import exceptions

        try:
            _blob(path).delete()
        except exceptions.NotFound:
            pass
        return
    Path(path).unlink(missing_ok=True)


def list_names(directory: str, suffix: str = "") -> list[str]:
    """Names (not paths) of the objects directly under `directory` ending with `suffix`."""
    _check(directory)
    if is_gcs(directory):
        bucket, _, prefix = str(directory).removeprefix("gs://").partition("/")
        prefix = prefix.rstrip("/") + "/"
        names = (b.name[len(prefix):] for b in _client().list_blobs(bucket, prefix=prefix))
        return sorted(n for n in names if "/" not in n and n.endswith(suffix))
    d = Path(directory)
    if not d.is_dir():
        return []
    return sorted(p.name for p in d.iterdir() if p.name.endswith(suffix)
                  and not p.name.startswith("."))


def overwrite(path: str, data: bytes) -> None:
    """Replaces the whole object (a derived view, rewritten by whoever has newer content)."""
    _check(path)
    if is_gcs(path):
        _blob(path).upload_from_string(data)
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, path)
