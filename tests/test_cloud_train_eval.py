"""The trainer and the evaluator on gs:// (fake-gcs-server on 127.0.0.1): shards and tokenizer read
from gs://, Orbax checkpoints, metrics, encoder.npz and DONE written there, a SIGKILLed run resumed
from its gs:// checkpoint, then evaluation/run.py scoring the gs:// workdir. The same run on local
paths gives the same metrics at every step and the same final parameters."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import train_fixtures
from eval_fixtures import run_eval
from gcs_server import client_env, reset_client_caches, upload_tree

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


@pytest.mark.slow
def test_train_kill_resume_and_evaluate_on_gcs(gcs_strict, tmp_path):
    from etils import epath

    from evaluation.watch import finalized_steps
    from training.train_checkpoints import restore_params

    server, bucket = gcs_strict
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    train_fixtures.write_shards(str(corpus), num_records=40)
    train_fixtures.write_tokenizer(str(corpus / "tok.model"))
    upload_tree(server, corpus, f"gs://{bucket}/corpus")
    cache = tmp_path / "xla"
    env = {**os.environ, **client_env(server.url), "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT),
           "TMPDIR": str(tmp_path)}  # the shard cache goes under the test's temp dir

    local = tmp_path / "local"
    r = subprocess.run(_command(str(local), str(corpus), str(corpus / "tok.model"), cache),
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
    os.environ.update(client_env(server.url))
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
