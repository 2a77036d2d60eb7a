"""Training on a weighted mixture of named shard sets (training/mixture.py, Grain's own mix):
the draw follows the weights, every example's source is carried and true, resume is exact
(iterator state through Orbax, and a killed trainer), and metrics log examples per source."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import grain
import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordWriter
from test_data_pipeline import (  # noqa: F401
    _config,
    _item_ids,
    _jpeg,
    _same,
    _take,
    orbax_round_trip,
    tok,
)

from pipelines import record as record_lib
from training import data, mixture

ROOT = Path(__file__).resolve().parents[1]


def _write(directory: Path, items: range, num_shards: int = 2) -> str:
    """Records whose caption is "item {i} ..."; one region each."""
    directory.mkdir(parents=True, exist_ok=True)
    jpeg = _jpeg()
    for s in range(num_shards):
        writer = ArrayRecordWriter(str(directory / f"part-{s}.array_record"), "group_size:1")
        for i in items[s::num_shards]:
            writer.write(record_lib.encode(record_lib.Record(
                key=f"k{i}", source="test", image=jpeg, height=48, width=64,
                caption=f"item {i} a red box", boxes=np.float32([[0.2, 0.1, 0.6, 0.45]]),
                phrases=("red box",), scores=np.ones(1, np.float32),
                query_ranks=np.zeros(1, np.int64), labeler="test")))
        writer.close()
    return str(directory / "part-*.array_record")


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("mix")
    return _write(root / "a", range(0, 30)), _write(root / "b", range(100, 120))


def _mix_config(sets, weights=(0.8, 0.2)):
    c = _config("")
    c.mixture = (("web", sets[0], weights[0]), ("vg", sets[1], weights[1]))
    return c


def test_examples_seen_is_grains_interleave():
    for weights in ((0.8, 0.2), (0.5, 0.2, 0.3), (1.0, 3.0)):
        parts = [grain.MapDataset.range(10**6).map(lambda x, i=i: i) for i in range(len(weights))]
        mixed = grain.MapDataset.mix(parts, list(weights))
        tally = np.zeros(len(weights), int)
        for k in range(1200):
            assert list(tally) == mixture.examples_seen(weights, k), (weights, k)
            tally[mixed[k]] += 1


def test_weights_draw_in_proportion_and_sources_are_true(sets, tok):  # noqa: F811
    it = data.make_train_iter(_mix_config(sets), tok, per_process_batch=50, seed=3,
                              process_index=0, process_count=1)
    batches = _take(it, 60)  # 3,000 examples: 100 passes over "vg", 80 over "web"
    source = np.concatenate([b["source"] for b in batches])
    frac = float(np.mean(source == 0))
    assert abs(frac - 0.8) < 3 * np.sqrt(0.8 * 0.2 / source.size)
    assert list(np.bincount(source)) == mixture.examples_seen((0.8, 0.2), source.size)
    ids = np.concatenate([_item_ids(b, tok) for b in batches[:6]])
    np.testing.assert_array_equal(ids >= 100, source[: ids.size] == 1)  # the label is the truth
    # Each set is shuffled and reshuffled per pass, on its own: every record of "vg" is drawn.
    assert set(ids[ids >= 100]) == set(range(100, 120))


def test_mixture_resumes_exactly_through_orbax(sets, tok, tmp_path):  # noqa: F811
    def make():
        return data.make_train_iter(_mix_config(sets), tok, per_process_batch=8, seed=9,
                                    process_index=0, process_count=1)

    # 6 batches after the save run past the end of "vg"'s first pass.
    assert _same(*orbax_round_trip(make, 5, 6, tmp_path))


@pytest.mark.parametrize("entry,needle", [
    (("web", "/nonexistent/*.array_record", 1.0), "no shards match"),
    (("web", "X", 0.0), "must be > 0"),
    (("web", "X"), "must be (name, shard_glob, weight)"),
])
def test_bad_mixture_is_named(sets, entry, needle):
    c = _config("")
    c.mixture = (entry,)
    with pytest.raises(data.DataError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        data.mixture_parts(c)


@pytest.mark.slow
def test_killed_mixture_training_resumes_exactly(sets, tmp_path):
    """The trainer with a mixture: SIGKILL after a checkpoint, rerun, same batches and params as
    a straight run; metrics.jsonl has examples_seen per source."""
    import train_fixtures
    from test_trainer_resume import _leaves, batch_hashes, wait_for_checkpoint

    from training.train_checkpoints import restore_params

    train_fixtures.write_tokenizer(str(tmp_path / "tok.model"))
    mix = f"(('web', '{sets[0]}', 0.8), ('vg', '{sets[1]}', 0.2))"
    flags = {"data.mixture": mix, "tokenizer": str(tmp_path / "tok.model"), "total_steps": 8,
             "checkpoint.interval": 1, "checkpoint.keep": 100, "log_batch_hashes": True,
             "progress_bar": False, "log_every": 1, "batch_size": 4}

    def cmd(workdir: Path) -> list[str]:
        return [sys.executable, "training/run.py", "--config=training/configs/locca.py:micro",
                f"--workdir={workdir}", *[f"--config.{k}={v}" for k, v in flags.items()]]

    straight = subprocess.run(cmd(tmp_path / "straight"), cwd=ROOT, capture_output=True,
                              text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = tmp_path / "killed"
    proc = subprocess.Popen(cmd(killed), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    wait_for_checkpoint(proc, killed, 3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    again = subprocess.run(cmd(killed), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert batch_hashes(killed) == batch_hashes(tmp_path / "straight")
    a = _leaves(restore_params(str(killed / "checkpoints/8/params")))
    b = _leaves(restore_params(str(tmp_path / "straight/checkpoints/8/params")))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    rows = [json.loads(x) for x in (killed / "metrics.jsonl").read_text().splitlines()]
    last = rows[-1]
    assert last["step"] == 8
    assert [last["examples_seen/web"], last["examples_seen/vg"]] == \
        mixture.examples_seen((0.8, 0.2), 8 * 4)


def test_mixture_parts_on_gcs_are_read_from_the_shard_cache(sets, tok, gcs_strict, tmp_path):  # noqa: F811
    """A data.mixture part on gs:// goes through training/shard_cache.py like data.train_glob:
    the loader gets local copies in glob order (a local part stays as it is) and draws the same
    batches as from the local shards."""
    from gcs_server import upload_tree

    from training import trainer
    from training.configs import locca as locca_configs

    server, bucket = gcs_strict
    upload_tree(server, Path(sets[0]).parent, f"gs://{bucket}/web")
    cloud = f"gs://{bucket}/web/part-*.array_record"

    def loader(web_glob: str):
        c = locca_configs.get_config("micro")
        c.data.mixture = (("web", web_glob, 0.8), ("vg", sets[1], 0.2))
        c.data.cache_dir = str(tmp_path / "cache")
        return trainer.data_config(c)

    staged = loader(cloud)
    web, vg = (entry[1] for entry in staged.mixture)
    assert [Path(p).parent for p in web.split(",")] == [tmp_path / "cache"] * 2
    assert [Path(p).name.split("-", 1)[1] for p in web.split(",")] == [
        "part-0.array_record", "part-1.array_record"]
    assert vg == sets[1]

    def batches(config):
        return _take(data.make_train_iter(config, tok, per_process_batch=8, seed=1,
                                          process_index=0, process_count=1), 3)

    assert _same(batches(staged), batches(loader(sets[0])))
