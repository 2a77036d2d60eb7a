"""Shared fixtures. Real data lives in ../shared/data next to the repository (never copied into it)."""

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def coco_mini() -> Path:
    """../shared/data/coco-mini: 80 COCO photos with captions and boxes; skips when absent."""
    path = SHARED_DATA / "coco-mini"
    if not (path / "annotations" / "instances_train2017.json").exists():
        pytest.skip(f"real test data not found at {path} (a fresh clone has no ../shared; CI does)")
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A workdir of the `tiny` config trained here for 2 steps (batch 4) on synthetic records:
    a real trainer checkpoint (step 2) + encoder.npz, shared by the predict and export tests."""
    import train_fixtures

    from training import trainer
    from training.configs.locca import get_config

    root = tmp_path_factory.mktemp("tiny_run")
    train_fixtures.write_shards(str(root / "data"), num_records=16)
    train_fixtures.write_tokenizer(str(root / "data" / "tok.model"))
    c = get_config("tiny")
    c.data.train_glob = str(root / "data" / "train-*.array_record")
    c.tokenizer = str(root / "data" / "tok.model")
    c.total_steps, c.batch_size, c.log_every = 2, 4, 1
    c.checkpoint.interval = 2
    c.optim.schedule.warmup_steps = 1
    c.progress_bar = False
    c.peak_flops_per_device = 1e12  # skip measuring the matmul peak (MFU is not checked here)
    assert trainer.train(c, str(root / "run")) == "done"
    return root / "run"


def _gcs_fixture(kind: str, request, monkeypatch, tmp_path_factory):
    """A fresh bucket on a session-wide server of `kind`; clients in and out of process reach it."""
    import itertools

    from gcs_server import GcsServer, client_env, reset_client_caches

    cache = request.config._gcs_servers = getattr(request.config, "_gcs_servers", {})
    if kind not in cache:
        cache[kind] = GcsServer.start(kind)
        request.config.add_cleanup(cache[kind].stop)
    server = cache[kind]
    counter = request.config._gcs_buckets = getattr(request.config, "_gcs_buckets",
                                                    itertools.count())
    bucket = server.create_bucket(f"locca-{kind}-{next(counter)}")
    for key, value in client_env(server.url).items():
        monkeypatch.setenv(key, value)
    reset_client_caches()
    yield server, bucket
    reset_client_caches()


@pytest.fixture
def gcs(request, monkeypatch, tmp_path_factory):
    """(server, bucket) on gcp-storage-emulator: serves everything Beam, gcsfs and Orbax use."""
    yield from _gcs_fixture("emulator", request, monkeypatch, tmp_path_factory)


@pytest.fixture
def gcs_strict(request, monkeypatch, tmp_path_factory):
    """(server, bucket) on fake-gcs-server: enforces generation preconditions."""
    yield from _gcs_fixture("strict", request, monkeypatch, tmp_path_factory)
