"""End to end: the annotate pipeline (FnApiRunner) over tars full of bad input; counts add up.

One module-scoped run is shared by most asserts (Beam is slow to start on 2 cores); a second run into
the same directory checks reruns (new shard count, --require_boxes)."""

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import annotate_fixtures as af
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from PIL import Image

from pipelines import annotate, shard_sink

ROOT = Path(__file__).resolve().parents[1]
LONG = "a red square " + "lorem ipsum " * 9000  # > 100,000 characters
SCRIPT = '<script>alert("pwned")</script> a red square'


def _special_samples() -> list[tuple[str, dict[str, bytes]]]:
    """Images in every awkward mode; all of them must become records."""
    out = []
    for n, kind in enumerate(["cmyk", "gray", "palette", "alpha", "i16", "exif", "long", "script",
                              "noregions"]):
        image, caption, meta = af.scene(50 + n)
        upright = Image.open(io.BytesIO(image))
        if kind == "cmyk":
            image = af.jpeg(upright.convert("CMYK"))
        elif kind == "gray":
            image = af.jpeg(upright.convert("L"))
        elif kind == "palette":
            image = af.png(upright.convert("P"))
        elif kind == "alpha":
            image = af.png(upright.convert("RGBA"))
        elif kind == "i16":
            arr = (np.asarray(upright.convert("L"), np.uint16) * 257).astype(np.uint16)
            image = af.png(Image.fromarray(arr, "I;16"))
        elif kind == "exif":
            exif = Image.Exif()
            exif[0x0112] = 6
            image = af.jpeg(upright.transpose(Image.Transpose.ROTATE_90), exif=exif.tobytes())
        elif kind == "long":
            caption = LONG
        elif kind == "script":
            caption = SCRIPT
        elif kind == "noregions":
            meta = {}
        ext = "png" if kind in ("palette", "alpha", "i16") else "jpg"
        out.append((f"special-{kind}", {ext: image, "txt": caption.encode(),
                                        "json": json.dumps(meta).encode()}))
    return out


def _bad_tar(path: Path) -> None:
    import tarfile

    image, caption, meta = af.scene(90)
    big = af.jpeg(Image.new("RGB", (400, 300), "red"))  # 120,000 px, over --max_pixels
    samples = [
        ("bad-truncated", {"jpg": image[: len(image) // 2], "txt": b"a red square"}),
        ("bad-zero", {"jpg": b"", "txt": b"a red square"}),
        ("bad-notimage", {"jpg": b"GIF? no, plain text", "txt": b"a red square"}),
        ("bad-big", {"jpg": big, "txt": b"a red square"}),
        ("bad-empty", {"jpg": image, "txt": b""}),
        ("bad-space", {"jpg": image, "txt": b"  \n\t "}),
        ("bad-latin1", {"jpg": image, "txt": "caf\xe9 cr\xe8me".encode("latin-1")}),
        ("bad-notext", {"jpg": image, "json": json.dumps(meta).encode()}),
        ("bad-noimage", {"txt": b"a caption without its image"}),
    ]
    af.write_tar(path, samples)
    with tarfile.open(path, "a") as tar:
        d = tarfile.TarInfo("adir")
        d.type = tarfile.DIRTYPE
        tar.addfile(d)
        link = tarfile.TarInfo("bad-link.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
        af.add_member(tar, "../escape.jpg", image)


def _truncated_tar(path: Path) -> None:
    af.write_tar(path, af.clean_samples(100, 3))
    data = path.read_bytes()
    path.write_bytes(data[: data.index(b"000000102.jpg") + 512 + 200])


EXPECTED_DEAD = {
    "truncated_image": 1, "empty_image": 1, "not_an_image": 1, "image_too_large": 1,
    "empty_caption": 2, "caption_not_utf8": 1, "missing_text": 1, "missing_image": 1,
    "tar_non_file_member": 2, "unsafe_member_name": 1, "truncated_tar": 1,
}
N_GOOD = 8 + 9 + 2  # clean + special + the complete samples of the truncated tar


def _argv(inp: Path, out: Path, *extra: str) -> list[str]:
    return [f"--input={inp}/*.tar", f"--output={out}", "--runner=FnApiRunner",
            "--max_pixels=100000", "--progress=false", *extra]


@pytest.fixture(scope="module")
def run1(tmp_path_factory):
    inp = tmp_path_factory.mktemp("in")
    out = tmp_path_factory.mktemp("out")
    af.write_tar(inp / "good.tar", af.clean_samples(0, 8) + _special_samples())
    _bad_tar(inp / "bad.tar")
    _truncated_tar(inp / "trunc.tar")
    manifest, metrics = annotate.run_with_metrics(_argv(inp, out, "--num_shards=3"))
    return inp, out, manifest, metrics


def test_counts_add_up(run1):
    _, _, m, metrics = run1
    c = m["counts"]
    assert c["balanced"] and c["read"] == c["written"] + c["dead_lettered"] + c["filtered"]
    assert c["written"] == N_GOOD
    assert c["dead_lettered_by_reason"] == EXPECTED_DEAD
    assert c["read"] == N_GOOD + sum(EXPECTED_DEAD.values())
    assert c["notes"] == {"caption_truncated": 1}
    assert metrics["read"] == c["read"] and metrics["records_out"] == N_GOOD
    assert metrics["dead_letter/empty_caption"] == 2


def test_dead_letter_file(run1):
    _, out, m, _ = run1
    lines = [json.loads(x) for x in (out / "dead_letters.jsonl").read_text().splitlines()]
    assert len(lines) == m["counts"]["dead_lettered"]
    assert {k: sum(1 for x in lines if x["reason"] == k) for k in EXPECTED_DEAD} == EXPECTED_DEAD
    assert all(x["source"] and len(x["detail"]) <= 300 for x in lines)
    assert any(x["source"].endswith("bad.tar:bad-latin1") for x in lines)


def test_records_decode_and_match_ground_truth(run1):
    _, out, m, _ = run1
    recs = af.load_shards(out)
    assert len(recs) == N_GOOD and len({r.key for r in recs}) == N_GOOD
    assert sorted(p.name for p in out.glob("*.array_record")) == [
        f"train-{i:05d}-of-00003.array_record" for i in range(3)]
    assert [s["records"] for s in m["shards"]] == [
        len([r for r in recs if shard_sink.shard_index(r.key, 3) == i]) for i in range(3)]
    for shard in sorted(out.glob("*.array_record")):  # each shard in key order (reproducible)
        keys = [r.key for r in af.load_shards_of([shard])]
        assert keys == sorted(keys)
    by_key = {r.key: r for r in recs}
    for i in range(8):
        rec = by_key[f"{i:09d}"]
        _, _, meta = af.scene(i)
        gt = {reg["phrase"]: np.array(reg["bbox"]) for reg in meta["regions"]}
        assert set(rec.phrases) == set(gt)
        for phrase, box in zip(rec.phrases, rec.boxes, strict=True):
            np.testing.assert_allclose(box, gt[phrase], atol=1e-6)
        assert rec.labeler == m["labeler"] and rec.labeler.startswith("reference@")
    assert by_key["special-noregions"].num_regions == 0  # kept for the caption task
    for key in ("special-cmyk", "special-gray", "special-palette", "special-alpha",
                "special-i16", "special-exif"):
        rec = by_key[key]
        assert (rec.height, rec.width) == (96, 128), key  # EXIF rotation undone
        assert rec.num_regions >= 1, key
        im = np.asarray(Image.open(io.BytesIO(rec.image)))
        assert im.ndim == 3 and im.shape[2] == 3, key
    assert len(by_key["special-long"].caption) <= 2000
    assert by_key["special-script"].caption == SCRIPT  # data is stored verbatim ...


def test_preview_escaped(run1):
    _, out, _, _ = run1
    page = (out / "preview.html").read_text()
    assert "&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt;" in page  # ... shown escaped
    assert "<script" not in page
    assert page.count("class=card") == N_GOOD
    assert Image.open(out / "preview.png").size[0] == 4 * 256


def test_manifest_file_and_config(run1):
    _, out, m, _ = run1
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == m
    assert m["config"]["score_threshold"] == 0.3 and m["config"]["num_shards"] == 3
    assert m["config"]["runner"] == "FnApiRunner"
    assert m["boxes"]["total"] == sum(int(k) * v for k, v in
                                      m["boxes"]["per_image_histogram"].items())
    assert not (out / ".tmp").exists()
    assert not list(out.glob("*.tmp-*")) and not list(out.glob("beam-temp*"))


def test_rerun_replaces_shards_and_filters(run1):
    inp, out, _, _ = run1
    m = annotate.run(_argv(inp, out, "--num_shards=2", "--require_boxes"))
    c = m["counts"]
    assert c["balanced"] and c["filtered_by_reason"] == {"no_boxes": 1}
    assert c["written"] == N_GOOD - 1
    assert sorted(p.name for p in out.glob("*.array_record")) == [
        "train-00000-of-00002.array_record", "train-00001-of-00002.array_record"]
    assert len(af.load_shards(out)) == N_GOOD - 1


def test_missing_input_is_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "pipelines/annotate.py", f"--input={tmp_path}/nothing/*.tar",
         f"--output={tmp_path}/out"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("annotate: --input") and "matches no files" in last


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--score_threshold=1.5"], "--score_threshold"),
        (["--score_treshold=0.5"], "unknown flag(s) --score_treshold"),
        (["--labeler=owlvit"], "--owlvit_checkpoint"),
        (["--max_batch_size=0"], "--max_batch_size must be >= 1"),
        (["--max_caption_chars=-5"], "--max_caption_chars must be >= 1"),
        (["--max_queries=0"], "--max_queries must be >= 1"),
        (["--min_box_size=nan"], "--min_box_size nan must be in [0, 1]"),
        (["--preview_size=-1"], "--preview_size must be >= 0"),
    ],
)
def test_bad_flags(tmp_path, extra, message):
    af.write_tar(tmp_path / "in" / "a.tar", af.clean_samples(0, 1))
    with pytest.raises(SystemExit, match="annotate: .*" + re.escape(message)):
        annotate.run(_argv(tmp_path / "in", tmp_path / "out", *extra))


def test_overlapping_input_patterns_read_each_file_once(tmp_path):
    af.write_tar(tmp_path / "in" / "a.tar", af.clean_samples(0, 2))
    af.write_tar(tmp_path / "in" / "b.tar", af.clean_samples(2, 1))
    argv = [f"--input={tmp_path}/in/*.tar,{tmp_path}/in/a.tar", f"--output={tmp_path}/out"]
    files = annotate.check_options(PipelineOptions(argv).view_as(annotate.AnnotateOptions))
    assert [Path(f).name for f in files] == ["a.tar", "b.tar"]


def test_unwritable_output(tmp_path):
    af.write_tar(tmp_path / "in" / "a.tar", af.clean_samples(0, 1))
    (tmp_path / "file").write_text("a file, not a directory")
    with pytest.raises(SystemExit, match="annotate: --output .* is not writable"):
        annotate.run(_argv(tmp_path / "in", tmp_path / "file" / "out"))


def _peak_rss_mb(args: list[str], log: Path) -> float:
    """Peak resident memory of one `annotate.py` process (os.wait4 reports that child alone).
    stderr goes to a file: a pipe nobody reads while waiting could fill and block the child."""
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "pipelines/annotate.py", *args], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, log.read_text()[-2000:]
    return usage.ru_maxrss / 1024


def test_memory_does_not_grow_with_the_number_of_images(tmp_path):
    """Decoded images stream through the DirectRunner: they are never all held at once. A Flatten
    over the data-carrying outputs (rather than over each step's facts) made the DirectRunner keep
    every decoded image of the run in memory: a 10,000-image corpus then needed over 23 GB."""
    peaks = {}
    for n in (20, 220):
        af.write_tar(tmp_path / f"in{n}" / "a.tar", af.clean_samples(0, n, size=(480, 640)))
        peaks[n] = _peak_rss_mb([f"--input={tmp_path}/in{n}/*.tar", f"--output={tmp_path}/out{n}",
                                 "--labeler=reference", "--num_shards=1", "--progress=false"],
                                tmp_path / f"annotate{n}.log")
    # 200 more 640x480 images: about 180 MB of pixels per copy if they were all held.
    assert peaks[220] - peaks[20] < 150, peaks
