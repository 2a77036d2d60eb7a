"""Issue #17: real photos through every stage with the real commands (slow).

../shared/data/coco-mini (80 COCO photos) with four photos turned into the awkward cases web data
has: greyscale, CMYK, an EXIF-rotated file (stored sideways, tag 6) and an odd size (333 x 501,
its boxes scaled) -> pipelines/convert.py -> annotate --labeler reference -> train_tokenizer ->
a short `tiny` training run -> RefCOCO-format refs built from the instances -> evaluation/run.py
`:refcoco`. It checks the path, not accuracy (80 photos teach nothing).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import annotate_fixtures as af
import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(*cmd: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    r = subprocess.run([sys.executable, *cmd], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, f"{cmd[0]} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r.stderr


def _awkward_copy(coco: Path, out: Path) -> dict[str, str]:
    """A copy of coco-mini with four photos made awkward; returns {file name: kind}."""
    shutil.copytree(coco / "train2017", out / "images")
    shutil.copytree(coco / "annotations", out / "annotations")
    inst_path = out / "annotations/instances_train2017.json"
    inst = json.loads(inst_path.read_text())
    names = sorted(im["file_name"] for im in inst["images"])
    kinds = dict(zip(names[:4], ["greyscale", "cmyk", "exif", "odd_size"], strict=True))
    for name, kind in kinds.items():
        path = out / "images" / name
        im = Image.open(path).convert("RGB")
        if kind == "greyscale":
            im.convert("L").save(path, "JPEG", quality=90)
        elif kind == "cmyk":
            im.convert("CMYK").save(path, "JPEG", quality=90)
        elif kind == "exif":  # stored sideways; the tag turns it upright (the JSON's size)
            exif = Image.Exif()
            exif[0x0112] = 6
            im.transpose(Image.Transpose.ROTATE_90).save(path, "JPEG", quality=90,
                                                         exif=exif.tobytes())
        else:
            entry = next(e for e in inst["images"] if e["file_name"] == name)
            sx, sy = 333 / entry["width"], 501 / entry["height"]
            im.resize((333, 501)).save(path, "JPEG", quality=90)
            entry.update(width=333, height=501)
            for a in inst["annotations"]:
                if a["image_id"] == entry["id"]:
                    x, y, w, h = a["bbox"]
                    a["bbox"] = [x * sx, y * sy, w * sx, h * sy]
    inst_path.write_text(json.dumps(inst))
    return kinds


def test_coco_mini_through_every_stage(coco_mini, tmp_path):
    kinds = _awkward_copy(coco_mini, tmp_path / "coco")
    coco = tmp_path / "coco"
    _run("pipelines/convert.py", "--format", "coco", "--images", str(coco / "images"),
         "--instances", str(coco / "annotations/instances_train2017.json"),
         "--captions", str(coco / "annotations/captions_train2017.json"),
         "--output", str(tmp_path / "web"), "--shard_size", "40")
    _run("pipelines/annotate.py", "--input", str(tmp_path / "web/*.tar"), "--output",
         str(tmp_path / "shards"), "--labeler", "reference", "--min_box_size", "0",
         "--store_max_side", "256")
    manifest = json.loads((tmp_path / "shards/manifest.json").read_text())
    assert manifest["counts"]["written"] == 80 and manifest["counts"]["balanced"]
    recs = {r.key: r for r in af.load_shards(tmp_path / "shards")}
    for name, kind in kinds.items():
        rec = recs[name.split(".")[0]]
        image = Image.open(io.BytesIO(rec.image))
        assert image.mode == "RGB", kind
        original = Image.open(coco_mini / "train2017" / name)
        if kind == "exif":  # stored upright: the original's orientation, not the file's
            assert (rec.width > rec.height) == (original.width > original.height)
        if kind == "greyscale":
            px = np.asarray(image, np.int16)
            assert np.abs(px[..., 0] - px[..., 1]).max() <= 12  # still grey after JPEG
    _run("pipelines/train_tokenizer.py", "--input", str(tmp_path / "shards/train-*.array_record"),
         "--output", str(tmp_path / "tok.model"), "--vocab_size", "1500", "--model_type", "bpe")
    workdir = tmp_path / "locca"
    _run("training/run.py", "--config=training/configs/locca.py:tiny", f"--workdir={workdir}",
         f"--config.data.train_glob={tmp_path}/shards/train-*.array_record",
         f"--config.tokenizer={tmp_path}/tok.model", "--config.total_steps=6",
         "--config.batch_size=8", "--config.log_every=3", "--config.checkpoint.interval=6",
         "--config.progress_bar=False")
    assert (workdir / "DONE").read_text().strip() == "6"
    _run("evaluation/data/refs_from_instances.py", "--instances",
         str(coco / "annotations/instances_train2017.json"), "--output", str(tmp_path / "eval"))
    _run("evaluation/run.py", f"--workdir={workdir}",
         f"--config=evaluation/configs/sample.py:refcoco,data_dir={tmp_path / 'eval'},"
         f"images_dir={coco / 'images'},batch_size=8,max_per_split=8,transfer_steps=5")
    rows = [json.loads(x) for x in (workdir / "eval/results.jsonl").read_text().splitlines()]
    got = {(r["evaluator"], r["split"]) for r in rows}
    for evaluator in ("rec", "rec_transfer", "loc_readout"):
        for split in ("val", "testA", "testB"):
            assert (evaluator, split) in got, (evaluator, split, sorted(got))
    transfer = {r["metric"]: r["value"] for r in rows
                if r["evaluator"] == "rec_transfer" and r["split"] == "train"}
    assert transfer["examples"] > 0  # the decoder trained on the variant's train split
