"""The REC evaluator with beam search over the box tokens: beam 1 is greedy, beam k reports its
own metric names and predictions file and stays well-formed under the box constraint."""

from __future__ import annotations

import ml_collections
import pytest
from test_eval_fixtures import random_head_run

from evaluation.evaluators import base


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return random_head_run(tmp_path_factory.mktemp("rec_beam"))


def _rec(setup, **kw) -> dict[str, float]:
    run, params, eval_dir = setup
    cfg = ml_collections.ConfigDict(dict(
        type="rec", refs=str(eval_dir / "refs.json"), instances=str(eval_dir / "instances.json"),
        images=str(eval_dir / "images"), splits=("val",), max_per_split=8, batch_size=4, **kw))
    ev = base.build("rec", cfg, run, {})
    ctx = base.StepContext(1, base.epath.Path(run.workdir) / "checkpoints" / "1", run, params)
    return dict(ev.run(ctx))


def test_beam_one_is_greedy_and_beam_k_is_named_apart(setup):
    run, _, _ = setup
    greedy = _rec(setup)
    assert _rec(setup, beam_size=1) == greedy
    beam = _rec(setup, beam_size=3)
    assert beam["val/count"] == greedy["val/count"] == 8
    for metric in ("acc@0.5", "miou", "pointing", "malformed"):
        assert f"val/{metric}_beam3" in beam and f"val/{metric}" not in beam
        assert 0.0 <= beam[f"val/{metric}_beam3"] <= 1.0
    assert beam["val/malformed_beam3"] == 0.0  # constrained: 4 ordered location tokens
    predictions = base.epath.Path(run.workdir) / "eval" / "predictions"
    assert (predictions / "rec_val_beam3_step1.jsonl").exists()
    assert (predictions / "rec_val_step1.jsonl").exists()
    with pytest.raises(ValueError, match="beam_size"):
        _rec(setup, beam_size=0)
