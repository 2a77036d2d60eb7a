"""The evaluators' metric formulas on hand-computed cases: REC's per-split rows (Acc@0.5, its
image-bootstrap interval, mIoU, malformed, pointing), captioning's CIDEr-D rows, grounded
captioning's phrase metrics and REC transfer's report. No model: the predictions are given."""

from __future__ import annotations

import collections
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider

from evaluation.data.refcoco import RecData, RecExample
from evaluation.evaluators import base, captioning, gcap, rec_transfer
from evaluation.evaluators.rec_common import choice_hits, same_answer, split_metrics
from evaluation.metrics import caption_scores

GT = (0.0, 0.0, 0.5, 0.5)
# Shifted right by a third of its width: overlap 1/6, union 1/3, IoU exactly 0.5 (a hit: >=).
EXACTLY_HALF = (0.0, 1 / 6, 0.5, 2 / 3)
# A quarter of the box [0.5, 0.5, 1, 1] in its corner: IoU 0.0625 / 0.25 = 0.25, centre inside.
QUARTER = (0.5, 0.5, 0.75, 0.75)


def _examples(split: str = "val") -> list[RecExample]:
    """Two expressions on image 1, one on image 2. Image 1 also holds an object at QUARTER."""
    boxes = [GT, (0.5, 0.5, 1.0, 1.0), (0.2, 0.2, 0.6, 0.6)]
    others = [(QUARTER,), (QUARTER, GT), ()]
    return [RecExample(i, 1 if i < 2 else 2, f"img{i}.jpg", split, f"thing {i}", box, other)
            for i, (box, other) in enumerate(zip(boxes, others, strict=True))]


PREDS = [np.array(EXACTLY_HALF), np.array(QUARTER), None]  # IoUs 0.5, 0.25, malformed
EXPECTED = {
    "acc@0.5": 1 / 3, "miou": (0.5 + 0.25 + 0.0) / 3, "malformed": 1 / 3,
    "pointing": 2 / 3,  # both well-formed boxes have their centre inside the truth
    "count": 3.0,
    # Expression 1 misses its referent but lands exactly on the QUARTER object; expression 0 is
    # a hit (its other object does not count), expression 2 is malformed.
    "wrong_object": 1 / 3,
    # Image 1's two expressions name different objects (true IoU 0) and get different boxes
    # (EXACTLY_HALF and QUARTER do not overlap); image 2 has one expression: no pair repeats.
    "same_answer": 0.0,
    # Hits per image: image 1 [1, 0], image 2 [0]. Resampling the two images gives the means
    # 1/2 (1,1), 1/3 (1,2 or 2,1) and 0 (2,2), each pure draw a quarter of the time: the 95%
    # interval's ends are 0 and 1/2.
    "acc@0.5_lo": 0.0, "acc@0.5_hi": 0.5,
}


def test_rec_split_metrics_by_hand():
    rows = dict(split_metrics("val", _examples(), PREDS))
    assert set(rows) == {f"val/{k}" for k in EXPECTED}
    for key, value in EXPECTED.items():
        assert rows[f"val/{key}"] == pytest.approx(value, abs=1e-9), key


def test_same_answer_counts_pairs_of_different_objects_given_one_box():
    """Image 1: three expressions, two naming GT (IoU 1 with each other: not a pair of different
    objects) and one naming [0.5, 0.5, 1, 1]. Answering QUARTER everywhere repeats one box for
    both different-object pairs; answering the truth repeats none."""
    boxes = [GT, GT, (0.5, 0.5, 1.0, 1.0)]
    exs = [RecExample(i, 1, "img.jpg", "val", f"thing {i}", box) for i, box in enumerate(boxes)]
    assert same_answer(exs, [np.array(QUARTER)] * 3) == 1.0
    assert same_answer(exs, [np.array(b) for b in boxes]) == 0.0
    # A malformed answer leaves its pairs out: one pair remains, answered alike.
    assert same_answer(exs, [None, np.array(QUARTER), np.array(QUARTER)]) == 1.0
    assert same_answer(exs, [np.array(GT), None, np.array(GT)]) == 1.0
    assert same_answer(exs[:2], [np.array(QUARTER)] * 2) == 0.0  # one object: no pair


def test_cider_d_by_hand_and_pycocoevalcap_agree():
    """Two images, refs "a red star" / "a blue circle": "a" is in both (idf 0), every other
    n-gram in one (idf log 2). A hypothesis equal to its reference scores 1 on 1-, 2- and
    3-grams and 0 on 4-grams (it has none): 10 * 3/4 = 7.5. "a blue square" shares half of its
    idf-weighted unigrams and bigrams ("blue", "a blue") and no trigram: 10 * (1/2 + 1/2) / 4 =
    2.5. Same lengths, so no length penalty; corpus CIDEr-D is the mean over images."""
    refs = {1: ["A red star."], 2: ["a blue circle"]}
    hyps = {1: "a red star", 2: "a blue square"}
    scores = caption_scores(refs, hyps)
    assert scores["cider"] == pytest.approx((7.5 + 2.5) / 2)
    gts = {1: ["a red star"], 2: ["a blue circle"]}
    res = {k: [v] for k, v in hyps.items()}
    cider, per_image = Cider().compute_score(gts, res)
    assert cider == pytest.approx(scores["cider"]) and list(per_image) == pytest.approx([7.5, 2.5])
    assert scores["bleu4"] == pytest.approx(Bleu(4).compute_score(gts, res, verbose=0)[0][3])


def test_captioning_rows_per_beam():
    ev = object.__new__(captioning.Evaluator)
    ev.image_ids, ev.split, ev.beam_sizes = [1, 2], "val", (1, 3)
    ev.data = SimpleNamespace(references={1: ["A red star."], 2: ["a blue circle"]},
                              problems=collections.Counter(no_captions=1))
    by_beam = {1: {1: "a red star", 2: "a blue square"}, 3: {1: "a red star", 2: "a blue circle"}}
    ev.captions = lambda params, beam: by_beam[beam]
    rows = dict(ev.run(SimpleNamespace(params=None)))
    assert rows["val/cider"] == pytest.approx(5.0)  # the case above
    assert rows["val/cider_beam3"] == pytest.approx(7.5)  # both captions exact
    assert rows["val/bleu4"] < rows["val/bleu4_beam3"]
    assert (rows["val/count"], rows["problems/no_captions"]) == (2.0, 1.0)
    assert len(rows) == 6


def test_gcap_phrase_metrics(monkeypatch):
    items = [  # (category, names, the model's output)
        ("star", {"red star"}, "Red star!"),  # exact, category named
        ("circle", {"blue circle"}, "a blue circle shape"),  # category named only
        ("star", {"green star"}, "a starfish"),  # neither: "starfish" is not the word "star"
        ("", {"thing"}, "thing"),  # exact; no category to name
    ]
    outputs = {k: out for k, (_, _, out) in enumerate(items)}
    ev = object.__new__(gcap.Evaluator)
    ev.run_ = SimpleNamespace(tokenizer=None)
    ev.problems = collections.Counter()
    ev.items = {"val": [dict(key=k, path=f"{k}.jpg", box=(k, 0, 0, 0), category=cat, names=names,
                             refs=[f"the {cat or 'thing'}"]) for k, (cat, names, _) in
                        enumerate(items)]}
    ev.images = SimpleNamespace(batch=lambda paths: paths)
    ev.predictor = SimpleNamespace(batch_size=3, encode=lambda params, images: images,
                                   generate=lambda params, enc, prompts: prompts)
    # The prompt carries the item's key in its box; decoding it gives that item's output.
    monkeypatch.setattr(gcap.tasks, "make_prompt", lambda task, tok, box: box[0])
    monkeypatch.setattr(gcap.tasks, "decode_target",
                        lambda task, ids, tok: SimpleNamespace(text=outputs[ids]))
    rows = dict(ev.run(SimpleNamespace(params=None)))
    assert rows["val/exact_match"] == pytest.approx(2 / 4)
    assert rows["val/category_hit"] == pytest.approx(2 / 4)
    refs = {it["key"]: it["refs"] for it in ev.items["val"]}
    assert rows["val/cider"] == pytest.approx(caption_scores(refs, outputs)["cider"])
    assert rows["val/count"] == 4.0 and len(rows) == 4


def test_rec_transfer_report(monkeypatch, tmp_path):
    """Given the trained decoder's predictions, the report is the training curve's ends, the
    per-split REC rows of those predictions (as above) and the untrained floor."""
    ev = object.__new__(rec_transfer.Evaluator)
    train = [RecExample(9, 9, "train.jpg", "train", "x", GT)]
    ev.config = {}
    ev.run_ = SimpleNamespace(workdir=str(tmp_path), tokenizer=None)
    ev.data = RecData(train + _examples("val"), collections.Counter(box_outside_image=2))
    ev.train, ev.splits, ev.train_split = train, ("val",), "train"
    ev.spec = SimpleNamespace(seed=0, max_len=7)
    ev.source = ev.shared = ev.images = ev.decoder = ev.data_train = None
    ev.batch_size, ev.report_untrained = 2, True
    losses = [12.0 - i for i in range(12)]  # first 12, last ten 10 .. 1
    monkeypatch.setattr(rec_transfer, "features", lambda *a: np.zeros((1, 4, 8), np.float32))
    monkeypatch.setattr(rec_transfer.td, "init", lambda *a: "untrained")
    monkeypatch.setattr(rec_transfer.td, "train", lambda *a: ("trained", losses))
    given = {"trained": PREDS, "untrained": [np.array(GT)] * 3}
    ev._scores = lambda params, ctx, split: (ev.data.split(split), given[params])
    ctx = base.StepContext(step=5, step_dir=tmp_path, run=None, _params="checkpoint")
    rows = dict(ev.run(ctx))
    assert (rows["train/loss_first"], rows["train/loss_last"]) == (12.0, 5.5)
    assert (rows["train/examples"], rows["train/max_len"]) == (1.0, 7.0)
    for key, value in EXPECTED.items():
        assert rows[f"val/{key}"] == pytest.approx(value, abs=1e-9), key
    # Untrained: GT against the three truths: IoU 1; 0 (they touch at a corner); GT [0, 0.5]^2
    # vs [0.2, 0.6]^2: overlap 0.3^2 = 0.09, union 0.25 + 0.16 - 0.09 = 0.32.
    assert rows["val/acc@0.5_untrained"] == pytest.approx(1 / 3)
    assert rows["val/miou_untrained"] == pytest.approx((1 + 0 + 0.09 / 0.32) / 3)
    assert rows["problems/box_outside_image"] == 2.0
    written = (tmp_path / "eval" / "predictions" / "rec_transfer_val_step5.jsonl").read_text()
    ious = [json.loads(line)["iou"] for line in written.splitlines()]
    assert ious[:2] == pytest.approx([0.5, 0.25]) and ious[2] is None
    assert not any(math.isnan(v) for v in rows.values())


def test_choice_hits_by_hand():
    """An example scores 1 only when its own box (its first row) is strictly the most likely."""
    owner = [0, 0, 0, 2, 2]
    ll = np.array([-1.0, -2.0, -3.0, -5.0, -5.0])  # example 0: own box best; 2: a tie
    hits = choice_hits(owner, ll, 3)
    assert hits[0] == 1.0 and math.isnan(hits[1]) and hits[2] == 0.0
    assert choice_hits([0, 0], np.array([-2.0, -1.0]), 1).tolist() == [0.0]
