"""End-to-end evaluators on the sample corpus with tiny models (slow: they compile generation)."""

import pytest
from eval_fixtures import evaluator_config, make_corpus, make_tokenizer, make_workdir

from evaluation.evaluators import base
from evaluation.train_run import TrainRun
from evaluation.watch import step_path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("transfer")
    eval_dir = make_corpus(root / "corpus", num_eval=150)
    tok = make_tokenizer(eval_dir, root / "tok.model")
    # 64 px / patch 16 = 16 encoder tokens: a random frozen encoder still carries where colours are.
    make_workdir(root / "run", root / "tok.model", tok.vocab_size, steps=(1,), image_size=64)
    return root / "run", eval_dir


@pytest.mark.slow
def test_transfer_decoder_beats_its_untrained_floor(setup):
    workdir, eval_dir = setup
    run = TrainRun.load(str(workdir))
    cfg = evaluator_config(
        "rec_transfer", eval_dir, splits=("val",), train_split="train", encoder="checkpoint",
        batch_size=16, report_untrained=True,
        decoder=dict(width=64, depth=1, num_heads=2, mlp_dim=128, max_len=24, steps=400,
                     batch_size=32, learning_rate=2e-3, warmup=20, seed=0))
    ev = base.build("rec_transfer", cfg, run, {})
    m = dict(ev.run(base.StepContext(1, step_path(str(workdir), 1), run)))
    assert m["train/loss_last"] < 0.7 * m["train/loss_first"]
    # The untrained (zero-init output) decoder always answers the corner box: IoU ~0.
    assert m["val/miou"] > m["val/miou_untrained"] + 0.01, m  # untrained: 0.0
    assert m["val/acc@0.5"] >= m["val/acc@0.5_untrained"]
    assert m["val/malformed"] < 0.5


@pytest.mark.slow
def test_every_evaluator_runs_on_the_sample_corpus(setup):
    from evaluation.configs.sample import get_config
    from evaluation.run import Job

    workdir, eval_dir = setup
    config = get_config(f"quick,data_dir={eval_dir},max_per_split=4,transfer_steps=5,batch_size=4")
    job = Job(str(workdir), config, None)
    assert job.evaluate_step(1, step_path(str(workdir), 1))
    rows = job.store.read()
    names = {(r["evaluator"], r["split"], r["metric"]) for r in rows}
    for needed in [("rec", "val", "acc@0.5"), ("rec_transfer", "val", "acc@0.5"),
                   ("captioning", "val", "cider"), ("captioning", "val", "cider_beam3"),
                   ("gcap", "val", "exact_match"), ("linear_probe", "dominant_shape", "accuracy"),
                   ("image_reliance", "cap", "reliance"), ("image_reliance", "aref", "loc_reliance"),
                   ("loc_readout", "val", "r2_y1"), ("loc_readout", "val", "tf_acc@0.5")]:
        assert needed in names
    assert all(0.0 <= r["value"] <= 1.0 for r in rows if r["metric"] in ("acc@0.5", "accuracy"))
    # The constant-box floor next to the model's REC: the mean train-split object box for every
    # expression, recomputed here from the corpus files.
    import numpy as np

    from evaluation.data.refcoco import load_rec
    from evaluation.metrics import rec_scores

    data = load_rec(eval_dir / "refs.json", eval_dir / "instances.json", eval_dir / "images")
    per_object = {e.ref_id: e.box for e in data.split("train")}  # each referred object once
    mean_box = np.mean(list(per_object.values()), axis=0)
    val = [e.box for e in data.split("val")][:4]  # max_per_split=4
    want = rec_scores([mean_box] * len(val), val)
    got = {r["metric"]: r["value"] for r in rows if r["evaluator"] == "rec" and r["split"] == "val"}
    assert got["pointing_prior"] == pytest.approx(want["pointing"])
    assert got["miou_prior"] == pytest.approx(want["miou"])
    assert "pointing" in got and "acc@0.5_prior" in got
