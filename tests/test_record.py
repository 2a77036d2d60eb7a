"""The record contract: round trips, validation naming the field, byte-compatibility with TensorFlow."""

import dataclasses
import io

import numpy as np
import pytest
from PIL import Image

from pipelines import record


def _jpeg(h: int = 12, w: int = 20) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 30, 40)).save(buf, "JPEG")
    return buf.getvalue()


def _record(**overrides) -> record.Record:
    fields = dict(
        key="sample-000001",
        source="web/shard-00000.tar:000001.jpg",
        image=_jpeg(),
        height=12,
        width=20,
        caption="a red star next to a blue circle, stock photo ☆",
        boxes=np.array([[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0]], np.float32),
        phrases=("red star", "blue circle"),
        scores=np.array([0.9, 0.45], np.float32),
        query_ranks=np.array([0, 3], np.int64),
        labeler="reference:groundtruth",
    )
    fields.update(overrides)
    return record.Record(**fields)


def test_round_trip_preserves_every_field():
    original = _record()
    decoded = record.decode(record.encode(original))
    assert decoded == original
    np.testing.assert_array_equal(decoded.boxes, original.boxes)
    assert decoded.caption.endswith("☆")
    assert decoded.schema_version == record.SCHEMA_VERSION


def test_round_trip_without_regions_and_with_empty_caption():
    original = _record(
        caption="",
        boxes=np.zeros((0, 4), np.float32),
        phrases=(),
        scores=np.zeros((0,), np.float32),
        query_ranks=np.zeros((0,), np.int64),
    )
    decoded = record.decode(record.encode(original))
    assert decoded == original
    assert decoded.num_regions == 0 and decoded.boxes.shape == (0, 4)


def test_encoding_is_deterministic():
    assert record.encode(_record()) == record.encode(_record())


def test_bytes_match_tensorflow_example():
    tf = pytest.importorskip("tensorflow")
    data = record.encode(_record())
    parsed = tf.train.Example.FromString(data)
    feat = parsed.features.feature
    assert feat["caption"].bytes_list.value[0].decode() == _record().caption
    np.testing.assert_allclose(feat["regions/bbox"].float_list.value, _record().boxes.reshape(-1))
    assert list(feat["regions/query_rank"].int64_list.value) == [0, 3]
    # TF's own serialization of the parsed message gives our bytes back exactly.
    assert parsed.SerializeToString(deterministic=True) == data
    # And a record built by TF decodes with our module.
    spec = {
        "regions/bbox": tf.io.VarLenFeature(tf.float32),
        "image/height": tf.io.FixedLenFeature([], tf.int64),
    }
    out = tf.io.parse_single_example(data, spec)
    assert int(out["image/height"]) == 12
    assert record.decode(parsed.SerializeToString()) == _record()


@pytest.mark.parametrize(
    "overrides, field, fragment",
    [
        (
            dict(boxes=np.array([[0.1, 0.2, 1.2, 0.6], [0, 0, 1, 1]], np.float32)),
            "regions/bbox",
            "outside [0, 1]",
        ),
        (
            dict(boxes=np.array([[-0.1, 0.2, 0.5, 0.6], [0, 0, 1, 1]], np.float32)),
            "regions/bbox",
            "outside [0, 1]",
        ),
        (
            dict(boxes=np.array([[0.6, 0.2, 0.5, 0.6], [0, 0, 1, 1]], np.float32)),
            "regions/bbox",
            "ymin > ymax",
        ),
        (
            dict(boxes=np.array([[0.1, 0.7, 0.5, 0.6], [0, 0, 1, 1]], np.float32)),
            "regions/bbox",
            "xmin > xmax",
        ),
        (
            dict(boxes=np.array([[0.1, np.nan, 0.5, 0.6], [0, 0, 1, 1]], np.float32)),
            "regions/bbox",
            "NaN",
        ),
        (dict(phrases=("red star",)), "regions/phrase", "1 entries but regions/bbox has 2"),
        (dict(scores=np.array([0.9], np.float32)), "regions/score", "1 entries"),
        (dict(query_ranks=np.array([0, 1, 2])), "regions/query_rank", "3 entries"),
        (dict(phrases=("red star", " ")), "regions/phrase", "empty"),
        (dict(image=b""), "image/encoded", "missing image"),
        (dict(height=0), "image/height", "positive"),
        (dict(key=""), "key", "empty"),
        (dict(schema_version=99), "schema_version", "not supported"),
    ],
)
def test_validation_names_the_field(overrides, field, fragment):
    bad = _record(**overrides)
    with pytest.raises(record.RecordError) as info:
        record.encode(bad)
    assert info.value.field == field
    assert fragment in str(info.value)
    assert field in str(info.value)


def test_decode_rejects_missing_field_and_garbage():
    data = record.encode(_record())
    from pipelines.example_proto import Example

    ex = Example.FromString(data)
    del ex.features.feature["image/encoded"]
    with pytest.raises(record.RecordError, match="image/encoded"):
        record.decode(ex.SerializeToString())
    with pytest.raises(record.RecordError, match="not a serialized tf.train.Example"):
        record.decode(b"\xff\xff\xff not a proto")


def test_decode_rejects_wrong_kind_and_ragged_boxes():
    from pipelines.example_proto import Example

    ex = Example.FromString(record.encode(_record()))
    ex.features.feature["regions/bbox"].float_list.value.append(0.5)
    with pytest.raises(record.RecordError, match="multiple of 4"):
        record.decode(ex.SerializeToString())
    ex = Example.FromString(record.encode(_record()))
    ex.features.feature["image/height"].bytes_list.value.append(b"12")
    with pytest.raises(record.RecordError, match="expected a int64_list"):
        record.decode(ex.SerializeToString())


def test_decode_without_check_returns_invalid_record_for_inspection():
    good = _record()
    bad = dataclasses.replace(good, boxes=np.array([[0.5, 0, 0.4, 1], [0, 0, 1, 1]], np.float32))
    from pipelines.example_proto import Example

    ex = Example.FromString(record.encode(good))
    ex.features.feature["regions/bbox"].float_list.value[:] = bad.boxes.reshape(-1).tolist()
    data = ex.SerializeToString()
    with pytest.raises(record.RecordError):
        record.decode(data)
    assert record.decode(data, check=False).boxes[0, 0] == pytest.approx(0.5)


def test_box_conversions():
    xywh = np.array([[10, 20, 30, 40]], np.float32)
    norm = record.boxes_from_xywh(xywh, height=100, width=200)
    np.testing.assert_allclose(norm, [[0.2, 0.05, 0.6, 0.2]], atol=1e-6)
    np.testing.assert_allclose(
        record.boxes_to_pixels(norm, 100, 200), [[10, 20, 40, 60]], atol=1e-4
    )


def test_shard_globs_expand_in_order(tmp_path):
    from pipelines import shards

    for name in ("b-1.array_record", "a-2.array_record", "a-1.array_record", "c.txt"):
        (tmp_path / name).write_bytes(b"")
    a, b = str(tmp_path / "a-*.array_record"), str(tmp_path / "b-*.array_record")
    # Sorted within a glob, globs in the order given; a plain path is kept when it exists.
    assert shards.expand(f"{b}, {a}") == [str(tmp_path / n) for n in
                                         ("b-1.array_record", "a-1.array_record",
                                          "a-2.array_record")]
    assert shards.expand([str(tmp_path / "c.txt")]) == [str(tmp_path / "c.txt")]
    with pytest.raises(shards.NoShards, match="no shards match .*nothing"):
        shards.expand([a, str(tmp_path / "nothing-*")])
    with pytest.raises(shards.NoShards, match="no shard glob given"):
        shards.expand(" , ")
