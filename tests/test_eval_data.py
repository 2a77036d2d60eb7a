"""REC data readers: the restricted unpickler, the official and JSON layouts, bad entries counted."""

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evaluation.data import safe_pickle
from evaluation.data.refcoco import coco_box_to_normalized, load_rec
from evaluation.images import load_image, to_model_range


class _Exploit:
    """Unpickling this calls os.system: what a tampered refs file could do."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps([{"ref_id": 1}, _Exploit(str(marker))], protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="system"):
        safe_pickle.safe_loads(payload)
    assert not marker.exists()
    # Sanity check of the test itself: the normal unpickler would have run the command.
    pickle.loads(payload)
    assert marker.exists()


def test_restricted_unpickler_loads_refs_style_data():
    refs = [{"ref_id": 0, "ann_id": 7, "image_id": 3, "split": "testA", "category_id": 1,
             "file_name": "COCO_train2014_000000000003_7.jpg", "sent_ids": [0, 1],
             "sentences": [{"sent": "man on left", "raw": "Man on left", "sent_id": 0,
                            "tokens": ["man", "on", "left"]}],
             "extra": {1.5, 2}, "frozen": frozenset({"a"}), "tuple": (1, None, True, b"x")}]
    for protocol in (0, 2, pickle.HIGHEST_PROTOCOL):
        assert safe_pickle.safe_loads(pickle.dumps(refs, protocol=protocol)) == refs


def _write_official(root: Path) -> None:
    """A RefCOCO-layout dir: refs(unc).p (pickle), instances.json, images/."""
    (root / "images").mkdir(parents=True)
    for i, (w, h) in enumerate([(200, 100), (64, 64)], start=1):
        Image.new("RGB", (w, h), (i * 40, 0, 0)).save(root / "images" / f"img{i}.jpg")
    instances = {
        "images": [{"id": 1, "file_name": "img1.jpg", "width": 200, "height": 100},
                   {"id": 2, "file_name": "img2.jpg", "width": 64, "height": 64}],
        "annotations": [
            {"id": 10, "image_id": 1, "bbox": [20, 10, 100, 50], "category_id": 1},
            {"id": 11, "image_id": 2, "bbox": [40, 40, 60, 10], "category_id": 1},  # overhangs
            {"id": 12, "image_id": 2, "bbox": [0, 0, 32, 32], "category_id": 1},
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    (root / "instances.json").write_text(json.dumps(instances))

    def ref(ref_id, ann_id, image_id, split, *sents):
        return {"ref_id": ref_id, "ann_id": ann_id, "image_id": image_id, "split": split,
                "file_name": f"img{image_id}_{ann_id}.jpg", "category_id": 1,
                "sentences": [{"sent": s, "raw": s, "tokens": s.split()} for s in sents]}

    refs = [ref(0, 10, 1, "val", "the thing", "left thing"), ref(1, 11, 2, "val", "bad box"),
            ref(2, 12, 99, "val", "unknown image"), ref(3, 12, 2, "testA", "corner thing"),
            ref(4, 77, 2, "val", "unknown annotation")]
    (root / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    (root / "refs.json").write_text(json.dumps(refs))


@pytest.mark.parametrize("refs_name", ["refs(unc).p", "refs.json"])
def test_official_and_json_layouts_load_and_count_problems(tmp_path, refs_name):
    _write_official(tmp_path)
    data = load_rec(str(tmp_path / refs_name), str(tmp_path / "instances.json"),
                    str(tmp_path / "images"))
    assert [e.sentence for e in data.split("val")] == ["the thing", "left thing"]
    assert data.split("val")[0].box == pytest.approx((0.1, 0.1, 0.6, 0.6))
    assert data.split("testA")[0].box == pytest.approx((0.0, 0.0, 0.5, 0.5))
    assert data.split("val")[0].image_path.endswith("img1.jpg")  # from instances, not the ref
    assert dict(data.problems) == {"box_outside_image": 1, "unknown_image_id": 1,
                                   "unknown_annotation_id": 1}


def test_box_conversion_slack_and_degenerate():
    hw = dict(height=50, width=100)
    assert coco_box_to_normalized([0, 0, 100.5, 50], **hw) == (0.0, 0.0, 1.0, 1.0)  # overhang
    assert coco_box_to_normalized([10, 5, 20, 40], **hw) == (0.1, 0.1, 0.9, 0.3)
    assert coco_box_to_normalized([0, 0, 0, 10], **hw) is None
    assert coco_box_to_normalized([-5, 0, 10, 10], **hw) is None


def test_sample_corpus_layout(tmp_path):
    from eval_fixtures import make_corpus

    eval_dir = make_corpus(tmp_path, num_eval=12)
    data = load_rec(str(eval_dir / "refs.json"), str(eval_dir / "instances.json"),
                    str(eval_dir / "images"))
    assert data.examples and not data.problems
    for e in data.examples:
        assert 0 <= e.box[0] < e.box[2] <= 1 and 0 <= e.box[1] < e.box[3] <= 1


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("shape", [(90, 140), (300, 200)])  # bilinear and area-averaging regimes
def test_eval_preprocessing_matches_trainer(tmp_path, fast, shape):
    preprocess = pytest.importorskip("training.preprocess")
    data = pytest.importorskip("training.data")
    assert data.default_config().fast_resize  # the loader's default, which eval follows
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (*shape, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    ours = to_model_range(load_image(str(tmp_path / "a.png"), 48, fast=fast))
    feats = {"image": preprocess.decode_image((tmp_path / "a.png").read_bytes()),
             "boxes": np.zeros((0, 4), np.float32), "phrases": (), "caption": ""}
    theirs = preprocess.ValueRange()(preprocess.Resize(48, fast=fast)(feats))["image"]
    np.testing.assert_allclose(ours, theirs, atol=1e-6)
