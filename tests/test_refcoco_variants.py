"""Every official RefCOCO-family variant (refcoco unc/google, refcoco+ unc, refcocog umd/google)
loads from the official layout with its split names; a wrong split and a bad refs pickle are one
readable line, from the loader and from evaluation/run.py."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
from PIL import Image

from evaluation.configs import sample
from evaluation.data import refcoco_variants as rv
from evaluation.data.refcoco import RefsFileError, load_rec
from evaluation.run import fill_paths

_IMAGES = {1: (64, 48), 2: (48, 64), 3: (40, 40)}


def _ref(ref_id: int, split: str) -> dict:
    """One ref in the official field layout (lichengunc/refer's refs(*).p)."""
    image_id = 1 + ref_id % 3
    ann_id = 100 + image_id
    sents = [f"the thing number {ref_id}", f"object {ref_id} on the left"]
    return {"ref_id": ref_id, "ann_id": ann_id, "image_id": image_id, "split": split,
            "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg", "category_id": 1,
            "sent_ids": [2 * ref_id, 2 * ref_id + 1],
            "sentences": [{"tokens": s.split(), "raw": s.capitalize(), "sent_id": 2 * ref_id + k,
                           "sent": s} for k, s in enumerate(sents)]}


def write_official(data_dir: Path) -> Path:
    """<data_dir>/<dataset>/refs(<partition>).p + instances.json for every variant, images/."""
    images = data_dir / "images"
    images.mkdir(parents=True, exist_ok=True)
    inst = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "thing"}]}
    for image_id, (w, h) in _IMAGES.items():
        name = f"COCO_train2014_{image_id:012d}.jpg"
        Image.new("RGB", (w, h), (50 * image_id, 90, 20)).save(images / name)
        inst["images"].append({"id": image_id, "file_name": name, "width": w, "height": h})
        inst["annotations"].append({"id": 100 + image_id, "image_id": image_id,
                                    "bbox": [4, 6, w / 2, h / 2], "category_id": 1})
    for (dataset, partition), splits in rv.SPLITS.items():
        folder = data_dir / dataset
        folder.mkdir(exist_ok=True)
        (folder / "instances.json").write_text(json.dumps(inst))
        refs = [_ref(i, split) for i, split in enumerate(s for s in splits for _ in range(4))]
        # Protocol 2, as the official (Python 2) files are written.
        (folder / f"refs({partition}).p").write_bytes(pickle.dumps(refs, protocol=2))
    return data_dir


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_official(tmp_path_factory.mktemp("refer") / "data")


def _evaluators(arg: str, data_dir: Path):
    c = sample.get_config(f"{arg},data_dir={data_dir}")
    values = {"data_dir": str(data_dir), "workdir": "W"}
    values["images_dir"] = c.images_dir.format(**values)
    for ev in c.evaluators.values():
        fill_paths(ev, values)
    return c.evaluators


@pytest.mark.parametrize("dataset,partition", sorted(rv.SPLITS))
def test_every_variant_loads_with_its_split_names(data_dir, dataset, partition):
    evs = _evaluators(f"refcoco,dataset={dataset},partition={partition}", data_dir)
    assert set(evs) == {"rec", "rec_transfer", "loc_readout"}
    want = rv.SPLITS[(dataset, partition)]
    assert evs.rec_transfer.train_split == "train"
    for ev in evs.values():
        assert ev.refs == f"{data_dir}/{dataset}/refs({partition}).p"
        assert ev.instances == f"{data_dir}/{dataset}/instances.json"
        assert tuple(ev.splits) == tuple(s for s in want if s != "train")
    data = load_rec(evs.rec_transfer.refs, evs.rec_transfer.instances, evs.rec_transfer.images,
                    splits=("train", *evs.rec_transfer.splits))
    assert not data.problems
    for split in want:
        assert len(data.split(split)) == 8  # 4 refs x 2 sentences
    assert data.split(want[0])[0].box == pytest.approx((6 / 48, 4 / 64, 30 / 48, 36 / 64))


def test_default_partitions_and_bad_choices():
    assert rv.resolve("refcocog") == ("refcocog", "umd")
    assert rv.resolve("refcoco+") == ("refcoco+", "unc")
    with pytest.raises(ValueError, match="has no partition 'umd'"):
        sample.get_config("refcoco,dataset=refcoco,partition=umd")
    with pytest.raises(ValueError, match="unknown dataset"):
        sample.get_config("refcoco,dataset=refclef")


def test_wrong_split_is_one_line(data_dir):
    evs = _evaluators("refcoco,dataset=refcocog,partition=google,splits=val+testA", data_dir)
    with pytest.raises(ValueError) as e:
        load_rec(evs.rec.refs, evs.rec.instances, evs.rec.images, splits=tuple(evs.rec.splits))
    msg = str(e.value)
    assert "\n" not in msg and "refs(google).p" in msg
    assert "no split 'testA'" in msg and "its splits are train, val" in msg


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("kind", ["truncated", "corrupt", "malicious", "not_refs"])
def test_bad_refs_pickle_is_one_line_naming_the_file(tmp_path, kind):
    good = pickle.dumps([_ref(0, "val")], protocol=2)
    payload = {"truncated": good[: len(good) // 2], "corrupt": b"\x80\x02garbage" + good[5:],
               "malicious": pickle.dumps([_ref(0, "val"), _Exploit()], protocol=2),
               "not_refs": pickle.dumps({"val": 1}, protocol=2)}[kind]
    path = tmp_path / "refs(unc).p"
    path.write_bytes(payload)
    write_official(tmp_path)
    with pytest.raises(RefsFileError) as e:
        load_rec(str(path), str(tmp_path / "refcoco/instances.json"), str(tmp_path / "images"))
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_run_py_wrong_split_and_bad_pickle_are_one_line(tmp_path):
    from eval_fixtures import make_workdir, run_eval

    from model import tokenizer as tk

    data = write_official(tmp_path / "data")
    tok_path = tmp_path / "tok.model"
    tok = tk.save(tk.train_model(["the thing number one", "object on the left", "cap", "aref",
                                  "gcap", ":"] * 20, vocab_size=1400), str(tok_path))
    workdir = tmp_path / "run"
    make_workdir(workdir, tok_path, tok.vocab_size, steps=(1,))
    r = run_eval(workdir, data, variant="refcoco,dataset=refcocog,partition=umd,splits=testB")
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    (line,) = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert "no split 'testB'" in line and "its splits are test, train, val" in line
    (data / "refcoco+" / "refs(unc).p").write_bytes(
        pickle.dumps([_ref(0, "val"), _Exploit()], protocol=2))
    r = run_eval(workdir, data, variant="refcoco,dataset=refcoco+")
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    (line,) = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert "refcoco+/refs(unc).p is not a RefCOCO refs file" in line and "posix.system" in line
