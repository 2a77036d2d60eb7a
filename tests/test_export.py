"""The export command (evaluation/export.py) on a `tiny` run trained here (conftest.tiny_run):
both formats with their model cards, and the round trip export -> init of a new training run /
the frozen-encoder features -> the same encoder outputs, for both formats."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest
import yaml

from evaluation import export, model_card
from evaluation.train_run import TrainRun

RESULTS = [  # step 2 is exported; the interval comes as row fields or as sibling rows
    {"step": 2, "evaluator": "rec", "split": "val", "metric": "acc@0.5", "value": 0.25,
     "acc@0.5_lo": 0.125, "acc@0.5_hi": 0.375},
    {"step": 2, "evaluator": "captioning", "split": "val", "metric": "cider", "value": 0.5},
    {"step": 2, "evaluator": "captioning", "split": "val", "metric": "cider_lo", "value": 0.3},
    {"step": 2, "evaluator": "captioning", "split": "val", "metric": "cider_hi", "value": 0.7},
    {"step": 2, "evaluator": "gcap", "split": "val", "metric": "exact_match", "value": 0.0625},
    {"step": 1, "evaluator": "rec", "split": "val", "metric": "acc@0.5", "value": 0.875},
]


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory) -> tuple[Path, Path]:
    """(workdir copy with results and a shards manifest, its export directory)."""
    root = tmp_path_factory.mktemp("export")
    workdir = root / "run"
    shutil.copytree(tiny_run, workdir)
    (workdir / "eval").mkdir(exist_ok=True)
    (workdir / "eval" / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RESULTS))
    (root / "shards").mkdir()
    (root / "shards" / "manifest.json").write_text(json.dumps({
        "counts": {"read": 120, "written": 117, "dead_lettered": 2, "filtered": 1},
        "boxes": {"total": 351, "mean_per_image": 3.0}, "labeler": "reference"}))
    config = json.loads((workdir / "config.json").read_text())
    config["data"]["train_glob"] = str(root / "shards" / "train-*.array_record")
    (workdir / "config.json").write_text(json.dumps(config))
    export.main(["--workdir", str(workdir), "--output", str(root / "out"),
                 "--license", "apache-2.0"])
    return workdir, root / "out"


def test_both_formats_and_their_cards(exported):
    workdir, out = exported
    assert {p.name for p in (out / "transformers").iterdir()} == {
        "config.json", "model.safetensors", "preprocessor_config.json", "README.md"}
    with np.load(out / "big_vision" / "encoder.npz") as ours, \
            np.load(workdir / "encoder.npz") as trainers:  # the trainer's export, same step
        assert set(ours.files) == set(trainers.files)
        for k in ours.files:
            np.testing.assert_array_equal(ours[k], trainers[k])
    for fmt, library in (("transformers", "transformers"), ("big_vision", "big_vision")):
        text = (out / fmt / "README.md").read_text()
        front = yaml.safe_load(text.split("---\n")[1])
        assert front["library_name"] == library and front["license"] == "apache-2.0"
        assert "locca" in front["tags"]
        body = text.split("---\n", 2)[2]
        assert "| rec | val | acc@0.5 | 0.2500 | [0.125, 0.375] |" in body
        assert "| captioning | val | cider | 0.5000 | [0.300, 0.700] |" in body
        assert "| gcap | val | exact_match | 0.0625 | - |" in body
        assert "0.875" not in body and "cider_lo" not in body  # other steps; interval rows
        assert "120 images read, 117 records written, 2 dead-lettered, 1 filtered" in body
        assert "Exported step 2 of 2, batch 4" in body and "## Limitations" in body
        assert str(out / fmt) in body  # the loading examples name this export


def test_card_without_results_or_manifest_says_so(tiny_run):
    text = model_card.render(model_card.gather(str(tiny_run), 2), "transformers")
    assert "No evaluation results at this step" in text and "was not reachable" in text


def _vit_outputs(run: TrainRun, vit_params, images: np.ndarray) -> np.ndarray:
    from evaluation.evaluators.features import encoder_fn

    return np.asarray(encoder_fn(run.model_config, len(images), {})(vit_params, images))


def _init_from(workdir: Path, encoder: str):
    """params["img"] of a new training run initialised from `encoder` (train_state.init_state,
    the trainer's own init, with --config.init.encoder_npz=encoder)."""
    from model.locca import LocCa, init_params
    from training import optim, sharding
    from training import train_state as ts

    c = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
    c.init.encoder_npz = encoder
    model = LocCa(c.model)
    shapes = jax.eval_shape(lambda r: init_params(model, r), jax.random.key(0))
    tx, _ = optim.make_optimizer(c.optim, c.total_steps, shapes)
    _, shardings = ts.state_shardings(model, tx, sharding.make_mesh(c.mesh), c.sharding)
    return jax.device_get(ts.init_state(model, tx, shardings, 7, c.init)["params"]["img"])


@pytest.mark.parametrize("fmt", [pytest.param("big_vision/encoder.npz", marks=pytest.mark.slow),
                                 "transformers"])
def test_round_trip_export_init_and_transfer_give_the_same_encoder(exported, coco_mini, fmt):
    from evaluation import watch
    from evaluation.evaluators import base
    from evaluation.evaluators.features import features
    from evaluation.images import ImageCache

    workdir, out = exported
    run = TrainRun.load(str(workdir))
    ctx = base.StepContext(2, watch.step_path(str(workdir), 2), run)
    paths = [str(p) for p in sorted((coco_mini / "train2017").glob("*.jpg"))[:3]]
    images = ImageCache(int(run.model_config.image_size))
    reference = features("checkpoint", paths, ctx, {}, images, batch_size=4)
    initialised = _init_from(workdir, str(out / fmt))
    jax.tree.map(np.testing.assert_array_equal, initialised, jax.device_get(ctx.params["img"]))
    np.testing.assert_array_equal(_vit_outputs(run, initialised, images.batch(paths)), reference)
    transfer = features(str(out / fmt), paths, ctx, {}, images, batch_size=4)
    np.testing.assert_array_equal(transfer, reference)
