"""The synthetic sample corpus: readable by the real clients, deterministic, unambiguous refs.

The referring expressions are checked by an interpreter written here from the words alone plus the
boxes and attributes in instances.json, not by asking the generator.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines import sample_corpus
from pipelines.corpus import alt_text, vocab, web

REPO = Path(__file__).resolve().parents[1]
NUM_TRAIN, NUM_EVAL, SEED, SHARD = 40, 30, 0, 16


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    return sample_corpus.generate(out, NUM_TRAIN, NUM_EVAL, SEED, shard_size=SHARD, workers=1)


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _load(path: Path):
    return json.loads(path.read_text())


# ---------------------------------------------------------------- web shards


def test_webdataset_reads_every_sample(corpus):
    import webdataset as wds

    shards = corpus["shards"]
    assert [p.name for p in shards] == ["shard-00000.tar", "shard-00001.tar", "shard-00002.tar"]
    samples = list(wds.WebDataset([str(p) for p in shards], shardshuffle=False))
    assert [s["__key__"] for s in samples] == [f"{i:09d}" for i in range(NUM_TRAIN)]
    sizes, counts = set(), []
    for s in samples:
        assert {"jpg", "json", "txt"} <= set(s), s.keys()
        meta = json.loads(s["json"])
        assert meta["key"] == s["__key__"] and meta["status"] == "success"
        assert meta["error_message"] is None
        assert meta["caption"] == s["txt"].decode("utf-8")
        img = Image.open(io.BytesIO(s["jpg"]))
        assert img.format == "JPEG" and img.mode == "RGB"
        assert img.size == (meta["width"], meta["height"])
        assert (meta["original_width"], meta["original_height"]) == img.size
        assert 160 <= min(img.size) and max(img.size) <= 640
        sizes.add(img.size)
        regions = meta["regions"]
        assert 1 <= len(regions) <= 6 and meta["scene"]["num_objects"] == len(regions)
        counts.append(len(regions))
        for r in regions:
            ymin, xmin, ymax, xmax = r["bbox"]
            assert 0 <= ymin < ymax <= 1 and 0 <= xmin < xmax <= 1, r["bbox"]
            assert r["phrase"] == f"{r['color']} {r['shape']}"
            assert r["names"][0] == r["phrase"] and r["shape"] in r["names"]
            assert f"{r['size']} {r['phrase']}" in r["names"]
            plain = vocab.names_for(r["color"], r["shape"], r["size"])
            assert r["names"] == plain + [e for e in r["expressions"] if e not in plain]
            assert r["size"] in ("small", "medium", "large")
            assert 0 <= r["occluded_fraction"] <= 0.6
        assert meta["scene"]["dominant_shape"] in {r["shape"] for r in regions}
        assert meta["scene"]["background"] in ("plain", "gradient", "noise", "texture")
    assert any(w != h for w, h in sizes) and len(sizes) > 20
    assert len(set(counts)) >= 4  # object counts vary


def test_boxes_cover_the_drawn_objects(corpus):
    """Inside each visible box, pixels differ from the background; the box is tight-ish."""
    import webdataset as wds

    checked = 0
    for s in wds.WebDataset([str(p) for p in corpus["shards"]], shardshuffle=False):
        meta = json.loads(s["json"])
        if meta["scene"]["background"] != "plain":
            continue
        px = np.asarray(Image.open(io.BytesIO(s["jpg"])), np.float32)
        bg = np.median(px.reshape(-1, 3), axis=0)
        h, w = px.shape[:2]
        for r in meta["regions"]:
            y0, x0, y1, x1 = (round(v * d) for v, d in zip(r["bbox"], (h, w, h, w), strict=True))
            differs = np.abs(px[y0:y1, x0:x1] - bg).max(-1) > 40
            assert differs.mean() > 0.2, (meta["key"], r)
            # the box is tight: the object reaches within 2 px of each edge (JPEG blurs thin tips)
            assert differs[:2].any() and differs[-2:].any(), (meta["key"], r)
            assert differs[:, :2].any() and differs[:, -2:].any(), (meta["key"], r)
            checked += 1
    assert checked >= 10


def _ngrams(text: str, n_max: int = 4) -> set[str]:
    words = re.sub(r"[^a-z\- ]", " ", text.lower()).split()
    return {" ".join(words[i : i + n]) for n in range(1, n_max + 1) for i in range(len(words))}


def test_alt_texts_name_the_objects():
    """Most alt-texts name most objects with a region name; few are useless; words vary."""
    metas = [json.loads(web.make_sample(SEED, i)[3]) for i in range(200)]
    named_fraction, useless, vocabulary = [], 0, set()
    for meta in metas:
        grams = _ngrams(meta["caption"])
        vocabulary |= grams
        named = [any(n in grams for n in r["names"] if " " in n) for r in meta["regions"]]
        if not any(named):
            useless += 1
        named_fraction.append(np.mean(named))
    assert np.mean([f >= 0.5 for f in named_fraction]) > 0.8
    assert 0 < useless / len(metas) < 0.12
    # synonyms and web noise are present
    assert "stock photo" in vocabulary and "free download" in vocabulary
    assert {"crimson", "scarlet", "azure", "emerald", "violet", "box", "disk"} & vocabulary
    assert any(re.search(r"img_\d+", m["caption"].lower()) for m in metas)
    assert len({m["caption"] for m in metas}) > 185


_POSITION_WORDS = set("left right top bottom leftmost rightmost upper lower above below".split())


def test_some_alt_texts_use_referring_expressions_from_region_names():
    """~37% of alt-texts describe objects as refexp.py does; each expression is one of the
    region's names, appears whole in the alt-text's queries and is the longest of that region's
    names there (so the reference labeler gives the box that expression)."""
    from pipelines.queries import queries_from_alt_text

    metas = [json.loads(web.make_sample(SEED, i)[3]) for i in range(300)]
    referring, expressions = 0, []
    for meta in metas:
        used = [(r, e) for r in meta["regions"] for e in r["expressions"]]
        referring += bool(used)
        queries = queries_from_alt_text(meta["caption"])
        for r, e in used:
            assert e == e.lower() and e in r["names"], (e, r)
            assert e in queries, (e, meta["caption"])
            longest_other = max(
                (len(q.split()) for q in queries if q in r["names"] and q != e), default=0
            )
            assert len(e.split()) > longest_other, (e, meta["caption"])
            expressions.append(e)
    assert 0.28 < referring / len(metas) < 0.46, referring
    assert all(len(r["expressions"]) <= 1 for m in metas for r in m["regions"])
    # the eval expression kinds all occur: plain "the ...", positions, relations
    assert any(e.split()[0] == "the" and not set(e.split()) & _POSITION_WORDS for e in expressions)
    assert sum(bool(set(e.split()) & _POSITION_WORDS) for e in expressions) > 20
    assert any(set(e.split()) & {"above", "below", "of"} for e in expressions)


def test_plain_alt_texts_are_unchanged_by_the_referring_form():
    """The form is drawn from its own REFEXP stream: a plain alt-text is exactly what the TEXT
    stream alone gives (the texts of the corpus before the referring form existed)."""
    from pipelines.corpus.render import render_sample
    from pipelines.corpus.scene import TEXT, sample_rng

    plain = 0
    for i in range(60):
        meta = json.loads(web.make_sample(SEED, i)[3])
        if any(r["expressions"] for r in meta["regions"]):
            continue
        scene = render_sample(SEED, "web", i)
        assert meta["caption"] == alt_text.plain_alt_text(scene, sample_rng(SEED, "web", i, TEXT))
        plain += 1
    assert plain > 25


def test_eval_stream_does_not_depend_on_the_alt_text_forms(tmp_path, monkeypatch):
    monkeypatch.setattr(alt_text, "REFEXP_RATE", 0.0)
    never = sample_corpus.generate(tmp_path / "never", 4, 12, SEED, shard_size=SHARD)
    monkeypatch.setattr(alt_text, "REFEXP_RATE", 1.0)
    always = sample_corpus.generate(tmp_path / "always", 4, 12, SEED, shard_size=SHARD)
    assert _hashes(never["eval_dir"]) == _hashes(always["eval_dir"])
    assert _hashes(never["web_dir"]) != _hashes(always["web_dir"])


def test_annotate_queries_match_region_names(corpus):
    """The annotate stage's own query builder finds most objects' names in the alt-texts."""
    import webdataset as wds

    from pipelines.queries import queries_from_alt_text

    matched = total = 0
    for s in wds.WebDataset([str(p) for p in corpus["shards"]], shardshuffle=False):
        meta = json.loads(s["json"])
        queries = set(queries_from_alt_text(meta["caption"]))
        for r in meta["regions"]:
            total += 1
            matched += bool(queries & set(r["names"]))
    assert matched / total > 0.75, (matched, total)


# ---------------------------------------------------------------- determinism


def test_same_arguments_same_bytes_and_seed_matters(corpus, tmp_path):
    first = _hashes(corpus["output_dir"])
    again = sample_corpus.generate(tmp_path / "a", NUM_TRAIN, NUM_EVAL, SEED, shard_size=SHARD)
    assert _hashes(again["output_dir"]) == first
    other = sample_corpus.generate(tmp_path / "b", NUM_TRAIN, NUM_EVAL, SEED + 1, shard_size=SHARD)
    other_hashes = _hashes(other["output_dir"])
    assert other_hashes.keys() == first.keys()
    assert all(other_hashes[k] != first[k] for k in first if k.startswith("web/"))


def test_samples_do_not_depend_on_count_or_workers(corpus, tmp_path):
    small = sample_corpus.generate(tmp_path / "s", 10, 5, SEED, shard_size=SHARD, workers=2)
    import tarfile

    def members(path, limit):
        with tarfile.open(path) as tar:
            return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()][:limit]

    assert members(small["shards"][0], 30) == members(corpus["shards"][0], 30)
    big_imgs = corpus["images_dir"]
    for p in sorted(small["images_dir"].iterdir()):
        assert p.read_bytes() == (big_imgs / p.name).read_bytes()


# ---------------------------------------------------------------- eval: COCO + RefCOCO


def test_eval_is_valid_coco_with_disjoint_splits(corpus):
    from pycocotools.coco import COCO

    inst = COCO(str(corpus["instances"]))
    caps = COCO(str(corpus["captions"]))
    assert len(inst.getImgIds()) == NUM_EVAL and set(caps.getImgIds()) == set(inst.getImgIds())
    names = {c["name"] for c in inst.loadCats(inst.getCatIds())}
    assert {"circle", "square", "triangle", "star", "hexagon", "diamond", "cross", "heart"} <= names
    for img in inst.loadImgs(inst.getImgIds()):
        path = corpus["images_dir"] / img["file_name"]
        with Image.open(path) as im:
            assert im.size == (img["width"], img["height"])
        anns = inst.loadAnns(inst.getAnnIds(imgIds=img["id"]))
        assert len(anns) == img["num_objects"] >= 1
        for a in anns:
            x, y, w, h = a["bbox"]
            assert a["iscrowd"] == 0 and w > 0 and h > 0 and 0 < a["area"] <= w * h
            assert x >= 0 and y >= 0 and x + w <= img["width"] and y + h <= img["height"]
        assert img["dominant_shape"] in {inst.cats[a["category_id"]]["name"] for a in anns}
        n_caps = len(caps.getAnnIds(imgIds=img["id"]))
        assert 2 <= n_caps <= 3
    refs = _load(corpus["refs"])
    split_images: dict[str, set[int]] = {}
    for ref in refs:
        assert set(ref) >= {
            "ref_id",
            "ann_id",
            "image_id",
            "split",
            "sentences",
            "category_id",
            "file_name",
        }
        assert inst.anns[ref["ann_id"]]["image_id"] == ref["image_id"]
        assert inst.anns[ref["ann_id"]]["category_id"] == ref["category_id"]
        assert ref["split"] == inst.imgs[ref["image_id"]]["split"]
        for s in ref["sentences"]:
            assert s["tokens"] == s["sent"].split() and s["raw"].lower().rstrip(".") == s["sent"]
        split_images.setdefault(ref["split"], set()).add(ref["image_id"])
    assert set(split_images) == {"train", "val", "testA", "testB"}
    splits = list(split_images.values())
    for i, a in enumerate(splits):
        for b in splits[i + 1 :]:
            assert not a & b
    assert len(split_images["train"]) / NUM_EVAL == pytest.approx(0.6, abs=0.1)
    # most objects get an expression
    assert len(refs) >= 0.8 * len(inst.anns)


# The interpreter: words -> the set of annotations they can denote, from instances.json only.
_FILLER = {"the", "on", "at", "to", "of"}
_EXTREMES = {
    "left": (0, 1),
    "leftmost": (0, 1),
    "right": (0, -1),
    "rightmost": (0, -1),
    "top": (1, 1),
    "upper": (1, 1),
    "bottom": (1, -1),
    "lower": (1, -1),
}
_RELATIONS = {"above": (1, 1), "below": (1, -1), "left of": (0, 1), "right of": (0, -1)}


def _center(ann):
    x, y, w, h = ann["bbox"]
    return (x + w / 2, y + h / 2)


def _select(words, anns, vocab):
    """Objects matching the colour/shape/size words (and an extreme-position word, if any)."""
    colors, shapes, sizes = vocab
    picked, extreme = anns, None
    assert any(w in shapes for w in words), f"no shape in {words}"
    for w in words:
        if w in colors:
            picked = [a for a in picked if a["color"] == w]
        elif w in shapes:
            picked = [a for a in picked if a["shape"] == w]
        elif w in sizes:
            picked = [a for a in picked if a["size"] == w]
        elif w in _EXTREMES:
            extreme = _EXTREMES[w]
        else:
            assert w in _FILLER, f"interpreter does not know the word {w!r}"
    if extreme and picked:
        axis, sign = extreme
        best = min(sign * _center(a)[axis] for a in picked)
        # a small tolerance: a position word must pick a clear winner, not a near tie
        tol = 0.02 * (anns[0]["_dims"][axis])
        picked = [a for a in picked if sign * _center(a)[axis] <= best + tol]
    return picked


def _interpret(sent, anns, vocab):
    for phrase, (axis, sign) in _RELATIONS.items():
        if f" {phrase} " in f" {sent} ":
            target, anchor = sent.split(f" {phrase} ", 1)
            target_words = [w for w in target.split() if w not in ("to",)]
            anchors = _select(anchor.split(), anns, vocab)
            assert len(anchors) == 1, f"anchor of {sent!r} is ambiguous"
            a = sign * _center(anchors[0])[axis]
            return [
                t
                for t in _select(target_words, anns, vocab)
                if t is not anchors[0] and sign * _center(t)[axis] < a
            ]
    return _select(sent.split(), anns, vocab)


def test_every_referring_expression_is_unambiguous(corpus):
    inst = _load(corpus["instances"])
    shapes_by_id = {c["id"]: c["name"] for c in inst["categories"]}
    images = {im["id"]: im for im in inst["images"]}
    by_image: dict[int, list[dict]] = {}
    for a in inst["annotations"]:
        im = images[a["image_id"]]
        by_image.setdefault(a["image_id"], []).append(
            {**a, "shape": shapes_by_id[a["category_id"]], "_dims": (im["width"], im["height"])}
        )
    vocab = (
        {a["color"] for a in inst["annotations"]},
        set(shapes_by_id.values()),
        {"small", "medium", "large"},
    )
    kinds = {"plain": 0, "size": 0, "extreme": 0, "relation": 0}
    needless_position = 0
    for ref in _load(corpus["refs"]):
        anns = by_image[ref["image_id"]]
        target = next(a for a in anns if a["id"] == ref["ann_id"])
        same = [a for a in anns if (a["color"], a["shape"]) == (target["color"], target["shape"])]
        for k, s in enumerate(ref["sentences"]):
            found = _interpret(s["sent"], anns, vocab)
            assert [a["id"] for a in found] == [ref["ann_id"]], (s["sent"], ref, anns)
            words = set(s["sent"].split())
            if any(f" {r} " in f" {s['sent']} " for r in _RELATIONS):
                kinds["relation"] += 1
            elif words & set(_EXTREMES):
                kinds["extreme"] += 1
                needless_position += k == 0 and len(same) == 1
            elif words & vocab[2]:
                kinds["size"] += 1
            else:
                kinds["plain"] += 1
            # simplest first: a unique colour+shape is not padded with a size word
            if k == 0 and len(same) == 1:
                assert not words & vocab[2], s["sent"]
    assert all(v > 0 for v in kinds.values()), kinds
    assert needless_position > 0


# ---------------------------------------------------------------- command line


def test_cli_writes_corpus_and_rejects_bad_flags(tmp_path):
    script = str(REPO / "pipelines" / "sample_corpus.py")
    out = tmp_path / "cli"
    ok = subprocess.run(
        [
            sys.executable,
            script,
            "--output",
            str(out),
            "--num_train",
            "3",
            "--num_eval",
            "2",
            "--seed",
            "5",
            "--shard_size",
            "2",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert str(out) in ok.stdout
    assert sorted(p.name for p in (out / "web").iterdir()) == ["shard-00000.tar", "shard-00001.tar"]
    base = ["--output", str(out), "--num_eval", "1", "--seed", "0"]
    for args in (base + ["--num_train", "x"], base + ["--num_train", "-1"], base):
        r = subprocess.run(
            [sys.executable, script, *args], cwd=REPO, capture_output=True, text=True, check=False
        )
        assert r.returncode != 0
        err = r.stderr.strip()
        assert "Traceback" not in err and len(err.splitlines()) == 1 and "num_train" in err, err


def test_max_objects_bounds_every_image(corpus, tmp_path):
    # workers=2: the bound must reach the spawned worker processes too.
    one = sample_corpus.generate(tmp_path / "one", 20, 12, SEED, shard_size=SHARD, workers=2,
                                 max_objects=1)
    import tarfile

    for shard in one["shards"]:
        with tarfile.open(shard) as tar:
            metas = [json.loads(tar.extractfile(m).read()) for m in tar.getmembers()
                     if m.name.endswith(".json")]
        assert metas and all(len(m["regions"]) == 1 for m in metas)
    instances = _load(one["instances"])
    assert len(instances["annotations"]) == len(instances["images"]) == 12
    assert {i["num_objects"] for i in instances["images"]} == {1}
    many = _load(corpus["instances"])
    assert max(i["num_objects"] for i in many["images"]) > 1
    with pytest.raises(ValueError, match="max_objects"):
        sample_corpus.generate(tmp_path / "bad", 1, 1, SEED, max_objects=0)
    with pytest.raises(ValueError, match="preset"):
        sample_corpus.generate(tmp_path / "bad", 1, 1, SEED, preset="easy")
    for flag, value in (("--max_objects", "7"), ("--preset", "easy")):
        r = subprocess.run(
            [sys.executable, str(REPO / "pipelines" / "sample_corpus.py"), "--output",
             str(tmp_path / "cli"), "--num_train", "1", "--num_eval", "1", "--seed", "0",
             flag, value], cwd=REPO, capture_output=True, text=True, check=False)
        err = r.stderr.strip()
        assert r.returncode != 0 and "Traceback" not in err and len(err.splitlines()) == 1
        assert flag in err, err


def _area_fractions(instances: dict) -> np.ndarray:
    size = {im["id"]: im["width"] * im["height"] for im in instances["images"]}
    return np.asarray([a["bbox"][2] * a["bbox"][3] / size[a["image_id"]]
                       for a in instances["annotations"]])


def test_refcoco_preset_is_shaped_like_refcoco_and_hard_is_not(tmp_path):
    """The default preset's REC statistics (recomputed here from instances.json/refs.json, and
    as written to stats.json) are RefCOCO's: large referents, same-shape distractors, short
    expressions; the `hard` preset keeps the earlier, small-object scenes."""
    ref = sample_corpus.generate(tmp_path / "refcoco", 0, 200, SEED, workers=1)
    hard = sample_corpus.generate(tmp_path / "hard", 0, 200, SEED, workers=1, preset="hard")
    inst, refs = _load(ref["instances"]), _load(ref["refs"])
    anns = {a["id"]: a for a in inst["annotations"]}
    size = {im["id"]: im["width"] * im["height"] for im in inst["images"]}
    rec = [r for r in refs if r["split"] != "train"]
    area = np.asarray([anns[r["ann_id"]]["bbox"][2] * anns[r["ann_id"]]["bbox"][3]
                       / size[r["image_id"]] for r in rec])
    same = np.asarray([sum(a["category_id"] == r["category_id"] and a["image_id"] == r["image_id"]
                           for a in inst["annotations"]) for r in rec])
    words = [len(s["tokens"]) for r in rec for s in r["sentences"]]
    assert 0.15 <= np.median(area) <= 0.3 and np.mean(area < 0.04) < 0.03
    assert np.mean((same >= 2) & (same <= 4)) > 0.7
    assert 3.0 <= np.mean(words) <= 5.0
    stats = _load(ref["stats"])
    assert stats["num_refs"] == len(rec)
    assert stats["referent_area_median"] == pytest.approx(np.median(area), abs=1e-4)
    assert stats["same_category_2_to_4"] == pytest.approx(np.mean((same >= 2) & (same <= 4)),
                                                          abs=1e-4)
    assert stats["expression_words_mean"] == pytest.approx(np.mean(words), abs=1e-3)
    assert stats["refcoco"]["expression_words_mean"] == 3.5
    # The hard preset: many referents a few percent of the image.
    assert np.median(_area_fractions(_load(hard["instances"]))) < 0.08
    assert _hashes(ref["eval_dir"]) != _hashes(hard["eval_dir"])
