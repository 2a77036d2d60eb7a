"""Task formatting: round trips, loss mask placement, truncation that never cuts a box."""

from __future__ import annotations

import random

import numpy as np
import pytest

from model import tasks
from model import tokenizer as tokenizer_lib

WORDS = "a dog cat red blue green car on the left right of with man woman table big small".split()


@pytest.fixture(scope="module")
def tok() -> tokenizer_lib.Tokenizer:
    rng = random.Random(0)
    sents = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 10))) for _ in range(1500)]
    sents += ["cap aref gcap :"] * 50
    return tokenizer_lib.Tokenizer(tokenizer_lib.train_model(sents, 1500, model_type="bpe"))


@pytest.mark.parametrize("num_loc", [1024, 32, 7])
def test_box_quantization_within_one_bin(num_loc):
    rng = np.random.default_rng(0)
    for _ in range(200):
        y = np.sort(rng.uniform(size=2))
        x = np.sort(rng.uniform(size=2))
        box = np.asarray([y[0], x[0], y[1], x[1]])
        ids = tasks.box_to_tokens(box, 100, num_loc)
        assert all(100 <= i < 100 + num_loc for i in ids)
        assert ids == [100 + b for b in tasks.box_to_bins(box, num_loc).tolist()]
        back = tasks.tokens_to_box(ids, 100, num_loc)
        assert back is not None and np.all(np.abs(back - box) <= 1 / num_loc)
    # Edges: 1.0 goes to the last bin, 0.0 to the first.
    top = num_loc - 1
    assert tasks.box_to_bins([0.0, 0.0, 1.0, 1.0], num_loc).tolist() == [0, 0, top, top]
    assert tasks.box_to_bins([0.5, 0.25, 0.75, 0.999], 1024).tolist() == [512, 256, 768, 1022]
    assert tasks.box_to_bins([0.5, 0.25, 0.75, 0.999], 32).tolist() == [16, 8, 24, 31]


@pytest.mark.parametrize(
    "ids",
    [[5, 6, 7], [5, 6, 7, 8, 9], [5, 6, 4, 8], [5 + 1024, 6, 7, 8], [9, 6, 7, 8], [5, 9, 7, 8]],
)
def test_malformed_boxes_rejected(ids):
    assert tasks.tokens_to_box(ids, loc_start=5, num_loc=1024) is None


def _target(f: tasks.Formatted) -> np.ndarray:
    return f.targets[f.loss_mask > 0]


@pytest.mark.parametrize("task", tasks.TASKS)
def test_loss_mask_exactly_on_target_and_eos(tok, task):
    box = [0.1, 0.2, 0.6, 0.9]
    f = tasks.format_task(task, tok, max_len=32, caption="a red dog on the table",
                          phrase="red dog", box=box)
    prefix = tok.encode(task)
    full = tasks.target_ids(task, tok, caption="a red dog on the table", phrase="red dog", box=box)
    p, t = len(prefix), len(full)
    assert f.inputs.dtype == np.int32 and f.loss_mask.dtype == np.float32
    assert f.inputs[0] == tok.bos_id and f.inputs[1 : 1 + p].tolist() == prefix
    assert f.loss_mask[:p].sum() == 0  # no loss on the prefix
    assert f.loss_mask[p : p + t + 1].tolist() == [1.0] * (t + 1)
    assert f.loss_mask[p + t + 1 :].sum() == 0  # nor on padding
    assert _target(f).tolist() == full + [tok.eos_id]
    assert np.array_equal(f.inputs[1:], f.targets[:-1])  # targets are inputs shifted by one


def test_round_trips(tok):
    box = np.asarray([0.12, 0.25, 0.5, 0.875])
    cap = tasks.format_task("cap", tok, max_len=32, caption="a big green car")
    assert tasks.decode_target("cap", _target(cap), tok).text == "a big green car"
    aref = tasks.format_task("aref", tok, max_len=32, phrase="the left dog", box=box)
    assert tok.decode(_target(aref)).startswith("the left dog :<loc")
    d = tasks.decode_target("aref", _target(aref), tok)
    assert d.text == "the left dog" and np.all(np.abs(d.box - box) <= 1 / 1024)
    gcap = tasks.format_task("gcap", tok, max_len=32, phrase="the left dog", box=box)
    assert tok.decode(_target(gcap)).endswith("> : the left dog")
    d = tasks.decode_target("gcap", _target(gcap), tok)
    assert d.text == "the left dog" and np.all(np.abs(d.box - box) <= 1 / 1024)


def test_no_lone_space_piece_before_box(tok):
    f = tasks.format_task("aref", tok, max_len=32, phrase="dog", box=[0, 0, 1, 1])
    pieces = [tok.id_to_piece(i) for i in _target(f)]
    assert "▁" not in pieces, pieces
    assert pieces[-5:] == ["<loc0000>", "<loc0000>", "<loc1023>", "<loc1023>", "</s>"]


def test_decode_rejects_malformed_generated_box(tok):
    phrase = tok.encode("red dog :")
    three = [tok.loc_start + 1, tok.loc_start + 2, tok.loc_start + 3]
    assert tasks.decode_target("aref", phrase + three + [tok.eos_id], tok).box is None
    flipped = [tok.loc_start + 9, tok.loc_start + 1, tok.loc_start + 2, tok.loc_start + 3]
    assert tasks.decode_target("aref", phrase + flipped, tok).box is None
    assert tasks.decode_target("aref", phrase + [tok.eos_id], tok).box is None


@pytest.mark.parametrize("max_len", range(6, 20))
def test_truncation_never_cuts_a_box(tok, max_len):
    phrase = " ".join(WORDS)  # far longer than max_len
    box = [0.1, 0.2, 0.3, 0.4]
    for task in ("aref", "gcap"):
        f = tasks.format_task(task, tok, max_len=max_len, phrase=phrase, box=box)
        assert f.inputs.shape == (max_len,) and f.targets.shape == (max_len,)
        locs = [i for i in f.targets.tolist() if tok.is_loc(i)]
        if f.loss_mask.sum() == 0:
            assert locs == []  # dropped whole, not cut
            continue
        assert locs == tasks.box_to_tokens(box, tok.loc_start, tok.num_loc)
        t = _target(f).tolist()
        assert t[-1] == tok.eos_id  # EOS kept when the text is cut
        d = tasks.decode_target(task, t, tok)
        assert d.box is not None and d.text and phrase.startswith(d.text)
    cap = tasks.format_task("cap", tok, max_len=max_len, caption=phrase)
    assert _target(cap).tolist()[-1] == tok.eos_id
    assert phrase.startswith(tasks.decode_target("cap", _target(cap), tok).text)


def test_example_without_regions_trains_cap_only(tok):
    out = tasks.format_example(tok, np.random.default_rng(0), caption="a dog",
                               boxes=np.zeros((0, 4)), phrases=(), max_len=16)
    assert not out["has_regions"]
    assert out["cap/loss_mask"].sum() > 0
    for task in ("aref", "gcap"):
        assert out[f"{task}/loss_mask"].sum() == 0
        assert out[f"{task}/inputs"][0] == tok.bos_id  # not all pad: some key stays visible
        assert not any(tok.is_loc(i) for i in out[f"{task}/targets"])


def test_regions_sampled_per_task_and_deterministic(tok):
    boxes = np.asarray([[0.0, 0.0, 0.1, 0.1], [0.5, 0.5, 0.9, 0.9], [0.2, 0.3, 0.4, 0.6]])
    phrases = ("red dog", "blue car", "green table")
    seen = set()
    for seed in range(40):
        a = tasks.format_example(tok, np.random.default_rng(seed), caption="x", boxes=boxes,
                                 phrases=phrases, max_len=24)
        b = tasks.format_example(tok, np.random.default_rng(seed), caption="x", boxes=boxes,
                                 phrases=phrases, max_len=24)
        assert all(np.array_equal(a[k], b[k]) for k in a)
        ra = tasks.decode_target("aref", a["aref/targets"][a["aref/loss_mask"] > 0], tok)
        rg = tasks.decode_target("gcap", a["gcap/targets"][a["gcap/loss_mask"] > 0], tok)
        i, j = phrases.index(ra.text), phrases.index(rg.text)
        assert np.all(np.abs(ra.box - boxes[i]) <= 1 / 1024)  # phrase and box stay paired
        seen.add((i, j))
    assert len({i for i, _ in seen}) == 3 and len(seen) > 3  # independent draws per task


@pytest.mark.parametrize("n", [3, 2, 0])
def test_k_regions_per_task_are_distinct_paired_rows(tok, n):
    """regions_per_task=3: aref and gcap become [3, L]; each row pairs a phrase with its own box,
    rows use distinct regions while the image has enough, and an image without regions trains
    none of them."""
    boxes = np.asarray([[0.0, 0.0, 0.1, 0.1], [0.5, 0.5, 0.9, 0.9], [0.2, 0.3, 0.4, 0.6]])[:n]
    phrases = ("red dog", "blue car", "green table")[:n]
    out = tasks.format_example(tok, np.random.default_rng(0), caption="x", boxes=boxes,
                               phrases=phrases, max_len=24, regions_per_task=3)
    assert out["cap/inputs"].shape == (24,)
    for task in ("aref", "gcap"):
        assert out[f"{task}/inputs"].shape == out[f"{task}/loss_mask"].shape == (3, 24)
        used = []
        for row in range(3):
            m = out[f"{task}/loss_mask"][row] > 0
            if not n:
                assert not m.any()
                continue
            d = tasks.decode_target(task, out[f"{task}/targets"][row][m], tok)
            i = phrases.index(d.text)
            assert np.all(np.abs(d.box - boxes[i]) <= 1 / 1024)
            used.append(i)
        assert len(set(used)) == min(n, 3)
    with pytest.raises(ValueError, match="regions_per_task"):
        tasks.format_example(tok, np.random.default_rng(0), caption="x", boxes=boxes,
                             phrases=phrases, regions_per_task=0)


def test_aref_regions_sets_aref_rows_apart_from_gcap(tok):
    """aref_regions=3 with regions_per_task=1: aref is [3, L] over distinct regions, gcap stays
    one [L] row; K = 1 for both keeps the stream every one-region run has used."""
    boxes = np.asarray([[0.0, 0.0, 0.1, 0.1], [0.5, 0.5, 0.9, 0.9], [0.2, 0.3, 0.4, 0.6]])
    phrases = ("red dog", "blue car", "green table")
    out = tasks.format_example(tok, np.random.default_rng(0), caption="x", boxes=boxes,
                               phrases=phrases, max_len=24, aref_regions=3)
    assert out["aref/inputs"].shape == (3, 24) and out["gcap/inputs"].shape == (24,)
    texts = {tasks.decode_target("aref", out["aref/targets"][r][out["aref/loss_mask"][r] > 0],
                                 tok).text for r in range(3)}
    assert texts == set(phrases)
    one = tasks.format_example(tok, np.random.default_rng(5), caption="x", boxes=boxes,
                               phrases=phrases, max_len=24, aref_regions=1)
    same = tasks.format_example(tok, np.random.default_rng(5), caption="x", boxes=boxes,
                                phrases=phrases, max_len=24)
    for key in one:
        np.testing.assert_array_equal(one[key], same[key])
    with pytest.raises(ValueError, match="aref_regions"):
        tasks.format_example(tok, np.random.default_rng(0), caption="x", boxes=boxes,
                             phrases=phrases, aref_regions=-1)


def test_ambiguous_phrases_train_no_aref_row(tok):
    """"star" beside "red star" on another object, or one phrase on two objects, names more than
    one box: with aref_unambiguous such regions never become aref targets (gcap still uses them)."""
    boxes = np.asarray([[0.0, 0.0, 0.2, 0.2], [0.5, 0.5, 0.9, 0.9], [0.5, 0.5, 0.9, 0.88],
                        [0.1, 0.6, 0.3, 0.9], [0.6, 0.0, 0.9, 0.3]])
    phrases = ("red star", "star", "the red star on the left", "blue dog", "blue dog")
    # 0: "red star" is in "the red star on the left" on another object -> ambiguous
    # 1: "star" is in "red star" (another object) -> ambiguous
    # 2: no other phrase holds all of its words
    # 3, 4: the same phrase on two objects -> both ambiguous
    assert tasks.unambiguous_regions(phrases, boxes) == [2]
    same_box = np.asarray([[0.1, 0.1, 0.5, 0.5], [0.1, 0.1, 0.5, 0.5]])
    assert tasks.unambiguous_regions(("star", "red star"), same_box) == [0, 1]
    aref_rows, gcap_rows = set(), set()
    for seed in range(30):
        out = tasks.format_example(tok, np.random.default_rng(seed), caption="x", boxes=boxes,
                                   phrases=phrases, max_len=24, aref_unambiguous=True)
        m = out["aref/loss_mask"] > 0
        aref_rows.add(tasks.decode_target("aref", out["aref/targets"][m], tok).text)
        m = out["gcap/loss_mask"] > 0
        gcap_rows.add(tasks.decode_target("gcap", out["gcap/targets"][m], tok).text)
    assert aref_rows == {"the red star on the left"} and len(gcap_rows) > 1
    none_ok = tasks.format_example(tok, np.random.default_rng(0), caption="x", boxes=boxes[3:],
                                   phrases=phrases[3:], max_len=24, aref_unambiguous=True,
                                   regions_per_task=2)
    assert none_ok["aref/loss_mask"].sum() == 0 and none_ok["gcap/loss_mask"].sum() > 0


def test_task_mix_sample(tok):
    boxes, phrases = np.asarray([[0.1, 0.1, 0.5, 0.5]]), ("red dog",)
    counts = dict.fromkeys(tasks.TASKS, 0)
    for seed in range(300):
        out = tasks.format_example(tok, np.random.default_rng(seed), caption="a dog", boxes=boxes,
                                   phrases=phrases, max_len=16, task_mix="sample",
                                   task_weights={"cap": 2.0, "aref": 1.0, "gcap": 1.0})
        active = [t for t in tasks.TASKS if out[f"{t}/loss_mask"].sum() > 0]
        assert len(active) == 1
        counts[active[0]] += 1
    assert 120 < counts["cap"] < 180 and counts["aref"] > 50 and counts["gcap"] > 50
    with pytest.raises(ValueError, match="task_mix"):
        tasks.choose_tasks(np.random.default_rng(0), True, "some", {})


def test_prompts_match_training_prefixes(tok):
    box = [0.1, 0.2, 0.3, 0.4]
    for task in tasks.TASKS:
        f = tasks.format_task(task, tok, max_len=32, caption="a dog", phrase="red dog", box=box)
        prompt = tasks.make_prompt(task, tok, phrase="red dog", box=box)
        assert f.inputs[: len(prompt)].tolist() == prompt


def test_a_long_expression_is_cut_in_the_prompt_as_in_training(tok):
    box = [0.1, 0.2, 0.3, 0.4]
    phrase = "the red dog on the left of the big green tree " * 3
    for max_len in (12, 16, 24):
        f = tasks.format_task("aref", tok, max_len=max_len, phrase=phrase, box=box)
        prompt = tasks.make_prompt("aref", tok, phrase=phrase, max_len=max_len)
        assert f.inputs[: len(prompt)].tolist() == prompt  # the very inputs the box follows
        assert len(prompt) <= max_len - 4  # room for the four location tokens
        assert prompt[-len(tok.encode(":")) :] == tok.encode(":")
    assert len(tasks.make_prompt("aref", tok, phrase=phrase)) > 24  # uncut without max_len


def test_location_tokens_come_from_boxes_only_never_from_text(tok):
    lo, hi = tok.loc_start, tok.loc_start + tok.num_loc
    # Full-width brackets become "<loc0100>" under the tokenizer's NFKC normalisation.
    text = "a dog <loc0100> on grass<loc0007> or \uff1cloc0200\uff1e"
    assert sum(lo <= i < hi for i in tok.encode(text)) == 3  # the tokenizer maps all three
    cap = tasks.format_task("cap", tok, max_len=48, caption=text)
    assert not any(lo <= i < hi for i in cap.targets)
    box = [0.1, 0.2, 0.3, 0.4]
    for task in ("aref", "gcap"):
        f = tasks.format_task(task, tok, max_len=48, phrase=text, box=box)
        locs = [int(i) - lo for i in f.targets if lo <= i < hi]
        assert locs == list(tasks.box_to_bins(box, tok.num_loc))  # the box's four, nothing from the phrase
        assert "loc0100" in tasks.decode_target(task, f.targets[f.loss_mask > 0], tok).text
    prompt = tasks.make_prompt("aref", tok, phrase=text)
    assert not any(lo <= i < hi for i in prompt)


def test_parallel_inputs_numpy_and_jax(tok):
    f = tasks.format_task("cap", tok, max_len=16, caption="a red dog")
    inputs = np.stack([f.inputs, f.inputs])
    mask = np.stack([f.loss_mask, np.zeros_like(f.loss_mask)])
    out = tasks.parallel_inputs(inputs, mask, tok.mask_id)
    p = len(tok.encode("cap"))
    n = int(f.loss_mask.sum())
    assert out[0, : p + 1].tolist() == f.inputs[: p + 1].tolist()  # BOS + prefix visible
    assert (out[0, p + 1 : p + n + 1] == tok.mask_id).all()  # every target-predicting input
    assert out[0, p + n + 1 :].tolist() == f.inputs[p + n + 1 :].tolist()
    assert np.array_equal(out[1], inputs[1])  # nothing masked without a loss mask
    jax = pytest.importorskip("jax")
    jout = jax.jit(tasks.parallel_inputs, static_argnums=2)(inputs, mask, tok.mask_id)
    assert np.array_equal(np.asarray(jout), out)


def test_transfer_decoder_length_fits_the_longest_expression(tok):
    from evaluation.transfer_decoder import fit_max_len

    box = [0.1, 0.2, 0.3, 0.4]
    sentences = ["red dog", "the big red dog on the left of the small blue cat", "cat"]
    n = fit_max_len(tok, sentences)
    assert n % 8 == 0
    whole = tasks.format_task("aref", tok, max_len=128, phrase=sentences[1], box=box)
    for s in sentences:  # every row whole at n: same target as with room to spare
        f = tasks.format_task("aref", tok, max_len=n, phrase=s, box=box)
        g = tasks.format_task("aref", tok, max_len=128, phrase=s, box=box)
        assert f.targets[f.loss_mask > 0].tolist() == g.targets[g.loss_mask > 0].tolist()
    # ... and 8 shorter would cut the longest one.
    cut = tasks.format_task("aref", tok, max_len=n - 8, phrase=sentences[1], box=box)
    assert cut.loss_mask.sum() < whole.loss_mask.sum()
    assert fit_max_len(tok, ["word " * 500]) == 128  # capped: one essay does not set the cost
