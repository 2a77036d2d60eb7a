"""evaluation/run.py as a scheduler runs it: watch mode scores each complete checkpoint exactly
once (two copies at once included), ignores a half-written save, a restart repeats nothing, and
bad input is one readable line."""

import collections
import json
import time
from pathlib import Path

import pytest
from eval_fixtures import make_workdir, results, run_eval, save_checkpoint, tiny_model_config


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from model import tokenizer as tk

    path = tmp_path_factory.mktemp("tok") / "tok.model"
    words = ["the red star on the left", "a blue circle", "cap", "aref", "gcap", ":"]
    return path, tk.save(tk.train_model(words * 20, vocab_size=1400), str(path))


def _counts(workdir: Path) -> collections.Counter:
    return collections.Counter((r["step"], r["evaluator"], r["split"], r["metric"])
                               for r in results(workdir))


@pytest.mark.slow  # two watch processes; exactly-once also runs in test_eval_exactly_once_gcs
def test_watch_scores_each_checkpoint_once_with_two_copies(tmp_path, tok):
    tok_path, tokenizer = tok
    workdir = tmp_path / "run"
    make_workdir(workdir, tok_path, tokenizer.vocab_size, steps=(1,), done=False)
    # A save killed mid-way: Orbax's tmp dir, which must never be evaluated.
    tmp = workdir / "checkpoints" / "4.orbax-checkpoint-tmp" / "params"
    tmp.mkdir(parents=True)
    (tmp / "garbage").write_text("half written")
    procs = [run_eval(workdir, tmp_path, "--watch", "--timeout", "240", variant="stats",
                      background=True) for _ in range(2)]
    cfg = tiny_model_config(tokenizer.vocab_size)
    for step in (2, 3):
        time.sleep(2)
        save_checkpoint(workdir, step, cfg)
    (workdir / "DONE").write_text("3\n")
    outputs = [p.communicate(timeout=400)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    counts = _counts(workdir)
    assert {k[0] for k in counts} == {1, 2, 3}  # never the tmp step 4
    assert set(counts.values()) == {1}, counts  # every metric line exactly once
    assert {k[3] for k in counts} >= {"rms", "count", "nonfinite", "eval_seconds"}
    assert (workdir / "eval" / "curves.png").exists()
    assert not any((workdir / "checkpoints").glob("_SNAPSHOTS"))  # trainer's dir left alone

    # Restart (plain and watch): nothing is evaluated again.
    before = (workdir / "eval" / "results.jsonl").read_text()
    r = run_eval(workdir, tmp_path, variant="stats")
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_eval(workdir, tmp_path, "--watch", "--timeout", "60", variant="stats")
    assert r.returncode == 0, r.stderr[-2000:]
    assert (workdir / "eval" / "results.jsonl").read_text() == before


def test_bad_input_is_one_clear_line(tmp_path, tok):
    tok_path, tokenizer = tok
    empty = tmp_path / "empty"
    make_workdir(empty, tok_path, tokenizer.vocab_size, steps=(), done=False)
    r = run_eval(empty, tmp_path, variant="stats")
    assert r.returncode != 0
    assert "no complete checkpoint" in r.stderr and "Traceback" not in r.stderr

    # A checkpoint written by another model config: the error names the mismatching parameters.
    other = tmp_path / "other"
    make_workdir(other, tok_path, tokenizer.vocab_size, steps=(1,))
    cfg = json.loads((other / "config.json").read_text())
    cfg["model"]["width"] = 48
    (other / "config.json").write_text(json.dumps(cfg))
    r = run_eval(other, tmp_path, variant="stats")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "does not match" in r.stderr and "img/embedding/kernel" in r.stderr


def test_checkpoints_restore_from_relative_paths(tmp_path, tok, monkeypatch):
    """Orbax takes absolute paths only (a relative one made `restore_params` fail with an
    AttributeError on missing metadata): both restore helpers resolve a relative local path."""
    import jax
    import numpy as np

    from evaluation.train_run import TrainRun
    from training.train_checkpoints import restore_params

    tok_path, t = tok
    make_workdir(tmp_path / "run", tok_path, t.vocab_size, steps=(1,))
    monkeypatch.chdir(tmp_path)
    run = TrainRun.load("run")
    relative = run.restore_params("run/checkpoints/1")
    absolute = run.restore_params(tmp_path / "run" / "checkpoints" / "1")
    trainer_side = restore_params("run/checkpoints/1/params")
    for other in (absolute, trainer_side):
        same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), relative, other)
        assert all(jax.tree.leaves(same))


def test_config_json_of_old_and_new_runs_loads(tmp_path, tok):
    """Runs before issue 20 also recorded the training setting parallel_prob under "model"."""
    from evaluation.train_run import TrainRun

    tok_path, t = tok
    make_workdir(tmp_path / "new", tok_path, t.vocab_size, steps=(), done=False)
    config = json.loads((tmp_path / "new" / "config.json").read_text())
    config["model"]["parallel_prob"] = 0.5
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text(json.dumps(config))
    new, old = TrainRun.load(str(tmp_path / "new")), TrainRun.load(str(tmp_path / "old"))
    assert new.model_config.to_dict() == old.model_config.to_dict()
    assert "parallel_prob" not in old.model_config


def test_watch_evaluates_the_newest_step_from_a_params_only_copy(tmp_path, tok):
    """The snapshot that protects the newest step from keep-N deletion holds its params item
    only (not the optimizer state), restores like the original, and is gone when watch ends."""
    import jax
    import numpy as np

    from evaluation import watch
    from evaluation.train_run import TrainRun

    tok_path, tokenizer = tok
    workdir = tmp_path / "run"
    make_workdir(workdir, tok_path, tokenizer.vocab_size, steps=(1, 2), done=True)
    seen = []

    def sweep(paths):
        newest = paths[max(paths)]
        if not seen:  # the first sweep is the new-checkpoint one
            seen.append((sorted(paths), newest, sorted(p.name for p in Path(newest).iterdir())))
            run = TrainRun.load(str(workdir))
            copy, original = (run.restore_params(d) for d in (newest, paths[1].parent / "2"))
            for a, b in zip(jax.tree.leaves(copy), jax.tree.leaves(original), strict=True):
                np.testing.assert_array_equal(a, b)
        return True

    watch.watch(str(workdir), sweep, poll_s=1, idle_timeout_s=30, log=lambda _: None)
    steps, newest, items = seen[0]
    assert steps == [1, 2]
    assert Path(newest).parent.parent == workdir / "eval" / "snapshots"
    assert items == ["params"]  # no train_state copy
    assert not Path(newest).exists()  # removed when watch ended
    assert {p.name for p in (workdir / "checkpoints" / "2").iterdir()} >= {
        "params", "train_state"}  # the trainer's step untouched


def test_a_step_deleted_before_its_copy_is_skipped(tmp_path):
    from evaluation import watch

    assert watch.snapshot_params(tmp_path / "checkpoints" / "7", tmp_path / "snap" / "7") is None
    assert not (tmp_path / "snap").exists() or not any((tmp_path / "snap").iterdir())
