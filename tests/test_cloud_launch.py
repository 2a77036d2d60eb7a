"""The launcher's view: `--runner=DataflowRunner` builds and validates its job offline (Beam's
--dry_run; gs:// served by a local GCS server), flags Dataflow rejects are one line before any work,
and a trainer whose gs:// workdir cannot be reached says so in one line."""

import os
import subprocess
import sys
from pathlib import Path

import annotate_fixtures as af
import pytest
from gcs_server import upload_tree

from pipelines import annotate

ROOT = Path(__file__).resolve().parents[1]


def _dataflow(inp: str, out: str, *extra: str) -> list[str]:
    return [f"--input={inp}", f"--output={out}", "--runner=DataflowRunner", "--project=locca-test",
            "--region=us-central1", *extra]


@pytest.mark.slow
def test_dataflow_job_builds_and_validates_offline(gcs, tmp_path):
    server, bucket = gcs
    af.write_tar(tmp_path / "web" / "a.tar", af.clean_samples(0, 2))
    upload_tree(server, tmp_path / "web", f"gs://{bucket}/web")
    manifest = annotate.run(_dataflow(f"gs://{bucket}/web/*.tar", f"gs://{bucket}/shards",
                                      f"--temp_location=gs://{bucket}/tmp", "--dry_run=True",
                                      "--sdk_location=container", "--no_auth"))
    assert manifest["dry_run"] and manifest["input_files"] == 1
    assert manifest["transforms"] > 10  # the whole graph, translated for the service


@pytest.mark.parametrize("extra, message", [
    ((), "needs --temp_location gs://"),
    (("--temp_location=/tmp/x",), "needs --temp_location gs://"),
    (("--temp_location=gs://b/tmp", "--output_local"), "is not on gs://"),
])
def test_dataflow_flags_are_one_line_before_any_work(tmp_path, extra, message):
    out = str(tmp_path / "out") if "--output_local" in extra else "gs://b/out"
    extra = tuple(e for e in extra if e != "--output_local")
    with pytest.raises(SystemExit) as e:
        annotate.run(_dataflow("gs://b/web/*.tar", out, *extra))
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()  # nothing was written


def test_dataflow_without_region_or_project(tmp_path):
    with pytest.raises(SystemExit, match="needs --region"):
        annotate.run(["--input=gs://b/x", "--output=gs://b/o", "--runner=DataflowRunner",
                      "--project=p", "--temp_location=gs://b/tmp"])
    with pytest.raises(SystemExit, match="needs --project"):
        annotate.run(["--input=gs://b/x", "--output=gs://b/o", "--runner=DataflowRunner",
                      "--region=r", "--temp_location=gs://b/tmp"])


@pytest.mark.slow
def test_trainer_with_unreachable_gcs_is_one_line(tmp_path):
    from gcs_server import client_env

    env = {**os.environ, **client_env("http://127.0.0.1:9"), "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": str(ROOT)}  # port 9: nothing listens, as with no network to GCS
    r = subprocess.run([sys.executable, "training/run.py", "--config=training/configs/locca.py:micro",
                        "--workdir=gs://locca-nowhere/run",
                        "--config.tokenizer=gs://locca-nowhere/tok.model"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("cannot reach gs://locca-nowhere/run"), r.stderr[-2000:]
    assert "credentials" in last
