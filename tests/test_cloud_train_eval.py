"""The whole chain on gs:// against local GCS servers (tests/gcs_server.py), and the same chain on
local paths: annotate reads tars from gs:// and writes shards and manifest there; the tokenizer
trains from those shards; the trainer reads them and the tokenizer from gs://, writes Orbax
checkpoints, metrics, encoder.npz and DONE there, is SIGKILLed and resumes from its gs://
checkpoint; evaluation/run.py scores the gs:// workdir. Same records (every field but `source`),
manifest counts and tokenizer as the local chain, the same metrics at every step and the same final
parameters.

Two servers, because neither serves the whole chain (checked by hand against the versions the test
extra pins; see WORKSPACE.md): annotate and the tokenizer run against gcp-storage-emulator, then the
shards and tokenizer are copied as they are to fake-gcs-server, where training and evaluation run.
- fake-gcs-server answers a JSON-API batch request only for parts that carry a `Content-ID`
  header; google-cloud-storage's batches (what Beam's gcsio uses for every FileSystems.delete and
  rename, e.g. annotate's write probe) have none, so it answers an empty multipart and the client
  stops with "ValueError: Bad response: not multi-part".
- gcp-storage-emulator sends no `x-goog-generation` header with an object's media, so tensorstore
  reads existing objects with an unknown generation; Orbax's OCDBT store then cannot make the
  conditional write of an existing manifest ("Error writing .../manifest.ocdbt: Malformed
  StorageGeneration"), i.e. a second checkpoint or a resume fails there.
"""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import annotate_fixtures as af
import numpy as np
import pytest
from eval_fixtures import run_eval
from gcs_server import client_env, download_tree, reset_client_caches, upload_tree

ROOT = Path(__file__).resolve().parents[1]
N, TOTAL = 2, 5


def _command(workdir: str, shards: str, tok: str, cache: Path) -> list[str]:
    return [sys.executable, "training/run.py", "--config=training/configs/locca.py:micro",
            f"--workdir={workdir}", f"--config.data.train_glob={shards}/train-*.array_record",
            f"--config.tokenizer={tok}", f"--config.total_steps={TOTAL}",
            "--config.checkpoint.interval=1", "--config.checkpoint.keep=100",
            "--config.log_every=1", f"--config.compilation_cache_dir={cache}",
            "--config.progress_bar=False"]


def _metrics(text: str) -> dict[int, dict]:
    rows = [json.loads(x) for x in text.splitlines() if x.strip()]
    return {r["step"]: {k: v for k, v in r.items() if "loss" in k} for r in rows}


def _leaves(tree, prefix=""):
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _leaves(sub, f"{prefix}/{key}").items()}
    return {prefix: np.asarray(tree)}


def _use(server, monkeypatch) -> None:
    """Points this process's GCS clients at `server`."""
    for key, value in client_env(server.url).items():
        monkeypatch.setenv(key, value)
    reset_client_caches()


def _records_without_source(out_dir: Path) -> list:
    return [dataclasses.replace(r, source="") for r in af.load_shards(out_dir)]


def _annotate_and_tokenize(emulator, ebucket: str, tmp_path: Path) -> None:
    """annotate + tokenizer on local paths (tmp_path/local-*) and on gs:// (the emulator), the
    gs:// outputs copied back to tmp_path/corpus as they are; both chains checked equal."""
    from etils import epath

    from pipelines import annotate, train_tokenizer

    inp = tmp_path / "web"
    af.write_tar(inp / "a.tar", af.clean_samples(0, 12))
    af.write_tar(inp / "b.tar", af.clean_samples(12, 12) + [("broken", {"jpg": b"not a jpeg",
                                                                        "txt": b"a red square"})])
    upload_tree(emulator, inp, f"gs://{ebucket}/web")
    flags = ["--runner=FnApiRunner", "--max_pixels=100000", "--progress=false", "--num_shards=2"]
    local = annotate.run([f"--input={inp}/*.tar", f"--output={tmp_path}/local-shards", *flags])
    cloud = annotate.run([f"--input=gs://{ebucket}/web/*.tar", f"--output=gs://{ebucket}/shards",
                          *flags])
    corpus = tmp_path / "corpus"
    download_tree(emulator, f"gs://{ebucket}/shards", corpus)
    assert cloud["counts"] == local["counts"] and local["counts"]["written"] == 24
    assert json.loads((corpus / "manifest.json").read_text())["counts"] == local["counts"]
    assert _records_without_source(corpus) == _records_without_source(tmp_path / "local-shards")

    common = ["--vocab_size=1320", "--model_type=bpe"]
    train_tokenizer.main([f"--input={tmp_path}/local-shards/train-*.array_record",
                          f"--output={tmp_path}/local-tok.model", *common])
    train_tokenizer.main([f"--input=gs://{ebucket}/shards/train-*.array_record",
                          f"--output=gs://{ebucket}/tok/tok.model", *common])
    for name in ("tok.model", "tok.model.json"):
        data = epath.Path(f"gs://{ebucket}/tok/{name}").read_bytes()
        assert data == (tmp_path / f"local-{name}").read_bytes(), name
        (corpus / name).write_bytes(data)


@pytest.mark.slow
def test_whole_chain_on_gcs_equals_local(gcs, gcs_strict, tmp_path, monkeypatch):
    from etils import epath

    from evaluation.watch import finalized_steps
    from training.train_checkpoints import restore_params

    emulator, ebucket = gcs
    server, bucket = gcs_strict
    _use(emulator, monkeypatch)
    _annotate_and_tokenize(emulator, ebucket, tmp_path)
    corpus = tmp_path / "corpus"
    _use(server, monkeypatch)
    upload_tree(server, corpus, f"gs://{bucket}/corpus")
    cache = tmp_path / "xla"
    env = {**os.environ, **client_env(server.url), "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT),
           "TMPDIR": str(tmp_path)}  # the shard cache goes under the test's temp dir

    local = tmp_path / "local"
    r = subprocess.run(_command(str(local), str(tmp_path / "local-shards"),
                                str(tmp_path / "local-tok.model"), cache),
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]

    work = f"gs://{bucket}/runs/micro"
    cmd = _command(work, f"gs://{bucket}/corpus", f"gs://{bucket}/corpus/tok.model", cache)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 900
    while not [s for s in finalized_steps(work) if s >= N]:
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() < deadline, "no checkpoint appeared on gs://"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not epath.Path(f"{work}/DONE").exists(), "finished before the kill"
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]

    reset_client_caches()  # this process listed the bucket before the trainer wrote to it
    assert epath.Path(f"{work}/DONE").read_text().strip() == str(TOTAL)
    assert epath.Path(f"{work}/encoder.npz").stat().length > 0
    assert json.loads(epath.Path(f"{work}/config.json").read_text())["total_steps"] == TOTAL
    got = _metrics(epath.Path(f"{work}/metrics.jsonl").read_text())
    want = _metrics((local / "metrics.jsonl").read_text())
    assert sorted(got) == sorted(want) == list(range(1, TOTAL + 1))  # one row per step
    for step in want:
        for key, value in want[step].items():
            assert got[step][key] == pytest.approx(value, rel=1e-5, abs=1e-6), (step, key)
    a = _leaves(restore_params(f"{work}/checkpoints/{TOTAL}/params"))
    b = _leaves(restore_params(str(local / "checkpoints" / str(TOTAL) / "params")))
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-6, atol=1e-7, err_msg=key)

    # The evaluator on the gs:// workdir: every step scored once, results written there.
    ev = run_eval(work, tmp_path, variant="stats", timeout=600)
    assert ev.returncode == 0, ev.stdout[-2000:] + ev.stderr[-2000:]
    from evaluation.results import ResultsStore

    reset_client_caches()
    store = ResultsStore(f"{work}/eval", tensorboard=False)
    assert {s for s, _ in store.done()} == {TOTAL}  # without --watch: the latest step
    rows = store.read()
    assert rows and all(r["step"] == TOTAL for r in rows)
    assert epath.Path(f"{work}/eval/results.jsonl").read_text().count("\n") == len(rows)
    assert epath.Path(f"{work}/eval/curves.png").exists()
