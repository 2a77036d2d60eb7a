"""Resume to the bit: a run killed (SIGKILL or SIGTERM) after step N's checkpoint and restarted
with the same command ends with the same parameters and saw the same batches as a straight run."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import train_fixtures

from training import trainer
from training.configs.locca import get_config
from training.train_checkpoints import restore_params

ROOT = Path(__file__).resolve().parents[1]
N = 3  # kill after step N's checkpoint; the run goes to 2N + 2 so the kill lands mid-run
TOTAL = 2 * N + 2


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("corpus")
    train_fixtures.write_shards(str(d), num_records=40)
    train_fixtures.write_tokenizer(str(d / "tok.model"))
    return d


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("xla_cache")


def overrides(corpus: Path, cache: Path) -> dict:
    return {
        "data.train_glob": str(corpus / "train-*.array_record"),
        "tokenizer": str(corpus / "tok.model"),
        "total_steps": TOTAL,
        "checkpoint.interval": 1,
        "checkpoint.keep": 100,
        "log_batch_hashes": True,
        "compilation_cache_dir": str(cache),
        "progress_bar": False,
        "parallel_prob": 0.5,
    }


def command(workdir: Path, corpus: Path, cache: Path) -> list[str]:
    flags = [f"--config.{k}={v}" for k, v in overrides(corpus, cache).items()]
    return [sys.executable, "training/run.py", "--config=training/configs/locca.py:micro",
            f"--workdir={workdir}", *flags]


@pytest.fixture(scope="module")
def straight(corpus: Path, cache: Path, tmp_path_factory) -> Path:
    """The uninterrupted run (in-process; the same config the command line builds)."""
    workdir = tmp_path_factory.mktemp("straight")
    config = get_config("micro")
    for key, value in overrides(corpus, cache).items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    assert trainer.train(config, str(workdir)) == "done"
    return workdir


def batch_hashes(workdir: Path) -> dict[int, int]:
    """step -> CRC of its batch; a replayed step must have seen the same batch both times."""
    seen: dict[int, int] = {}
    for line in (workdir / "batch_hashes.jsonl").read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # the line the kill cut short
            continue
        assert seen.setdefault(row["step"], row["crc"]) == row["crc"], f"step {row['step']}"
    return seen


def assert_same_run(got: Path, want: Path) -> None:
    assert (got / "DONE").read_text().strip() == str(TOTAL)
    assert batch_hashes(got) == batch_hashes(want)
    assert sorted(batch_hashes(want)) == list(range(1, TOTAL + 1))
    a = restore_params(str(got / "checkpoints" / str(TOTAL) / "params"))
    b = restore_params(str(want / "checkpoints" / str(TOTAL) / "params"))
    leaves_a, leaves_b = _leaves(a), _leaves(b)
    assert leaves_a.keys() == leaves_b.keys()
    for key in leaves_a:
        np.testing.assert_array_equal(leaves_a[key], leaves_b[key], err_msg=key)


def wait_for_checkpoint(proc: subprocess.Popen, workdir: Path, step: int) -> None:
    path = workdir / "checkpoints" / str(step)
    deadline = time.time() + 600
    while not path.exists():
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.02)


@pytest.mark.slow  # two trainer processes; exact resume is also checked in test_mixture's Orbax round trip
def test_sigkill_resume_is_exact(straight: Path, corpus: Path, cache: Path, tmp_path: Path):
    workdir = tmp_path / "killed"
    cmd = command(workdir, corpus, cache)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    wait_for_checkpoint(proc, workdir, N)
    delay = random.uniform(0.0, 0.3)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (workdir / "DONE").exists(), f"finished before the kill ({delay=:.2f}s)"
    # Whatever the kill left, also plant a half-written later step: it must be ignored.
    done = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    junk = workdir / "checkpoints" / f"{done[-1] + 1}.orbax-checkpoint-tmp" / "params"
    junk.mkdir(parents=True, exist_ok=True)
    (junk / "garbage").write_bytes(b"\x00" * 100)

    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert_same_run(workdir, straight)


@pytest.mark.slow
def test_sigterm_saves_and_exits_zero(straight: Path, corpus: Path, cache: Path, tmp_path: Path):
    workdir = tmp_path / "preempted"
    cmd = command(workdir, corpus, cache)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    wait_for_checkpoint(proc, workdir, N)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    assert "training preempted" in out
    assert not (workdir / "DONE").exists()
    steps = [int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
    assert N <= max(steps) < TOTAL

    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert_same_run(workdir, straight)


def _leaves(tree, prefix=""):
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_leaves(v, f"{prefix}/{k}"))
        return out
    return {prefix: np.asarray(tree)}
