"""The annotate stage's pieces on their own: decode, sources, post-processing, reference labeler,
shard sink, preview. Fast (no Beam pipeline); the end-to-end runs are in test_annotate_pipeline.py."""

import io
import json
import tarfile
from pathlib import Path

import annotate_fixtures as af
import numpy as np
import pytest
from PIL import Image

from pipelines import preview, shard_sink
from pipelines import record as record_lib
from pipelines.decode import BadInput, DecodeConfig, decode_image
from pipelines.labelers.base import Detections, LabelerInput
from pipelines.labelers.reference import ReferenceLabeler, normalize, score_matrix
from pipelines.postprocess import PostprocessConfig, iou_matrix, nms, select_regions
from pipelines.sources import DeadLetter, RawSample, SourceConfig, read_file

CFG = DecodeConfig()


def _noisy_jpeg() -> bytes:
    rng = np.random.default_rng(0)
    return af.jpeg(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)))


def _rgb(img_bytes: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(img_bytes)).convert("RGB"))


# ----------------------------------------------------------------------------------------- decode
@pytest.mark.parametrize(
    "data,reason",
    [
        (b"", "empty_image"),
        (b"this is not an image at all", "not_an_image"),
        (af.jpeg(Image.new("RGB", (64, 64), "red"))[:300], "truncated_image"),  # in headers
        (_noisy_jpeg()[:-400], "truncated_image"),  # in the scan data
        (af.png(Image.new("RGB", (64, 64), "red"))[:-30], "truncated_image"),
        (af.jpeg(Image.new("RGB", (4, 64), "red")), "image_too_small"),
    ],
)
def test_decode_rejects(data, reason):
    with pytest.raises(BadInput) as e:
        decode_image(data, CFG)
    assert e.value.reason == reason


def test_pixel_cap_checked_from_header():
    big = af.png(Image.new("L", (300, 300)))
    with pytest.raises(BadInput) as e:
        decode_image(big, DecodeConfig(max_pixels=300 * 300 - 1))
    assert e.value.reason == "image_too_large"
    assert decode_image(big, DecodeConfig(max_pixels=300 * 300)).width == 300


@pytest.mark.parametrize(
    "im,expected",
    [
        (Image.new("CMYK", (32, 24), (0, 255, 255, 0)), (255, 0, 0)),  # CMYK red
        (Image.new("L", (32, 24), 100), (100, 100, 100)),
        (Image.new("RGBA", (32, 24), (0, 0, 255, 0)), (255, 255, 255)),  # transparent -> white
        (Image.new("LA", (32, 24), (0, 255)), (0, 0, 0)),
    ],
)
def test_modes_become_rgb(im, expected):
    data = af.jpeg(im) if im.mode == "CMYK" else af.png(im)
    out = decode_image(data, CFG)
    assert out.pixels.dtype == np.uint8 and out.pixels.shape == (24, 32, 3)
    np.testing.assert_allclose(out.pixels[12, 16], expected, atol=8)
    np.testing.assert_allclose(_rgb(out.stored)[12, 16], expected, atol=10)


def test_palette_with_transparency():
    im = Image.new("P", (20, 20), 1)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    im.info["transparency"] = 0
    im.putpixel((0, 0), 0)
    out = decode_image(af.png(im), CFG)
    np.testing.assert_array_equal(out.pixels[0, 0], [255, 255, 255])  # transparent index
    np.testing.assert_array_equal(out.pixels[10, 10], [255, 0, 0])


def test_16_bit_is_rescaled_not_clipped():
    arr = np.full((16, 16), 32768, np.uint16)
    out = decode_image(af.png(Image.fromarray(arr, "I;16")), CFG)
    assert abs(int(out.pixels[0, 0, 0]) - 128) <= 1


def test_exif_rotation_applied():
    upright = Image.new("RGB", (40, 80), "white")  # 40 wide, 80 tall; red block at the top
    upright.paste((255, 0, 0), (0, 0, 40, 20))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a camera writes: 80 wide
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    out = decode_image(af.jpeg(stored, exif=exif.tobytes()), CFG)
    assert (out.height, out.width) == (80, 40)
    assert tuple(out.pixels[5, 20]) > (200, 0, 0) and out.pixels[5, 20][1] < 60
    assert out.pixels[70, 20].min() > 200


def test_plain_jpeg_stored_verbatim_and_resize():
    data = af.jpeg(Image.new("RGB", (200, 100), "blue"))
    assert decode_image(data, CFG).stored == data
    small = decode_image(data, DecodeConfig(store_max_side=50, detect_max_side=80))
    assert (small.width, small.height) == (50, 25)
    assert small.pixels.shape == (40, 80, 3)


# ---------------------------------------------------------------------------------------- sources
def _read(path: Path, fmt: str = "webdataset", **kw):
    with open(path, "rb") as f:
        return list(read_file(str(path), f, SourceConfig(fmt, **kw)))


def test_tar_groups_and_bad_members(tmp_path):
    image, caption, meta = af.scene(0)
    path = tmp_path / "x.tar"
    with tarfile.open(path, "w") as tar:
        af.add_member(tar, "a.jpg", image)
        af.add_member(tar, "a.txt", caption.encode())
        af.add_member(tar, "a.json", json.dumps(meta).encode())
        tar.addfile(_dir("somedir"))
        link = tarfile.TarInfo("b.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "a.jpg"
        tar.addfile(link)
        af.add_member(tar, "../evil.jpg", image)
        af.add_member(tar, "c.jpg", image)  # image, no text
        af.add_member(tar, "d.txt", b"text without image")
    items = _read(path)
    samples = [i for i in items if isinstance(i, RawSample)]
    dead = [i for i in items if isinstance(i, DeadLetter)]
    assert len(samples) == 1 and samples[0].key == "a" and samples[0].text == caption.encode()
    assert samples[0].metadata["regions"] == meta["regions"]
    assert sorted(i.reason for i in dead) == sorted(
        ["tar_non_file_member", "tar_non_file_member", "unsafe_member_name", "missing_text",
         "missing_image"])
    assert all(str(path) in i.source for i in dead)


def _dir(name):
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info


def test_truncated_tar(tmp_path):
    path = af.write_tar(tmp_path / "t.tar", af.clean_samples(0, 3))
    data = path.read_bytes()
    # Cut inside the third sample's image: two samples read, the third is the dead letter.
    offset = data.index(b"000000002.jpg") + 512 + 100
    path.write_bytes(data[:offset])
    items = _read(path)
    assert [type(i).__name__ for i in items] == ["RawSample", "RawSample", "DeadLetter"]
    assert items[2].reason == "truncated_tar" and "000000002" in items[2].source


def test_tar_cut_inside_a_member_header(tmp_path):
    path = af.write_tar(tmp_path / "t.tar", af.clean_samples(0, 3))
    data = path.read_bytes()
    # Cut 100 bytes into the header of the second sample's last member: tarfile would end the
    # archive quietly there, and the second sample would look complete without that member.
    names = [m.name for m in tarfile.open(path)]
    last_of_second = [n for n in names if n.startswith("000000001.")][-1]
    offset = data.index(last_of_second.encode()) + 100
    path.write_bytes(data[:offset])
    items = _read(path)
    assert [type(i).__name__ for i in items] == ["RawSample", "DeadLetter"]
    assert items[1].reason == "truncated_tar" and "000000001" in items[1].source
    assert "header" in items[1].detail


def test_parquet_with_null_image(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    image, caption, meta = af.scene(1)
    table = pa.table({"key": ["k0", "k1"], "jpg": [image, None], "caption": [caption, "x"],
                      "json": [json.dumps(meta), None]})
    pq.write_table(table, tmp_path / "p.parquet")
    items = _read(tmp_path / "p.parquet", "parquet")
    assert isinstance(items[0], RawSample) and items[0].image == image
    assert items[0].metadata["regions"] == meta["regions"]
    assert isinstance(items[1], DeadLetter) and items[1].reason == "missing_image"
    assert items[1].source.endswith(":row1")


def test_tfrecord_custom_keys_and_truncation(tmp_path):
    from pipelines.example_proto import Example

    image, caption, meta = af.scene(2)
    ex = Example()
    ex.features.feature["img"].bytes_list.value.append(image)
    ex.features.feature["alt"].bytes_list.value.append(caption.encode())
    ex.features.feature["meta"].bytes_list.value.append(json.dumps(meta).encode())
    payload = ex.SerializeToString()
    path = af.write_tfrecord(tmp_path / "r.tfrecord", [payload, payload])
    path.write_bytes(path.read_bytes()[:-10])
    items = _read(path, "tfrecord", image_key="img", text_key="alt", json_key="meta")
    assert isinstance(items[0], RawSample) and items[0].text == caption.encode()
    assert items[0].metadata["regions"] == meta["regions"]
    assert isinstance(items[1], DeadLetter) and items[1].reason == "truncated_tfrecord"


def test_tfrecord_with_a_corrupt_length_is_a_dead_letter_not_a_crash(tmp_path):
    from pipelines.example_proto import Example

    image, caption, _ = af.scene(3)
    ex = Example()
    ex.features.feature["image/encoded"].bytes_list.value.append(image)
    ex.features.feature["caption"].bytes_list.value.append(caption.encode())
    path = af.write_tfrecord(tmp_path / "r.tfrecord", [ex.SerializeToString()] * 2)
    data = bytearray(path.read_bytes())
    second = 12 + len(ex.SerializeToString()) + 4
    data[second : second + 8] = (1 << 62).to_bytes(8, "little")  # a garbage length field
    path.write_bytes(bytes(data))
    items = _read(path, "tfrecord")
    assert isinstance(items[0], RawSample) and items[0].text == caption.encode()
    assert isinstance(items[1], DeadLetter) and items[1].reason == "truncated_tfrecord"
    assert "CRC" in items[1].detail and len(items) == 2


def test_tfrecord_length_crc_is_tensorflows():
    from pipelines.sources import _crc32c, masked_crc32c

    assert _crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value (RFC 3720)
    crc = _crc32c(b"\0" * 8)
    assert masked_crc32c(b"\0" * 8) == (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def test_parquet_columns_of_the_wrong_type_are_dead_letters(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    image, caption, meta = af.scene(1)
    table = pa.table({"key": ["k0"], "jpg": [image], "caption": [caption], "width": [64],
                      "json": [meta]})  # json as a struct column: taken as it is
    pq.write_table(table, tmp_path / "p.parquet")
    ok = _read(tmp_path / "p.parquet", "parquet")
    assert isinstance(ok[0], RawSample) and ok[0].metadata["regions"] == meta["regions"]
    bad_text = _read(tmp_path / "p.parquet", "parquet", text_key="width")
    assert bad_text[0].reason == "missing_text" and "int" in bad_text[0].detail
    bad_image = _read(tmp_path / "p.parquet", "parquet", image_key="caption")
    assert bad_image[0].reason == "missing_image" and "str" in bad_image[0].detail


def test_a_file_whose_reader_fails_is_one_dead_letter_and_the_counts_add_up(monkeypatch):
    from pipelines import stages, tags

    def reader(path, f, config):
        for i in range(3):
            yield RawSample(key=f"k{i}", source=f"{path}:{i}", image=b"x", text=b"t", metadata={})
        raise TypeError("a column of the wrong kind")

    monkeypatch.setattr(stages, "read_file", reader)
    monkeypatch.setattr(stages.FileSystems, "open", lambda path: io.BytesIO(b""))
    out = list(stages.ReadFileFn(SourceConfig(), batch_size=2).process("gs://b/in.tar"))
    batches = [v for t, v in out if t == tags.SAMPLES]
    dead = [v for t, v in out if t == tags.DEAD]
    assert [[s.key for s in b] for b in batches] == [["k0", "k1"], ["k2"]]
    assert len(dead) == 1 and [v for t, v in out if t == tags.READ] == [4]
    assert dead[0].reason == "unreadable_file" and "TypeError" in dead[0].detail


def test_a_labeler_error_makes_each_sample_of_its_batch_a_dead_letter():
    """The handler catches the error (no tagged error output: see pipelines/tags.py) and ToRecordFn
    turns each sample of the batch into a `labeler_error` dead letter naming the exception."""
    from pipelines import stages, tags
    from pipelines.inference import LabelerModelHandler, LabelerSpec

    class Failing:
        fingerprint = "failing@0"

        def detect(self, batch):
            raise RuntimeError("out of memory")

    batch = [stages.Prepared(key=k, source=f"in.tar:{k}", caption="a red square", image=b"",
                             height=8, width=8, pixels=np.zeros((8, 8, 3), np.uint8),
                             queries=["red square"], metadata={}) for k in ("a", "b")]
    results = LabelerModelHandler(LabelerSpec()).run_inference(batch, Failing())
    to_record = stages.ToRecordFn(PostprocessConfig(), num_shards=1, require_boxes=False)
    out = [pair for r in results for pair in to_record.process(r)]
    assert [t for t, _ in out] == [tags.DEAD, tags.DEAD]
    assert [d.source for _, d in out] == ["in.tar:a", "in.tar:b"]
    assert all(d.reason == "labeler_error" and d.detail == "RuntimeError: out of memory"
               for _, d in out)


def test_manifest_facts_merge_like_one_pass():
    """ManifestFn is mergeable: facts split over workers give the summary of one pass, including
    the preview sample (the smallest ranks) and a retried shard reported twice."""
    from pipelines import manifest, tags

    summary = manifest.record_summary(np.array([0.9]), np.array([[0, 0, 0.5, 0.5]]), ("a b",))
    facts = [(tags.READ, 3), (tags.DEAD_WRITTEN, {"empty_caption": 1}), (tags.NOTE, "x"),
             (tags.FILTERED, "no_boxes"), (tags.SHARD, (0, 1)), (tags.SHARD, (0, 1))]
    facts += [(tags.PREVIEW, (rank, b"r%d" % rank)) for rank in (7, 3, 9, 1, 5)]
    facts += [(tags.SUMMARY, summary), (tags.LABELER, "ref@1")]
    fn = manifest.ManifestFn(preview_size=2)

    def fold(part):
        acc = fn.create_accumulator()
        for f in part:
            acc = fn.add_input(acc, f)
        return acc

    whole = fn.extract_output(fold(facts))
    split = fn.extract_output(fn.merge_accumulators([fold(facts[::2]), fold(facts[1::2])]))
    assert split == whole
    assert whole["previews"] == [(1, b"r1"), (3, b"r3")] and whole["shards"] == {0: 1}
    assert whole["read"] == 3 and whole["dead_lettered"] == {"empty_caption": 1}
    assert whole["boxes"]["total"] == 1 and whole["labelers"] == ["ref@1"]
    with pytest.raises(ValueError, match="not a manifest fact"):
        fn.add_input(fn.create_accumulator(), (tags.RECORD, None))


# ------------------------------------------------------------------------ postprocess + reference
def test_iou_and_nms():
    boxes = np.array([[0, 0, 0.5, 0.5], [0, 0, 0.5, 0.55], [0.6, 0.6, 1, 1]], np.float32)
    assert iou_matrix(boxes[:1], boxes[:1])[0, 0] == pytest.approx(1.0)
    assert iou_matrix(boxes[:1], boxes[2:])[0, 0] == 0.0
    assert nms(boxes, np.array([0.5, 0.9, 0.3]), 0.5).tolist() == [1, 2]
    assert nms(boxes, np.array([0.5, 0.9, 0.3]), 1.0).tolist() == [1, 0, 2]


def test_select_regions_threshold_min_size_cap():
    boxes = np.array([[0, 0, 0.5, 0.5], [0.5, 0.5, 0.505, 0.9], [0.6, 0.0, 1.0, 0.4],
                      [0.0, 0.6, 0.4, 1.0]], np.float32)
    scores = np.array([[0.2, 0.8], [0.9, 0.1], [0.1, 0.25], [0.7, 0.1]], np.float32)
    r = select_regions(Detections(boxes, scores), ["cat", "dog"], PostprocessConfig(max_boxes=5))
    # box 1 is too thin, box 2 under the threshold.
    assert r.phrases == ("dog", "cat") and r.query_ranks.tolist() == [1, 0]
    np.testing.assert_allclose(r.scores, [0.8, 0.7])
    capped = select_regions(Detections(boxes, scores), ["cat", "dog"],
                            PostprocessConfig(max_boxes=1))
    assert capped.phrases == ("dog",)
    assert select_regions(Detections(boxes, np.zeros((4, 0))), [], PostprocessConfig()).phrases == ()


def test_select_regions_drops_non_finite_boxes_before_clipping():
    boxes = np.array([[0.2, 0.2, np.inf, np.inf], [0.1, 0.1, 0.6, 0.6]], np.float32)
    scores = np.array([[0.9], [0.8]], np.float32)
    r = select_regions(Detections(boxes, scores), ["cat"], PostprocessConfig())
    np.testing.assert_allclose(r.boxes, [[0.1, 0.1, 0.6, 0.6]])  # not [0.2, 0.2, 1, 1] as well


def test_reference_scores():
    names = [[normalize(n) for n in ("red star", "star", "large red star")]]
    s = score_matrix(names, ["red star", "star", "red", "blue circle", "Red Star!"])[0]
    assert s[0] > s[1] >= 0.9  # longer exact match wins the tie
    assert 0 < s[2] < 0.3 and s[3] == 0.0
    assert s[4] == s[0]  # normalized text


def test_reference_labeler_detect():
    _, caption, meta = af.scene(2)
    from pipelines.queries import queries_from_alt_text

    queries = queries_from_alt_text(caption)
    lab = ReferenceLabeler()
    (det,) = lab.detect([LabelerInput("k", np.zeros((4, 4, 3), np.uint8), queries, meta)])
    assert det.boxes.shape == (3, 4) and det.scores.shape == (3, len(queries))
    r = select_regions(det, queries, PostprocessConfig())
    assert sorted(r.phrases) == sorted(reg["phrase"] for reg in meta["regions"])
    assert lab.fingerprint.startswith("reference@")
    (none,) = lab.detect([LabelerInput("k", np.zeros((4, 4, 3), np.uint8), queries, {})])
    assert none.boxes.shape == (0, 4)


# ----------------------------------------------------------------------------- shards + preview
def test_shard_sink_atomic_and_idempotent(tmp_path):
    recs = [b"r%d" % i for i in range(5)]
    keyed = [(str(i), r) for i, r in enumerate(recs)]
    assert shard_sink.write_shard(str(tmp_path), "train-00000-of-00002.array_record", keyed) == 5
    assert shard_sink.write_shard(str(tmp_path), "train-00000-of-00002.array_record", keyed) == 5
    (tmp_path / "train-00004-of-00005.array_record").write_bytes(b"stale")  # an older sharding
    shards = shard_sink.finalize_shards(str(tmp_path), "train", 2, {0: 5})
    assert [s["records"] for s in shards] == [5, 0]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "train-00000-of-00002.array_record", "train-00001-of-00002.array_record"]
    from array_record.python.array_record_module import ArrayRecordReader

    reader = ArrayRecordReader(str(tmp_path / "train-00000-of-00002.array_record"))
    assert reader.read_all() == recs
    assert shard_sink.shard_index("abc", 7) == shard_sink.shard_index("abc", 7) < 7
    # Object stores get the final name directly (no copy + delete); local disks a temp + rename.
    assert shard_sink.writes_in_place("gs://b/shards") and not shard_sink.writes_in_place(
        str(tmp_path))


def test_leftover_temp_files_are_removed_where_the_tmp_dir_is_no_object(tmp_path, monkeypatch):
    # On gs:// "OUT/.tmp" is never an object: exists() says False even with files under it.
    (tmp_path / ".tmp").mkdir()
    (tmp_path / ".tmp" / "train-00000-of-00001.array_record.abc").write_bytes(b"partial")
    real_exists = shard_sink.FileSystems.exists
    monkeypatch.setattr(shard_sink.FileSystems, "exists",
                        lambda p: False if p.rstrip("/").endswith(".tmp") else real_exists(p))
    shard_sink.finalize_shards(str(tmp_path), "train", 1, {})
    assert not list((tmp_path / ".tmp").iterdir())


def test_shard_written_in_key_order_whatever_the_arrival_order(tmp_path):
    """A runner's shuffle delivers a shard's records in any order; keyed records are written in
    key order (a repeated key: ordered by a digest of the bytes), so reruns give byte-identical
    shards."""
    import hashlib

    from array_record.python.array_record_module import ArrayRecordReader

    keyed = [(f"{k:03d}", b"rec-%d" % k) for k in (5, 1, 9, 3, 7)] + [("003", b"dup-of-3")]
    three = sorted([b"rec-3", b"dup-of-3"], key=lambda r: hashlib.blake2b(r, digest_size=8).digest())
    want = [b"rec-1", *three, b"rec-5", b"rec-7", b"rec-9"]
    files = []
    for i, order in enumerate([keyed, keyed[::-1], keyed[2:] + keyed[:2]]):
        out = tmp_path / str(i)
        assert shard_sink.write_shard(str(out), "train-00000-of-00001.array_record", order) == 6
        path = out / "train-00000-of-00001.array_record"
        reader = ArrayRecordReader(str(path))
        assert reader.read_all() == want
        reader.close()
        files.append(path.read_bytes())
    assert files[0] == files[1] == files[2]


def test_preview_escapes_untrusted_text():
    image, _, _ = af.scene(0)
    rec = record_lib.Record(
        key="<b>k</b>", source="s", image=image, height=96, width=128,
        caption='<script>alert("x")</script> & more', boxes=np.array([[0.1, 0.1, 0.5, 0.5]]),
        phrases=("<img src=x onerror=alert(1)>",), scores=np.array([0.9], np.float32),
        query_ranks=np.array([0]),
    )
    page = preview.render_html([rec])
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "<img src=x" not in page and "&lt;img src=x" in page
    assert "<b>k</b>" not in page
    png = preview.contact_sheet([rec, rec])
    assert Image.open(io.BytesIO(png)).size == (4 * 256, 256)
