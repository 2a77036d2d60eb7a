"""The predict command (evaluation/predict_cli.py) on real photos with a `tiny` checkpoint trained
here (conftest.tiny_run): every task writes JSON lines, PNGs and an escaped HTML page; bad files
are skipped and reported; REC boxes equal the REC evaluator's on the same checkpoint and inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from eval_fixtures import evaluator_config, make_corpus
from PIL import Image

from evaluation import predict_cli

NASTY = "<script>alert(1)</script> & the dog"


@pytest.fixture(scope="module")
def photo_dir(coco_mini, tmp_path_factory) -> Path:
    """Two real photos, a CMYK JPEG and a 1x1 PNG (both valid) and one corrupt file."""
    d = tmp_path_factory.mktemp("photos")
    photos = sorted((coco_mini / "train2017").glob("*.jpg"))[:2]
    for p in photos:
        shutil.copy(p, d / p.name)
    Image.open(photos[0]).convert("CMYK").save(d / "cmyk.jpg")
    Image.new("RGB", (1, 1), (200, 10, 10)).save(d / "one_pixel.png")
    (d / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    return d


def test_decode_images_reads_every_kind_and_reports_bad_files(tmp_path, photo_dir):
    rotated = Image.new("RGB", (64, 32), (0, 90, 0))
    exif = rotated.getexif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90 degrees: upright it is 32 wide
    rotated.save(tmp_path / "exif.jpg", exif=exif)
    Image.new("L", (40, 20), 128).save(tmp_path / "grey.webp")
    Image.new("RGB", (2000, 2000)).save(tmp_path / "big.png")  # over the cap below
    paths = [str(p) for p in sorted(photo_dir.iterdir())] + [
        str(tmp_path / n) for n in ("exif.jpg", "grey.webp", "big.png")]
    dec = predict_cli.decode_images(paths, 112, max_pixels=3_000_000)
    assert {Path(s["image"]).name: s["reason"] for s in dec.skipped} == {
        "corrupt.jpg": "truncated_image", "big.png": "image_too_large"}
    assert len(dec.model) + len(dec.skipped) == len(paths)
    assert all(m.shape == (112, 112, 3) and m.dtype == np.uint8 for m in dec.model.values())
    assert dec.sizes[str(tmp_path / "exif.jpg")] == (64, 32)
    assert dec.sizes[str(photo_dir / "one_pixel.png")] == (1, 1)


@pytest.mark.parametrize("task,flags", [
    ("caption", {}), ("refer", {"texts": [NASTY, "a cat"]}),
    pytest.param("ground", {"boxes": ["0.1,0.2,0.6,0.9"]}, marks=pytest.mark.slow)])
def test_predict_each_task_writes_json_pngs_and_escaped_html(tiny_run, photo_dir, tmp_path,
                                                             task, flags):
    images = predict_cli.expand_images([str(photo_dir / "*")])
    queries = predict_cli.build_queries(task, images, flags.get("texts", []),
                                        flags.get("boxes", []), None)
    out = tmp_path / "out"
    summary = predict_cli.predict(str(tiny_run), str(out), task, queries, batch_size=4,
                                  log=lambda _: None)
    assert (summary["images"], summary["processed"], summary["skipped"]) == (5, 4, 1)
    skipped = [json.loads(x) for x in (out / "skipped.jsonl").read_text().splitlines()]
    assert [(Path(s["image"]).name, s["reason"]) for s in skipped] == [
        ("corrupt.jpg", "truncated_image")]
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    per_image = max(1, len(flags.get("texts", [])) + len(flags.get("boxes", [])))
    assert len(rows) == summary["rows"] == 4 * per_image
    assert {Path(r["image"]).name for r in rows} == {
        p.name for p in photo_dir.iterdir() if p.name != "corrupt.jpg"}
    assert all(r["task"] == task and r["step"] == 2 and np.isfinite(r["logprob"]) for r in rows)
    if task == "refer":
        boxed = [r for r in rows if r["box"] is not None]
        assert boxed, "constrained decoding gives well-formed boxes"
        assert all(0 <= v <= 1 for r in boxed for v in r["box"]) and all(
            0 < r["score"] <= 1 for r in rows)
    else:
        assert all(isinstance(r["text"], str) for r in rows)
    pngs = sorted((out / "images").glob("*.png"))
    assert len(pngs) == 4 and all(Image.open(p).size[0] >= 256 for p in pngs)
    page = (out / "index.html").read_text()
    assert page.count("<figure>") == 4 and "corrupt.jpg" in page
    if task == "refer":
        assert "&lt;script&gt;" in page and "<script>" not in page


def test_rec_boxes_equal_the_rec_evaluator(tiny_run, tmp_path):
    from evaluation import watch
    from evaluation.evaluators import base
    from evaluation.train_run import TrainRun

    workdir = tmp_path / "run"
    shutil.copytree(tiny_run, workdir)  # the evaluator writes eval/predictions/ into it
    eval_dir = make_corpus(tmp_path / "corpus", num_eval=12)
    run = TrainRun.load(str(workdir))
    config = evaluator_config("rec", eval_dir, splits=("val",), prior_split="", batch_size=4,
                              max_per_split=8)
    evaluator = base.build("rec", config, run, {})
    ctx = base.StepContext(2, watch.step_path(str(workdir), 2), run)
    metrics = dict(evaluator.run(ctx))
    theirs = [json.loads(x) for x in
              (workdir / "eval" / "predictions" / "rec_val_step2.jsonl").read_text().splitlines()]
    assert len(theirs) == metrics["val/count"] >= 5  # more rows than a batch of 4
    queries = tmp_path / "queries.jsonl"
    queries.write_text("".join(json.dumps({"image": str(eval_dir / "images" / t["file_name"]),
                                           "text": t["sentence"]}) + "\n" for t in theirs))
    predict_cli.main(["--workdir", str(workdir), "--task", "refer", "--queries", str(queries),
                      "--batch_size", "4", "--output", str(tmp_path / "out")])
    ours = [json.loads(x) for x in (tmp_path / "out" / "predictions.jsonl").read_text()
            .splitlines()]
    assert [(Path(r["image"]).name, r["query"]) for r in ours] == [
        (t["file_name"], t["sentence"]) for t in theirs]
    assert [r["box"] for r in ours] == [t["pred_box"] for t in theirs]
    assert all(r["box"] is not None for r in ours)  # constrained: always a well-formed box


@pytest.mark.parametrize("argv,message", [
    (["--images", "/nonexistent/*.jpg"], "no image files match"),
    (["--images", "{photos}/*", "--task", "refer"], "needs --text"),
    (["--images", "{photos}/*", "--task", "ground", "--box", "0.5,0.1,0.2,0.9"], "y1 <= y2"),
    (["--images", "{photos}/*", "--beam_size", "0"], "must be >= 1"),
])
def test_bad_flags_are_one_line(tmp_path, photo_dir, argv, message):
    argv = [a.replace("{photos}", str(photo_dir)) for a in argv]
    with pytest.raises(SystemExit) as e:
        predict_cli.main(["--workdir", str(tmp_path), "--output", str(tmp_path / "o"), *argv])
    assert message in str(e.value) and "\n" not in str(e.value)
