"""The number of location bins is one setting, end to end: a tokenizer trained with 32 bins
drives the task formats, both decodings, the evaluators and the checkpoint check."""

from __future__ import annotations

import json

import numpy as np
import pytest
from eval_fixtures import evaluator_config, random_head_run

from model import tasks
from model import tokenizer as tk

NUM_LOC = 32


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("num_loc")
    run, params, eval_dir = random_head_run(root, num_loc=NUM_LOC)
    return root, run, params, eval_dir


def test_tokenizer_records_and_checks_the_bin_count(setup, tmp_path):
    root, run, _, _ = setup
    tok = run.tokenizer
    assert tok.num_loc == NUM_LOC
    layout = json.loads((root / "tok.model.json").read_text())
    assert layout["num_loc"] == NUM_LOC and layout["loc_start"] == tok.loc_start
    ids = [i for i in tok.encode("<loc0000><loc0031>") if tok.is_loc(i)]  # after a "▁" piece
    assert ids == [tok.loc_start, tok.loc_start + NUM_LOC - 1]
    assert not any(tok.is_loc(i) for i in tok.encode("<loc0032>"))  # no 33rd bin
    # Extending a model that has 32 bins with another count is refused, naming both counts.
    with pytest.raises(ValueError, match="32 <locNNNN> pieces, not the 1024"):
        tk.add_special_pieces(tok.model_bytes, num_loc=1024)
    assert tk.add_special_pieces(tok.model_bytes, num_loc=NUM_LOC) == tok.model_bytes


def test_tasks_quantize_to_the_tokenizers_bins(setup):
    _, run, _, _ = setup
    tok = run.tokenizer
    box = [0.1, 0.26, 0.52, 0.999]
    row = tasks.format_task("aref", tok, max_len=24, phrase="red circle", box=box)
    locs = [int(i) for i in row.targets if tok.is_loc(i)]
    assert [i - tok.loc_start for i in locs] == [3, 8, 16, 31]  # floor(v * 32)
    back = tasks.decode_target("aref", row.targets[row.loss_mask > 0], tok).box
    np.testing.assert_allclose(back, (np.array([3, 8, 16, 31]) + 0.5) / NUM_LOC)
    gcap = tasks.format_task("gcap", tok, max_len=24, phrase="red circle", box=box)
    assert [int(i) for i in gcap.targets if tok.is_loc(i)] == locs


def test_evaluators_decode_and_read_out_in_the_tokenizers_bins(setup):
    root, run, params, eval_dir = setup
    from evaluation.evaluators import base

    ctx = base.StepContext(1, root / "run" / "checkpoints" / "1", run, params)
    shared: dict = {}
    rec = base.build("rec", evaluator_config("rec", eval_dir, splits=("val",), max_per_split=6,
                                             batch_size=4, loc_decodes=("argmax", "expected"),
                                             name="rec"), run, shared)
    m = dict(rec.run(ctx))
    assert m["val/malformed"] == 0.0 == m["val/malformed_expected"]  # constrained to 32 bins
    assert m["val/acc@0.5_lo"] <= m["val/acc@0.5"] <= m["val/acc@0.5_hi"]
    for name in ("rec_val_step1.jsonl", "rec_val_expected_step1.jsonl"):
        rows = [json.loads(x) for x in
                (root / "run" / "eval" / "predictions" / name).read_text().splitlines()]
        assert len(rows) == 6
        for r in rows:  # every coordinate a centre of one of the 32 bins
            k = np.asarray(r["pred_box"]) * NUM_LOC - 0.5
            np.testing.assert_allclose(k, np.round(k), atol=1e-4)
            assert np.all((k >= -1e-4) & (k <= NUM_LOC - 1 + 1e-4))
    readout = base.build("loc_readout", evaluator_config("loc_readout", eval_dir,
                                                         splits=("val",), max_per_split=6,
                                                         batch_size=4), run, shared)
    r = readout.readout(params, readout.splits["val"])
    assert r["truth"].max() < NUM_LOC and r["expected"].max() <= NUM_LOC - 1
    m = dict(readout.run(ctx))
    assert 0 <= m["val/mae_bins"] < NUM_LOC


def test_a_checkpoint_trained_with_other_bins_is_one_clear_error(setup):
    root, run, _, _ = setup
    from evaluation.train_run import CheckpointMismatch, TrainRun

    config = json.loads((root / "run" / "config.json").read_text())
    config["model"]["num_loc"] = 1024
    other = root / "other_run"
    other.mkdir(exist_ok=True)
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointMismatch, match="32 location bins .* num_loc=1024"):
        TrainRun.load(str(other))
