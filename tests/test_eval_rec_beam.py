"""The REC evaluator's decodings: beam 1 is greedy, beam k and expected-bin decoding report their
own metric names and predictions files and stay well-formed under the box constraint."""

from __future__ import annotations

import json

import pytest
from eval_fixtures import evaluator_config, random_head_run

from evaluation.evaluators import base


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return random_head_run(tmp_path_factory.mktemp("rec_beam"))


def _rec(setup, **kw) -> dict[str, float]:
    run, params, eval_dir = setup
    cfg = evaluator_config("rec", eval_dir, splits=("val",), max_per_split=8, batch_size=4,
                           **kw)
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


def test_expected_bin_decoding_is_reported_beside_the_argmax(setup):
    run, _, _ = setup
    greedy = _rec(setup)
    both = _rec(setup, loc_decodes=("argmax", "expected"))
    for metric in ("acc@0.5", "miou", "pointing", "malformed"):
        assert both[f"val/{metric}"] == greedy[f"val/{metric}"]
        assert 0.0 <= both[f"val/{metric}_expected"] <= 1.0
    assert both["val/malformed_expected"] == 0.0
    assert both["val/count"] == 8 and "val/count_expected" not in both
    predictions = base.epath.Path(run.workdir) / "eval" / "predictions"
    rows = [json.loads(line) for line in
            (predictions / "rec_val_expected_step1.jsonl").read_text().splitlines()]
    assert len(rows) == 8
    # The random head's boxes differ between the two decodings somewhere.
    argmax_rows = [json.loads(line) for line in
                   (predictions / "rec_val_step1.jsonl").read_text().splitlines()]
    assert [r["pred_box"] for r in rows] != [r["pred_box"] for r in argmax_rows]
    with pytest.raises(ValueError, match="greedily"):
        _rec(setup, loc_decodes=("expected",), beam_size=3)
    with pytest.raises(ValueError, match="loc_decodes"):
        _rec(setup, loc_decodes=("mode",))


def test_choice_prefers_the_box_the_model_finds_most_likely(setup):
    """rec's `choice`: per expression, its referent's box against every other annotated object's,
    by the teacher-forced log-likelihood of the whole aref row; recomputed here one example at a
    time with the model itself, on its own image and (choice_blind) on another. Chance is the
    mean of 1 / candidates."""
    import jax
    import numpy as np

    from evaluation.data.refcoco import load_rec
    from evaluation.images import ImageCache
    from evaluation.predict import Predictor
    from model import tasks

    run, params, eval_dir = setup
    rows = _rec(setup)
    examples = load_rec(f"{eval_dir}/refs.json", f"{eval_dir}/instances.json",
                        f"{eval_dir}/images", splits=("val",)).split("val")[:8]
    scored = [ex for ex in examples if ex.others]
    assert scored, "the fixture's eval set needs images with several objects"
    images = ImageCache(int(run.model_config.image_size))
    pred = Predictor(run.model, batch_size=4, eos_id=run.tokenizer.eos_id,
                     pad_id=run.tokenizer.pad_id)
    order = sorted({ex.image_path for ex in examples})
    other = dict(zip(order, order[1:] + order[:1], strict=True))

    def picks_own_box(ex, image_path):
        encoded = np.asarray(run.model.apply({"params": params}, images.batch([image_path]),
                                             method="encode"))
        ll = []
        for box in (ex.box, *ex.others):
            f = tasks.format_task("aref", run.tokenizer, max_len=pred.max_len,
                                  phrase=ex.sentence, box=box)
            logits = run.model.apply({"params": params}, encoded, f.inputs[None], method="decode")
            logp = np.asarray(jax.nn.log_softmax(logits[0]))
            ll.append(float((logp[np.arange(len(f.targets)), f.targets] * f.loss_mask).sum()))
        return float(ll[0] > max(ll[1:]))

    want = [picks_own_box(ex, ex.image_path) for ex in scored]
    blind = [picks_own_box(ex, other[ex.image_path]) for ex in scored]
    assert rows["val/choice"] == pytest.approx(np.mean(want), abs=1e-9)
    # choice_blind: each expression scored on the next image of the split (sorted by path).
    assert rows["val/choice_blind"] == pytest.approx(np.mean(blind), abs=1e-9)
    assert rows["val/choice_chance"] == pytest.approx(
        np.mean([1 / (1 + len(ex.others)) for ex in scored]), abs=1e-9)
    assert "val/choice" not in _rec(setup, choice=False)
