"""OwlVitLabeler behaviour: caching, dedup, bucketing, templates, bad input, strict loading."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from owlvit_fixtures import make_tiny_checkpoint  # noqa: E402

from pipelines.labelers.base import LabelerInput  # noqa: E402
from pipelines.owlvit import checkpoint as ckpt_lib  # noqa: E402
from pipelines.owlvit.labeler import OwlVitLabeler  # noqa: E402
from pipelines.owlvit.postprocess import to_image_boxes  # noqa: E402
from pipelines.owlvit.preprocess import resize_matrix  # noqa: E402
from pipelines.owlvit.text import QueryTokenizer  # noqa: E402


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("owl2"), 2)


@pytest.fixture(scope="module")
def plain(ckpt_dir):
    return OwlVitLabeler.from_checkpoint(str(ckpt_dir), templates=("{}",), max_batch=4)


def _img(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)


def test_detect_shapes_zero_queries_and_objectness(plain):
    dets = plain.detect([LabelerInput("a", _img(40, 70), ["cat", "dog"]),
                         LabelerInput("b", _img(70, 40), [])])
    p = plain.config.num_patches
    assert dets[0].scores.shape == (p, 2) and dets[1].scores.shape == (p, 0)
    for d in dets:
        assert d.boxes.shape == (p, 4) and d.boxes.dtype == np.float32
        assert d.boxes.min() >= 0 and d.boxes.max() <= 1
        assert np.all(d.boxes[:, 0] <= d.boxes[:, 2]) and np.all(d.boxes[:, 1] <= d.boxes[:, 3])
        assert d.objectness.shape == (p,) and 0 <= d.objectness.min() <= d.objectness.max() <= 1


def test_zero_size_image_is_one_clear_error(plain):
    with pytest.raises(ValueError, match="'empty' has zero size"):
        plain.detect([LabelerInput("empty", np.zeros((0, 5, 3), np.uint8), ["cat"])])


def test_dedup_and_cache_across_batches(ckpt_dir):
    lab = OwlVitLabeler.from_checkpoint(str(ckpt_dir), templates=("{}",), cache_size=3)
    batch = [LabelerInput("a", _img(32, 32), ["cat", "dog", "cat"]),
             LabelerInput("b", _img(32, 32, 1), ["dog", "red car"])]
    first = lab.detect(batch)
    assert lab.stats["queries_embedded"] == 3 and lab.stats["text_sequences"] == 3
    again = lab.detect(batch)  # every query is cached now: no text work
    assert lab.stats["text_sequences"] == 3
    np.testing.assert_allclose(first[0].scores, again[0].scores, atol=1e-6)
    np.testing.assert_array_equal(first[0].scores[:, 0], first[0].scores[:, 2])  # same query
    lab.detect([LabelerInput("c", _img(32, 32), ["bus", "tree"])])
    assert len(lab._cache) == 3  # bounded LRU


def test_template_ensemble_is_mean_of_unit_embeddings(ckpt_dir, plain):
    templates = ("a photo of a {}.", "art of the {}.")
    lab = OwlVitLabeler.from_checkpoint(str(ckpt_dir), templates=templates)
    got = lab.embed_queries(["cat", "red car"])
    want = np.stack([plain.embed_queries([t.format(q) for t in templates]).mean(0)
                     for q in ["cat", "red car"]])
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert lab.stats["text_sequences"] == 4


def test_compiled_programs_are_bucketed(plain):
    lab = plain
    start = lab.num_compiled_programs
    words = "cat dog bus tree car man woman horse cow sheep bird kite".split()
    for n, q in [(1, 1), (2, 3), (3, 5), (4, 12), (3, 7)]:
        lab.detect([LabelerInput(f"{n}{i}", _img(30, 40, i), words[:q]) for i in range(n)])
    # images: buckets 1, 2, 4; text: one (16 rows, 4 tokens) program for all of these.
    assert lab.num_compiled_programs - start <= 5
    before = lab.num_compiled_programs
    lab.detect([LabelerInput("x", _img(50, 20), ["zebra", "giraffe"])])
    assert lab.num_compiled_programs == before


@pytest.mark.slow
def test_bfloat16_is_close_to_float32(ckpt_dir, plain):
    lab = OwlVitLabeler.from_checkpoint(str(ckpt_dir), templates=("{}",), dtype="bfloat16")
    item = [LabelerInput("a", _img(48, 64), ["cat", "a red car"])]
    a, b = plain.detect(item)[0], lab.detect(item)[0]
    assert np.abs(a.scores - b.scores).mean() < 0.05
    assert np.abs(a.boxes - b.boxes).mean() < 0.05


def test_tokenizer_truncates_and_both_file_layouts_agree(ckpt_dir, tmp_path):
    long = " ".join(["horse"] * 40)
    full = QueryTokenizer(ckpt_dir)
    ids, eos = full.encode([long, "cat"])
    assert ids.shape[1] == 16 and eos[0] == 15
    vocab_only = tmp_path / "tok"
    vocab_only.mkdir()
    for f in ("vocab.json", "merges.txt"):
        shutil.copy(ckpt_dir / f, vocab_only / f)
    ids2, eos2 = QueryTokenizer(vocab_only).encode([long, "cat"])
    np.testing.assert_array_equal(ids, ids2)
    np.testing.assert_array_equal(eos, eos2)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_strict_loading_lists_every_problem(ckpt_dir, tmp_path):
    from safetensors.numpy import load_file, save_file

    bad = _copy(ckpt_dir, tmp_path / "bad")
    tensors = load_file(str(bad / "model.safetensors"))
    del tensors["box_head.dense2.bias"]
    del tensors["owlv2.text_projection.weight"]
    tensors["extra.weight"] = np.zeros(3, np.float32)
    save_file(tensors, str(bad / "model.safetensors"))
    with pytest.raises(ckpt_lib.CheckpointError) as e:
        ckpt_lib.load(str(bad))
    msg = str(e.value)
    assert "2 missing" in msg and "box_head.dense2.bias" in msg
    assert "owlv2.text_projection.weight" in msg and "1 unexpected: extra.weight" in msg


def test_mismatched_unreadable_or_absent_checkpoints(ckpt_dir, tmp_path):
    other = _copy(ckpt_dir, tmp_path / "v1cfg")
    cfg = json.loads((other / "config.json").read_text())
    cfg["model_type"] = "owlvit"  # weights are v2 (owlv2.* names + objectness head)
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ckpt_lib.CheckpointError, match="does not match an OWL-ViT v1"):
        ckpt_lib.load(str(other))
    broken = _copy(ckpt_dir, tmp_path / "broken")
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ckpt_lib.CheckpointError, match="cannot read"):
        ckpt_lib.load(str(broken))
    with pytest.raises(ckpt_lib.CheckpointError, match="does not exist"):
        ckpt_lib.load(str(tmp_path / "nowhere" / "x" / "y"))
    notok = _copy(ckpt_dir, tmp_path / "notok")
    for f in ("vocab.json", "merges.txt", "tokenizer.json"):
        (notok / f).unlink()
    with pytest.raises(ckpt_lib.CheckpointError, match="no tokenizer"):
        OwlVitLabeler.from_checkpoint(str(notok))


def test_fingerprint_tracks_the_weights(ckpt_dir, tmp_path):
    from safetensors.numpy import load_file, save_file

    a = ckpt_lib.fingerprint(ckpt_dir)
    assert a == ckpt_lib.fingerprint(ckpt_dir) and "@sha256:" in a
    other = _copy(ckpt_dir, tmp_path / "other")
    t = load_file(str(other / "model.safetensors"))
    t["layer_norm.bias"] = t["layer_norm.bias"] + 1
    save_file(t, str(other / "model.safetensors"))
    assert ckpt_lib.fingerprint(other).split("@")[1] != a.split("@")[1]


def test_resize_matrix_matches_scipy():
    ndi = pytest.importorskip("scipy.ndimage")
    x = np.random.default_rng(0).random(300)
    for n_out in (960, 100, 37):
        f = 300 / n_out
        y = ndi.gaussian_filter(x, max(0, (f - 1) / 2), mode="mirror") if f > 1 else x
        ref = ndi.zoom(y, 1 / f, order=1, mode="mirror", grid_mode=True)
        np.testing.assert_allclose(resize_matrix(300, n_out) @ x, ref, atol=1e-12)


def test_boxes_map_from_padded_square_to_original_image():
    # 100 x 200 image -> 200 x 200 square; the image is the top half.
    boxes = np.array([[0.5, 0.25, 1.0, 0.5],  # exactly the image
                      [0.25, 0.125, 0.5, 0.25]])  # its top-left quarter
    out = to_image_boxes(boxes, 100, 200)
    np.testing.assert_allclose(out, [[0, 0, 1, 1], [0, 0, 0.5, 0.5]], atol=1e-6)
