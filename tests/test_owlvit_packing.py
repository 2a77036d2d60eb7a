"""Trie packing of text queries: structure of the packed rows, and exactness against the plain tower."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipelines.owlvit.packing import pack  # noqa: E402


def test_shared_prefixes_are_placed_once_and_masks_follow_ancestry():
    seqs = [[1, 5, 6, 2], [1, 5, 6, 7, 2], [1, 5, 8, 2], [1, 9, 2], [1, 5, 6, 2]]
    p = pack(seqs, row_len=16, eos_slots=8)
    assert p.ids.shape == (1, 16)
    # nodes: 1 5 6 2 | 7 2 | 8 2 | 9 2 -> 10 tokens (not 20); the duplicate adds nothing.
    assert p.tokens == 10
    for n, s in enumerate(seqs):
        e = p.eos_idx[p.out_row[n], p.out_slot[n]]
        attended = np.flatnonzero(p.mask[p.out_row[n], e])
        # An EOS attends to exactly its own path, in order, with positions 0..len-1.
        np.testing.assert_array_equal(p.ids[p.out_row[n], attended], s)
        np.testing.assert_array_equal(p.positions[p.out_row[n], attended], np.arange(len(s)))
    assert p.out_slot[0] == p.out_slot[4] and p.out_row[0] == p.out_row[4]


def test_rows_close_when_full_and_restart_from_the_full_path():
    seqs = [[1, 3, k, 2] for k in range(10, 20)]
    p = pack(seqs, row_len=8, eos_slots=3)
    # Row 1: 1 3 a 2 b 2 c 2 (8 tokens, 3 ends); each later row repeats the 1 3 prefix.
    assert p.ids.shape[0] == 4 and p.tokens == 8 * 3 + 4
    assert p.eos_idx.shape == (4, 3)
    for n, s in enumerate(seqs):
        r, e = p.out_row[n], p.eos_idx[p.out_row[n], p.out_slot[n]]
        np.testing.assert_array_equal(p.ids[r, np.flatnonzero(p.mask[r, e])], s)
    with pytest.raises(ValueError, match="1..8 tokens"):
        pack([[1] * 9], row_len=8, eos_slots=3)


def test_packed_text_tower_equals_the_plain_one(tmp_path):
    pytest.importorskip("transformers")
    import jax
    from owlvit_fixtures import make_tiny_checkpoint

    from pipelines.owlvit import checkpoint as ckpt_lib
    from pipelines.owlvit.model import OwlViT
    from pipelines.owlvit.text import CLIP_BEST_TEMPLATES, QueryTokenizer, apply_templates

    directory = make_tiny_checkpoint(tmp_path, 1)
    ck = ckpt_lib.load(str(directory))
    tok = QueryTokenizer(directory, ck.config.max_text_len)
    ngrams = ["dog", "dog on", "dog on the", "dog on the beach", "red", "red car", "a cat",
              "a cat on a very long red sofa near the window today"]  # last one truncates
    texts = apply_templates(ngrams, CLIP_BEST_TEMPLATES)
    model = OwlViT(ck.config)
    ids, eos = tok.encode(texts)
    want = np.asarray(model.apply({"params": ck.params}, ids, eos, method=OwlViT.embed_text))
    p = pack(tok.token_lists(texts), row_len=32, eos_slots=10)
    assert p.tokens < 0.6 * sum(len(s) for s in tok.token_lists(texts))  # real sharing
    fn = jax.jit(lambda *a: model.apply({"params": ck.params}, *a, method=OwlViT.embed_text_packed))
    got = np.asarray(fn(p.ids, p.positions, p.mask, p.eos_idx))[p.out_row, p.out_slot]
    np.testing.assert_allclose(got, want, atol=2e-5)
