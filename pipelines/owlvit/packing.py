"""Packs many short token sequences into fixed-size rows that share their common prefixes (a trie).

Why this is exact: CLIP's text tower is causal and pools the EOS token, so a token's hidden state
depends only on the tokens before it. Sequences that start alike ("a photo of the large dog ...",
"a photo of the large dog on ...": one template, n-grams starting at the same word) can compute the
shared prefix once; every token attends to its own ancestors only (a tree attention mask) and uses
its depth as its position id. Masked-out keys get zero softmax weight, so each EOS feature is the one
the sequence would get alone (up to float summation order).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass
class PackedRows:
    """Rows of a packed trie. R rows of `row_len` tokens, at most `eos_slots` sequence ends per row.

    ids, positions: int32[R, L]; mask: bool[R, L, L] (mask[r, i, j]: token i may attend to j, i.e.
    j is i or an ancestor of i); eos_idx: int32[R, E] in-row index of each sequence end (pads: 0);
    out_row, out_slot: int32[N] where input sequence n's feature lands in the [R, E] output;
    tokens: real (non-pad) tokens placed.
    """

    ids: np.ndarray
    positions: np.ndarray
    mask: np.ndarray
    eos_idx: np.ndarray
    out_row: np.ndarray
    out_slot: np.ndarray
    tokens: int


def pack(seqs: Sequence[Sequence[int]], row_len: int, eos_slots: int) -> PackedRows:
    """Packs token sequences (each BOS ... EOS, len <= row_len) into trie rows.

    Sequences are visited in lexicographic order (a depth-first walk of their trie), so a new
    sequence shares the longest prefix with the previous one; only its remaining tokens are added.
    A row closes when the next sequence's new tokens or its end slot do not fit; the next row
    starts from the sequence's full path (a prefix is recomputed once per row, not per sequence).
    """
    if any(len(s) > row_len or len(s) == 0 for s in seqs):
        raise ValueError(f"every sequence needs 1..{row_len} tokens")
    order = sorted(range(len(seqs)), key=lambda i: tuple(seqs[i]))
    rows: list[tuple[list[int], list[int], list[int]]] = []  # ids, parents, eos indices
    out_row = np.zeros(len(seqs), np.int32)
    out_slot = np.zeros(len(seqs), np.int32)
    stack: list[tuple[int, int]] = []  # (token, in-row index) along the previous sequence's path
    ids: list[int] = []
    parents: list[int] = []
    eos: list[int] = []
    for n in order:
        s = list(seqs[n])
        common = 0
        while common < min(len(s), len(stack)) and stack[common][0] == s[common]:
            common += 1
        if common == len(s) == len(stack):  # a duplicate (sorted: right after its twin)
            out_row[n], out_slot[n] = len(rows), len(eos) - 1
            continue
        if len(ids) + len(s) - common > row_len or len(eos) >= eos_slots:
            rows.append((ids, parents, eos))
            ids, parents, eos, stack, common = [], [], [], [], 0
        stack = stack[:common]
        for tok in s[common:]:
            parents.append(stack[-1][1] if stack else -1)
            stack.append((tok, len(ids)))
            ids.append(tok)
        out_row[n], out_slot[n] = len(rows), len(eos)
        eos.append(stack[len(s) - 1][1])
    if ids:
        rows.append((ids, parents, eos))
    r = len(rows)
    packed = PackedRows(
        ids=np.zeros((r, row_len), np.int32), positions=np.zeros((r, row_len), np.int32),
        mask=np.zeros((r, row_len, row_len), bool), eos_idx=np.zeros((r, eos_slots), np.int32),
        out_row=out_row, out_slot=out_slot, tokens=sum(len(row[0]) for row in rows))
    for k, (row_ids, row_parents, row_eos) in enumerate(rows):
        packed.ids[k, : len(row_ids)] = row_ids
        packed.eos_idx[k, : len(row_eos)] = row_eos
        m = packed.mask[k]
        for i, p in enumerate(row_parents):  # parents precede children: one pass builds ancestry
            if p >= 0:
                m[i] = m[p]
                packed.positions[k, i] = packed.positions[k, p] + 1
            m[i, i] = True
        for i in range(len(row_ids), row_len):  # pads attend to themselves (no all-masked rows)
            m[i, i] = True
    return packed
