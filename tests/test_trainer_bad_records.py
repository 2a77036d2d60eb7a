"""Corrupt training records: a run on shards with a few undecodable records finishes and reports
how many it skipped, a killed and resumed run has the same losses as an uninterrupted one, and past
data.max_bad_fraction the trainer stops with one line."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import train_fixtures

ROOT = Path(__file__).resolve().parents[1]
N, TOTAL = 2, 6
BAD = {3, 17}  # record positions (in glob order) replaced by bytes that are no tf.train.Example


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter

    d = tmp_path_factory.mktemp("corpus")
    train_fixtures.write_shards(str(d), num_records=40)
    train_fixtures.write_tokenizer(str(d / "tok.model"))
    pos = 0
    for shard in sorted(d.glob("train-*.array_record")):
        reader = ArrayRecordReader(str(shard))
        records = reader.read_all()
        reader.close()
        records = [b"not a serialized example" if pos + i in BAD else r
                   for i, r in enumerate(records)]
        pos += len(records)
        writer = ArrayRecordWriter(str(shard), "group_size:1")
        for r in records:
            writer.write(r)
        writer.close()
    return d


def _command(workdir: Path, corpus: Path, max_bad: float) -> list[str]:
    return [sys.executable, "training/run.py", "--config=training/configs/locca.py:micro",
            f"--workdir={workdir}", f"--config.data.train_glob={corpus}/train-*.array_record",
            f"--config.tokenizer={corpus}/tok.model", f"--config.total_steps={TOTAL}",
            "--config.checkpoint.interval=1", "--config.checkpoint.keep=100",
            f"--config.data.max_bad_fraction={max_bad}",
            f"--config.compilation_cache_dir={corpus}/xla", "--config.progress_bar=False"]


def _rows(workdir: Path) -> dict[int, dict]:
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: {k: v for k, v in r.items() if "loss" in k or k == "data/bad_records"}
            for r in rows}


@pytest.mark.slow
def test_bad_records_are_skipped_counted_and_resume_exactly(corpus, tmp_path):
    straight = tmp_path / "straight"
    r = subprocess.run(_command(straight, corpus, 0.5), cwd=ROOT, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    want = _rows(straight)
    skipped = sum(row["data/bad_records"] for row in want.values())
    # 6 steps x 8 examples = 48 reads of 40 records: both bad records at least once.
    assert len(BAD) <= skipped <= 2 * len(BAD)
    assert all(v == v for row in want.values() for v in row.values())  # no NaN from empty masks

    killed = tmp_path / "killed"
    cmd = _command(killed, corpus, 0.5)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    deadline = time.time() + 600
    while not (killed / "checkpoints" / str(N)).exists():
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _rows(killed) == want  # same losses and skips at every step


@pytest.mark.slow
def test_past_the_rate_is_one_line(corpus, tmp_path):
    r = subprocess.run(_command(tmp_path / "w", corpus, 0.001), cwd=ROOT, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("stopping at step") and "data.max_bad_fraction=0.001" in last, \
        r.stderr[-3000:]
    assert "DecodeError" in last or "Error" in last  # names the first bad record's problem
    assert "Traceback" not in r.stderr
