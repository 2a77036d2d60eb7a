"""annotate on other runners here: the DirectRunner's multi-process mode and Beam's DaskRunner on a
dask.distributed LocalCluster of 2 worker processes give byte-identical shards and the same counts.

The pipeline runs on Beam 2.77's DaskRunner because it avoids what that runner gets wrong (a probe
below pins each, so a fixed release shows up): a multi-output ParDo's tagged outputs all reach
every consumer, and elements a DoFn emits from finish_bundle are dropped (pipelines/tags.py and
pipelines/stages.py say how the pipeline does without them)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import annotate_fixtures as af
import pytest

from pipelines import annotate

ROOT = Path(__file__).resolve().parents[1]
DASK = "apache_beam.runners.dask.dask_runner.DaskRunner"


def _inputs(tmp: Path) -> list[str]:
    af.write_tar(tmp / "in" / "a.tar", af.clean_samples(0, 5))
    af.write_tar(tmp / "in" / "b.tar", af.clean_samples(5, 4) + [
        ("broken", {"jpg": b"not a jpeg", "txt": b"a red square"}),
        ("nocaption", {"jpg": af.scene(20)[0], "txt": b" "})])
    return [f"--input={tmp}/in/*.tar", "--max_pixels=100000", "--progress=false", "--num_shards=2"]


def _same_shards(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.glob("*.array_record"))
    assert names and names == sorted(p.name for p in b.glob("*.array_record"))
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}


@pytest.mark.slow
def test_direct_multiprocessing_gives_identical_shards(tmp_path):
    base = _inputs(tmp_path)
    ref = annotate.run([*base, f"--output={tmp_path}/direct", "--runner=DirectRunner"])
    got = annotate.run([*base, f"--output={tmp_path}/mp", "--runner=DirectRunner",
                        "--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    assert got["counts"] == ref["counts"] and ref["counts"]["dead_lettered"] == 2
    _same_shards(tmp_path / "direct", tmp_path / "mp")


_DASK_ANNOTATE = """
import json
import sys

from dask.distributed import Client, LocalCluster

from pipelines import annotate

if __name__ == "__main__":
    cluster = LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                           dashboard_address=None)
    try:
        manifest = annotate.run(sys.argv[1:] + ["--dask_client_address="
                                                + cluster.scheduler_address])
        with Client(cluster) as client:
            executed = client.run(lambda dask_worker: dask_worker.state.executed_count)
        print("RESULT " + json.dumps({"manifest": manifest, "executed": sorted(executed.values())}))
    finally:
        cluster.close()
"""


@pytest.mark.slow
def test_dask_runner_gives_identical_shards_and_counts(tmp_path):
    """The same annotate command on DaskRunner (2 worker processes, files spread over 2 partitions,
    labeler batches of 2) and on the DirectRunner: same shard bytes, preview, dead letters and
    manifest (all but the runner in its config), and both workers did part of the work."""
    pytest.importorskip("dask.distributed")
    base = [*_inputs(tmp_path), "--max_batch_size=2"]
    ref = annotate.run([*base, f"--output={tmp_path}/direct", "--runner=DirectRunner"])
    script = tmp_path / "dask_annotate.py"
    script.write_text(_DASK_ANNOTATE)
    r = subprocess.run([sys.executable, str(script), *base, f"--output={tmp_path}/dask",
                        f"--runner={DASK}", "--dask_npartitions=2"],
                       capture_output=True, text=True, timeout=600, env=_env(), cwd=tmp_path)
    lines = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
    assert r.returncode == 0 and lines, r.stderr[-3000:]
    result = json.loads(lines[0][len("RESULT "):])
    got = result["manifest"]
    assert got["counts"] == ref["counts"] and got["counts"]["balanced"]
    assert ref["counts"]["dead_lettered_by_reason"] == {"not_an_image": 1, "empty_caption": 1}
    assert got["shards"] == ref["shards"] and got["boxes"] == ref["boxes"]
    assert got["config"] == {**ref["config"], "runner": DASK, "output": f"{tmp_path}/dask"}
    _same_shards(tmp_path / "direct", tmp_path / "dask")
    for name in ("preview.html", "preview.png"):
        assert (tmp_path / "dask" / name).read_bytes() == (tmp_path / "direct" / name).read_bytes()
    # PIL names the in-memory file by its address in a detail: the one part that differs
    dead = [sorted(re.sub(r" at 0x[0-9a-f]+", "", (tmp_path / d / "dead_letters.jsonl").read_text())
                   .splitlines()) for d in ("direct", "dask")]
    assert dead[0] == dead[1] and len(dead[0]) == 2
    assert len(result["executed"]) == 2 and min(result["executed"]) > 0, result["executed"]


_DASK_PROBE = """
import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms import window
from dask.distributed import LocalCluster


class Split(beam.DoFn):
    def process(self, x):
        yield beam.pvalue.TaggedOutput("neg", -x)
        yield x


class AtBundleEnd(beam.DoFn):
    def process(self, x):
        yield "in-process"

    def finish_bundle(self):
        yield window.GlobalWindows.windowed_value_at_end_of_window("from-finish-bundle")


if __name__ == "__main__":
    cluster = LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                           dashboard_address=None)
    try:
        opts = PipelineOptions(["--runner=" + RUNNER,
                                "--dask_client_address=" + cluster.scheduler_address])
        p = beam.Pipeline(options=opts)
        out = p | beam.Create([1, 2]) | beam.ParDo(Split()).with_outputs("neg", main="pos")
        ends = p | "Two" >> beam.Create(["x", "y"]) | beam.ParDo(AtBundleEnd())
        _ = ((out.neg | "N" >> beam.Map(lambda v: "NEG %s" % v)),
             (ends | "E" >> beam.Map(lambda v: "END " + v))) | beam.Flatten() | beam.Map(
                 lambda line: print(line + "\\n", end="", flush=True))  # one write: no interleaving
        result = p.run()
        result.wait_until_finish()
        result.client.close()
    finally:
        cluster.close()
""".replace("RUNNER", repr(DASK), 1)


@pytest.mark.slow
def test_dask_runner_still_misroutes_tagged_outputs_and_drops_finish_bundle(tmp_path):
    """Why the pipeline has no tagged outputs and cuts its own labeler batches: on the DaskRunner
    a multi-output ParDo's tagged output also gets the main output's elements, and what a DoFn
    emits from finish_bundle never arrives. When this fails (fixed upstream), those workarounds
    (pipelines/tags.py, stages.py, inference.py) can go."""
    pytest.importorskip("dask.distributed")
    script = tmp_path / "probe.py"
    script.write_text(_DASK_PROBE)
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": ""})
    got = sorted(line for line in r.stdout.splitlines() if line.startswith(("NEG", "END")))
    assert "NEG -1" in got and "NEG -2" in got, r.stderr[-2000:]
    assert "END in-process" in got  # the probe ran its other branch
    assert "NEG 1" in got and "NEG 2" in got  # the main output's elements leak into the tagged one
    assert "END from-finish-bundle" not in got  # the bundle-end element is dropped


def test_dask_flags_are_accepted(tmp_path):
    """--dask_client_address is a Beam option from the Dask runner's own module: the unknown-flag
    check must let it through (and still reject a misspelt flag)."""
    with pytest.raises(SystemExit, match="matches no files"):
        annotate.run([f"--input={tmp_path}/none/*.tar", f"--output={tmp_path}/o",
                      f"--runner={DASK}", "--dask_client_address=127.0.0.1:1"])
    with pytest.raises(SystemExit, match="unknown flag"):
        annotate.run([f"--input={tmp_path}/none/*.tar", f"--output={tmp_path}/o",
                      "--dask_client_adress=127.0.0.1:1"])
