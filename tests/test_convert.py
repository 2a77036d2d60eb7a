"""pipelines/convert.py: COCO and Visual Genome in their published layouts -> webdataset tars that
the annotate stage reads unchanged; boxes and phrases survive exactly; bad entries are counted."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines import convert
from pipelines.converters import stream_json


def _jpeg(path: Path, w: int, h: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), (120, 80, 40)).save(path, "JPEG")


def _samples(out: Path) -> dict[str, dict]:
    """key -> {"json": metadata, "txt": caption, "ext": image extension}."""
    got: dict[str, dict] = {}
    for shard in sorted(out.glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                data = tar.extractfile(m).read()
                entry = got.setdefault(key, {})
                if ext == "json":
                    entry["json"] = json.loads(data)
                elif ext == "txt":
                    entry["txt"] = data.decode()
                else:
                    entry["ext"] = ext
    return got


@pytest.fixture
def coco(tmp_path: Path) -> Path:
    """A COCO-format dataset as the official files lay it out: images/, instances_val2017.json
    (images, annotations with [x, y, w, h] pixel bbox, categories) and captions_val2017.json."""
    root = tmp_path / "coco"
    for name, (w, h) in {"000000000001.jpg": (640, 480), "000000000002.jpg": (320, 200),
                         "000000000003.jpg": (100, 100)}.items():
        _jpeg(root / "val2017" / name, w, h)
    images = [{"id": 1, "file_name": "000000000001.jpg", "width": 640, "height": 480},
              {"id": 2, "file_name": "000000000002.jpg", "width": 320, "height": 200},
              {"id": 3, "file_name": "000000000003.jpg", "width": 100, "height": 100},
              {"id": 4, "file_name": "000000000004.jpg", "width": 100, "height": 100}]
    anns = [
        {"id": 10, "image_id": 1, "category_id": 25, "bbox": [10.5, 20.25, 100.0, 200.0],
         "iscrowd": 0, "area": 1.0},
        {"id": 11, "image_id": 1, "category_id": 1, "bbox": [0, 0, 640, 480], "iscrowd": 1},
        {"id": 12, "image_id": 1, "category_id": 25, "bbox": [600, 400, 100, 100], "iscrowd": 0},
        {"id": 13, "image_id": 2, "category_id": 1, "bbox": [1, 2, 3, float("nan")],
         "iscrowd": 0},
        {"id": 14, "image_id": 2, "category_id": 1, "bbox": [5, 5, 0, 10], "iscrowd": 0},
        {"id": 15, "image_id": 2, "category_id": 1, "bbox": [32.0, 20.0, 160.0, 100.0],
         "iscrowd": 0},
        {"id": 16, "image_id": 99, "category_id": 1, "bbox": [1, 1, 1, 1], "iscrowd": 0},
    ]
    cats = [{"id": 1, "name": "person", "supercategory": "person"},
            {"id": 25, "name": "giraffe", "supercategory": "animal"}]
    (root / "annotations").mkdir()
    (root / "annotations/instances_val2017.json").write_text(json.dumps(
        {"images": images, "annotations": anns, "categories": cats}))
    caps = [{"id": 7, "image_id": 1, "caption": "Two giraffes near a tree."},
            {"id": 3, "image_id": 1, "caption": "A giraffe eating leaves. "},
            {"id": 5, "image_id": 2, "caption": "People on a street"}]
    (root / "annotations/captions_val2017.json").write_text(json.dumps({"annotations": caps}))
    return root


def _coco_argv(root: Path, out: Path) -> list[str]:
    return ["--format", "coco", "--images", str(root / "val2017"), "--output", str(out),
            "--instances", str(root / "annotations/instances_val2017.json"),
            "--captions", str(root / "annotations/captions_val2017.json"), "--shard_size", "1"]


def test_coco_boxes_phrases_and_counts(coco: Path, tmp_path: Path):
    out = tmp_path / "web"
    report = convert.run(_coco_argv(coco, out))
    got = _samples(out)
    assert sorted(got) == ["000000000001", "000000000002"]
    one = got["000000000001"]
    assert one["txt"] == "A giraffe eating leaves."  # the first caption by id, stripped
    assert one["ext"] == "jpg" and one["json"]["box_source"] == "coco"
    (region,) = one["json"]["regions"]  # crowd and off-image boxes dropped
    x, y, w, h = 10.5, 20.25, 100.0, 200.0
    want = np.float32([y / 480, x / 640, (y + h) / 480, (x + w) / 640])
    np.testing.assert_array_equal(np.float32(region["bbox"]), want)
    assert region["phrase"] == "giraffe" and region["names"] == ["giraffe"]
    (two,) = got["000000000002"]["json"]["regions"]
    np.testing.assert_array_equal(np.float32(two["bbox"]), np.float32([0.1, 0.1, 0.6, 0.6]))
    c = report["counts"]
    assert c["read"] == 4 and c["written"] == 2 and c["balanced"]
    assert c["dead_by_reason"] == {"missing_image_file": 1, "no_caption": 1}  # images 4 and 3
    assert report["regions"]["dropped_by_reason"] == {
        "box_empty": 1, "box_not_finite": 1, "box_outside_image": 1, "crowd": 1,
        "unknown_image_id": 1}
    assert report["regions"]["written"] == 2
    assert len(report["shards"]) == 2  # --shard_size 1
    dead = [json.loads(line) for line in (out / "dead_letters.jsonl").read_text().splitlines()]
    assert sorted(d["reason"] for d in dead) == ["missing_image_file", "no_caption"]


def test_coco_missing_image_file_is_dead_lettered(coco: Path, tmp_path: Path):
    (coco / "val2017/000000000002.jpg").unlink()
    report = convert.run(_coco_argv(coco, tmp_path / "web"))
    assert report["counts"]["dead_by_reason"] == {"missing_image_file": 2, "no_caption": 1}
    assert report["counts"]["balanced"]


def test_converted_coco_annotates_unchanged(coco: Path, tmp_path: Path):
    import annotate_fixtures as af

    from pipelines import annotate

    convert.run(_coco_argv(coco, tmp_path / "web"))
    manifest = annotate.run(["--input", str(tmp_path / "web/*.tar"), "--output",
                             str(tmp_path / "shards"), "--num_shards", "1"])
    assert manifest["counts"]["written"] == 2 and manifest["counts"]["balanced"]
    recs = {r.key: r for r in af.load_shards(tmp_path / "shards")}
    # "giraffe" is in the caption; "people" names the person region (plural of "person").
    assert recs["000000000001"].phrases == ("giraffe",)
    assert recs["000000000002"].phrases == ("people",)
    np.testing.assert_allclose(recs["000000000002"].boxes, [[0.1, 0.1, 0.6, 0.6]], atol=1e-7)


@pytest.fixture
def vg(tmp_path: Path) -> Path:
    """Visual Genome as downloaded: image_data.json, region_descriptions.json (a list of
    {"id", "regions": [{region_id, image_id, phrase, x, y, width, height}]}), VG_100K*/ images."""
    root = tmp_path / "vg"
    _jpeg(root / "VG_100K/1.jpg", 800, 600)
    _jpeg(root / "VG_100K_2/2.jpg", 400, 300)
    infos = [{"image_id": 1, "url": "https://cs.stanford.edu/people/rak248/VG_100K/1.jpg",
              "width": 800, "height": 600, "coco_id": None, "flickr_id": 1},
             {"image_id": 2, "url": "https://cs.stanford.edu/people/rak248/VG_100K_2/2.jpg",
              "width": 400, "height": 300, "coco_id": None, "flickr_id": 2},
             {"image_id": 3, "url": "https://cs.stanford.edu/people/rak248/VG_100K/3.jpg",
              "width": 10, "height": 10}]
    (root / "image_data.json").write_text(json.dumps(infos))

    def reg(rid, iid, phrase, x, y, w, h):
        return {"region_id": rid, "image_id": iid, "phrase": phrase, "x": x, "y": y,
                "width": w, "height": h}

    entries = [
        {"id": 1, "regions": [reg(1, 1, "a man wearing a red hat", 100, 50, 200, 300),
                              reg(2, 1, "green grass on the ground", 0, 400, 800, 200),
                              reg(3, 1, "  ", 1, 1, 5, 5),
                              reg(4, 1, "sky", 10, 10, 5000, 10)]},
        {"id": 2, "regions": [reg(5, 2, "white dog.", 40, 30, 120, 90)]},
        {"id": 3, "regions": [reg(6, 3, "thing", 1, 1, 2, 2)]},
        {"id": 4, "regions": []},
    ]
    (root / "region_descriptions.json").write_text(json.dumps(entries, indent=1))
    return root


def test_visual_genome_regions_and_alt_text(vg: Path, tmp_path: Path):
    out = tmp_path / "web"
    report = convert.run(["--format", "vg", "--images", str(vg), "--output", str(out),
                          "--image_data", str(vg / "image_data.json"),
                          "--regions", str(vg / "region_descriptions.json")])
    got = _samples(out)
    assert sorted(got) == ["vg000000001", "vg000000002"]
    meta = got["vg000000001"]["json"]
    assert [r["phrase"] for r in meta["regions"]] == ["a man wearing a red hat",
                                                       "green grass on the ground"]
    np.testing.assert_array_equal(np.float32(meta["regions"][0]["bbox"]),
                                  np.float32([50 / 600, 100 / 800, 350 / 600, 300 / 800]))
    # Largest region first: grass (800x200) before the man (200x300).
    assert got["vg000000001"]["txt"] == "green grass on the ground. a man wearing a red hat"
    assert got["vg000000002"]["txt"] == "white dog"
    c = report["counts"]
    assert c["dead_by_reason"] == {"missing_image_file": 1, "unknown_image_id": 1}
    assert c["read"] == 4 and c["written"] == 2 and c["balanced"]
    assert report["regions"]["dropped_by_reason"] == {"box_outside_image": 1,
                                                      "empty_phrase": 1}


class _CountingReader(io.StringIO):
    """Records the most characters it has handed out when each element is yielded."""

    def __init__(self, text: str):
        super().__init__(text)
        self.handed = 0

    def read(self, n: int = -1) -> str:
        assert n > 0, "the stream reader must never ask for the whole file"
        chunk = super().read(n)
        self.handed += len(chunk)
        return chunk


def test_stream_json_reads_incrementally():
    items = [{"id": i, "regions": [{"phrase": "x" * (i % 7), "v": i / 3}]} for i in range(2000)]
    text = json.dumps(items)
    f = _CountingReader(text)
    seen = []
    for item in stream_json.iter_array(f, chunk_chars=4096):
        seen.append(item)
        if len(seen) == 10:
            assert f.handed <= 2 * 4096 < len(text)  # only the first chunk(s) were read
    assert seen == items
    for chunk in (1, 3, 64):  # elements and numbers split across chunk borders
        assert list(stream_json.iter_array(io.StringIO("[1, 23, {\"a\": [4.5]}, \"x,]\"]"),
                                           chunk)) == [1, 23, {"a": [4.5]}, "x,]"]


@pytest.mark.parametrize("text", ["{}", "[1, 2", "[1 2]", "[{\"a\": 1}, {\"b\""])
def test_stream_json_refuses_bad_input(text):
    with pytest.raises(stream_json.JsonStreamError):
        list(stream_json.iter_array(io.StringIO(text), 4))


@pytest.mark.parametrize("drop,message", [("--captions", "needs --captions"),
                                          ("--images", "required")])
def test_bad_flags_are_one_line(coco: Path, tmp_path: Path, drop: str, message: str, capsys):
    argv = _coco_argv(coco, tmp_path / "o")
    i = argv.index(drop)
    del argv[i:i + 2]
    with pytest.raises(SystemExit) as e:
        convert.run(argv)
    assert message in str(e.value) + capsys.readouterr().err


def test_corrupt_annotations_are_one_line(coco: Path, tmp_path: Path):
    (coco / "annotations/instances_val2017.json").write_text("{ not json")
    with pytest.raises(SystemExit) as e:
        convert.run(_coco_argv(coco, tmp_path / "o"))
    assert "cannot read the coco annotations" in str(e.value)


def _tagged(path: Path, stored: np.ndarray, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(path, "JPEG", quality=95, exif=exif.tobytes())


def _red_extent(image: np.ndarray) -> np.ndarray:
    """Normalized [ymin, xmin, ymax, xmax] of the red pixels."""
    red = (image[..., 0] > 150) & (image[..., 1] < 100) & (image[..., 2] < 100)
    ys, xs = np.nonzero(red)
    h, w = red.shape
    return np.array([ys.min() / h, xs.min() / w, (ys.max() + 1) / h, (xs.max() + 1) / w])


def test_exif_tagged_photos_get_upright_boxes(tmp_path: Path):
    """Each EXIF orientation, boxes drawn on the stored pixels (COCO's convention, the JSON size is
    the stored size), plus one whose JSON is upright: after convert + annotate the record's box
    sits on the red rectangle of the stored (upright) image."""
    import annotate_fixtures as af

    from pipelines import annotate

    root = tmp_path / "coco"
    (root / "img").mkdir(parents=True)
    images, anns, caps = [], [], []
    xywh = [12, 5, 30, 20]  # on the stored 80 x 50 pixels
    stored = np.full((50, 80, 3), 200, np.uint8)
    stored[5:25, 12:42] = (230, 20, 20)
    for i, orientation in enumerate([1, 2, 3, 4, 5, 6, 7, 8, 6], start=1):
        _tagged(root / "img" / f"{i}.jpg", stored, orientation)
        size, box = (80, 50), xywh
        if i == 9:  # a JSON that describes the upright image (50 x 80), box upright too
            size, box = (50, 80), [50 - 5 - 20, 12, 20, 30]
        images.append({"id": i, "file_name": f"{i}.jpg", "width": size[0], "height": size[1]})
        anns.append({"id": i, "image_id": i, "category_id": 1, "bbox": box, "iscrowd": 0})
        caps.append({"id": i, "image_id": i, "caption": "a red block"})
    (root / "i.json").write_text(json.dumps({"images": images, "annotations": anns,
                                             "categories": [{"id": 1, "name": "block"}]}))
    (root / "c.json").write_text(json.dumps({"annotations": caps}))
    convert.run(["--format", "coco", "--images", str(root / "img"), "--instances",
                 str(root / "i.json"), "--captions", str(root / "c.json"), "--output",
                 str(tmp_path / "web")])
    annotate.run(["--input", str(tmp_path / "web/*.tar"), "--output", str(tmp_path / "s")])
    recs = af.load_shards(tmp_path / "s")
    assert len(recs) == 9
    for rec in recs:
        image = np.asarray(Image.open(io.BytesIO(rec.image)).convert("RGB"))
        assert rec.phrases == ("block",), rec.key
        np.testing.assert_allclose(rec.boxes[0], _red_extent(image), atol=0.03,
                                   err_msg=f"image {rec.key}")
        assert (rec.height, rec.width) == image.shape[:2]
