"""`--labeler grit`: GRIT's noun_chunks / ref_exps (img2dataset parquet and webdataset layouts)
become regions exactly; bad chunks are counted by reason and never fail the job."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import annotate_fixtures as af
import numpy as np
import pytest
from PIL import Image

from pipelines import annotate
from pipelines.labelers import grit

CAPTION = "a dog sitting on a red sofa next to a lamp"


def _span(text: str) -> list[int]:
    start = CAPTION.index(text)
    return [start, start + len(text)]


# [start, end, x_min, y_min, x_max, y_max, score], as on the zzliang/GRIT dataset card.
GOOD = [_span("a dog") + [0.1, 0.2, 0.4, 0.9, 0.81],
        _span("a red sofa") + [0.45, 0.5, 0.95, 0.95, 0.66],
        _span("a lamp") + [0.0, 0.0, 0.2, 0.6, 0.52]]
BAD = [[30, 99, 0.1, 0.1, 0.2, 0.2, 0.9],      # offsets_out_of_range
       [5, 6, 0.1, 0.1, 0.2, 0.2, 0.9],        # empty_span (" ")
       [0, 5, 0.1, 0.1, 1.4, 0.2, 0.9],        # box_outside_unit
       [0, 5, float("nan"), 0.1, 0.2, 0.2, 0.9],  # box_not_finite
       [0, 5, 0.5, 0.1, 0.2, 0.2, 0.9],        # box_inverted
       [0, 5, 0.1]]                            # malformed_chunk
REF = [_span("a dog sitting on a red sofa") + [0.1, 0.2, 0.95, 0.95, 0.7]]


def _jpeg(index: int) -> bytes:
    return af.jpeg(Image.new("RGB", (160, 120), (40 * index, 90, 160)))


def _meta(index: int) -> dict:
    return {"key": f"{index:09d}", "caption": CAPTION, "url": f"https://x.invalid/{index}.jpg",
            "width": 160, "height": 120, "status": "success", "error_message": None,
            "noun_chunks": GOOD + BAD if index == 0 else GOOD[:1], "ref_exps": REF,
            "clip_similarity_vitb32": 0.3}


def _webdataset(path: Path) -> Path:
    with tarfile.open(path, "w") as tar:
        for i in range(2):
            af.add_member(tar, f"{i:09d}.jpg", _jpeg(i))
            af.add_member(tar, f"{i:09d}.txt", CAPTION.encode())
            af.add_member(tar, f"{i:09d}.json", json.dumps(_meta(i)).encode())
    return path


def _parquet(path: Path) -> Path:
    """img2dataset's parquet output: one row per image, the image bytes in `jpg`, the
    --save_additional_columns (noun_chunks, ref_exps) as list columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for i in range(2):
        m = _meta(i)
        rows.append({k: m[k] for k in ("key", "caption", "url", "width", "height", "status",
                                       "error_message", "clip_similarity_vitb32")}
                    | {"jpg": _jpeg(i), "noun_chunks": m["noun_chunks"], "ref_exps": REF})
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _run(tmp_path: Path, inp: Path, fmt: str, *extra: str) -> tuple[dict, dict]:
    out = tmp_path / f"out-{fmt}"
    manifest = annotate.run(["--input", str(inp), "--output", str(out), "--input_format", fmt,
                             "--labeler", "grit", "--num_shards", "1", *extra])
    return manifest, {r.key: r for r in af.load_shards(out)}


@pytest.mark.parametrize("fmt", ["webdataset", "parquet"])
def test_grit_chunks_become_regions_exactly(tmp_path: Path, fmt: str):
    inp = (_webdataset(tmp_path / "grit.tar") if fmt == "webdataset"
           else _parquet(tmp_path / "grit.parquet"))
    manifest, recs = _run(tmp_path, inp, fmt, "--score_threshold", "0.5", "--nms_iou", "1.0")
    rec = recs["000000000"]
    order = np.argsort([-c[6] for c in GOOD])  # regions come best score first
    assert rec.phrases == tuple(CAPTION[GOOD[i][0]:GOOD[i][1]] for i in order)
    assert rec.phrases[0] == "a dog"
    want = np.float32([[GOOD[i][3], GOOD[i][2], GOOD[i][5], GOOD[i][4]] for i in order])
    np.testing.assert_array_equal(rec.boxes, want)
    np.testing.assert_array_equal(rec.scores, np.float32([GOOD[i][6] for i in order]))
    assert rec.labeler.startswith("grit:noun_chunks@") and manifest["labeler"] == rec.labeler
    c = manifest["counts"]
    assert c["read"] == 2 and c["written"] == 2 and c["balanced"]
    assert manifest["counts"]["notes"] == {f"grit/{r}": 1 for r in (
        "offsets_out_of_range", "empty_span", "box_outside_unit", "box_not_finite",
        "box_inverted", "malformed_chunk")}


def test_grit_shared_postprocessing_and_ref_exps(tmp_path: Path):
    inp = _webdataset(tmp_path / "grit.tar")
    _, recs = _run(tmp_path, inp, "webdataset", "--score_threshold", "0.6", "--max_boxes", "1")
    assert recs["000000000"].phrases == ("a dog",)  # 0.81 kept; the cap of 1 drops 0.66
    _, recs = _run(tmp_path, inp, "webdataset", "--grit_spans", "ref_exps")
    assert recs["000000001"].phrases == ("a dog sitting on a red sofa",)
    assert recs["000000001"].labeler.startswith("grit:ref_exps@")


def test_chunk_region_rules():
    assert grit.chunk_region([0, 5, 0, 0, 1.0000001, 1, 0.5], CAPTION)[1] == [0, 0, 1, 1]
    assert grit.chunk_region([0.5, 5, 0, 0, 1, 1, 0.5], CAPTION) == "offsets_out_of_range"
    assert grit.chunk_region("garbage", CAPTION) == "malformed_chunk"
    assert grit.chunk_region([0, 5, 0, 0, 1, 1, float("inf")], CAPTION) == "box_not_finite"
    with pytest.raises(ValueError):
        grit.GritLabeler("nouns")


def test_parquet_reader_keeps_grit_columns(tmp_path: Path):
    from pipelines.sources import SourceConfig, read_parquet

    path = _parquet(tmp_path / "g.parquet")
    with open(path, "rb") as f:
        items = list(read_parquet(str(path), io.BytesIO(f.read()), SourceConfig("parquet")))
    assert items[1].metadata["noun_chunks"] == [[float(v) for v in c] for c in GOOD[:1]]
    assert items[1].metadata["caption"] == CAPTION
