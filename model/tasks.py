"""LocCa's three tasks as token sequences, and their inverse. Pure numpy, no framework.

Sequence layout (L = max_len, the config's text length, default 64):
  seq = [BOS] + prefix + target + [EOS], padded with pad_id to L + 1
  inputs = seq[:-1], targets = seq[1:]                         int32[L]
  loss_mask[i] = 1 exactly where targets[i] is a target token or the EOS   float32[L]

  task  prefix  target                          why this order
  cap   "cap"   alt-text
  aref  "aref"  "{phrase} :" + box             predict the box from the phrase (REC at test time)
  gcap  "gcap"  box + ": {phrase}"             predict the phrase for a box
A box is four location tokens <loc y1><loc x1><loc y2><loc x2>. The text parts are encoded on their
own and the box ids are appended directly: encoding "dog : <loc…>" as one string would spend a lone
"▁" piece before the box (SentencePiece turns the space into its own piece). Decoded to text the
targets read "dog :<loc…>…" and "<loc…>… : dog".

Quantization with N = tok.num_loc bins (the tokenizer's location pieces; 1024 at paper scale):
bin = clip(floor(v * N), 0, N - 1); a bin decodes to its centre (bin + 0.5) / N, so a decoded
coordinate is within half a bin (< 1/N) of the original.

Truncation shortens only text (caption or phrase) and always keeps the box and the EOS; a location
task whose prefix + box cannot fit at all is dropped for that example (all-zero loss mask).
"""

from __future__ import annotations

import dataclasses
import math
import re
import unicodedata
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

TASKS = ("cap", "aref", "gcap")
SEPARATOR = ":"


class TokenizerLike(Protocol):
    pad_id: int
    eos_id: int
    bos_id: int
    loc_start: int
    num_loc: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


# ---------------------------------------------------------------------------------------- boxes


def box_to_bins(box: Sequence[float], num_loc: int) -> np.ndarray:
    """float[4] normalized [ymin, xmin, ymax, xmax] -> int[4] bins in [0, num_loc)."""
    v = np.asarray(box, np.float64).reshape(4)
    return np.clip(np.floor(v * num_loc), 0, num_loc - 1).astype(np.int64)


def box_to_tokens(box: Sequence[float], loc_start: int, num_loc: int) -> list[int]:
    """float[4] normalized box -> the 4 location ids (y1 x1 y2 x2).

    Same bins as box_to_bins, in plain Python: numpy's per-call overhead on 4 numbers was a
    visible share of the loader's per-example time.
    """
    values = box.tolist() if isinstance(box, np.ndarray) else list(box)
    if len(values) != 4:
        raise ValueError(f"a box has 4 coordinates, got {len(values)}")
    top = num_loc - 1
    return [loc_start + min(max(math.floor(float(v) * num_loc), 0), top) for v in values]


def tokens_to_box(ids: Sequence[int], loc_start: int, num_loc: int) -> np.ndarray | None:
    """4 location ids -> float32[4] box at bin centres, or None when malformed.

    Malformed: not exactly 4 ids, any id not a location token, or ymin > ymax / xmin > xmax.
    """
    if len(ids) != 4:
        return None
    bins = np.asarray([int(i) for i in ids]) - loc_start
    if np.any(bins < 0) or np.any(bins >= num_loc):
        return None
    if bins[0] > bins[2] or bins[1] > bins[3]:
        return None
    return ((bins + 0.5) / num_loc).astype(np.float32)


# ------------------------------------------------------------------------------------- formatting


@dataclasses.dataclass(frozen=True)
class Formatted:
    """One task of one example: inputs/targets int32[L], loss_mask float32[L]."""

    inputs: np.ndarray
    targets: np.ndarray
    loss_mask: np.ndarray


def _cached(tok: TokenizerLike, text: str) -> list[int]:
    """Ids of a fixed string (task prefix, separator), encoded once per tokenizer."""
    cache = tok.__dict__.setdefault("_locca_ids_cache", {})
    if text not in cache:
        cache[text] = tok.encode(text)
    return cache[text]


# A literal "<loc0123>" in web text (or "＜loc0123＞", which the tokenizer's NFKC normalisation
# turns into it) would encode as a real location token (the pieces are user-defined), putting a
# stray box coordinate into a caption or phrase target. Such text is encoded again with the piece
# broken up ("< loc0123>"), so location ids come from boxes only.
_LOC_TEXT = re.compile(r"<(loc\d{4}>)")


def _encode_text(tok: TokenizerLike, text: str) -> list[int]:
    """tok.encode(text) of a caption or phrase, never yielding a location id from the text."""
    ids = tok.encode(text)
    lo, hi = tok.loc_start, tok.loc_start + tok.num_loc
    if any(lo <= i < hi for i in ids):  # rare: only text that spells a location piece
        ids = tok.encode(_LOC_TEXT.sub(r"< \1", unicodedata.normalize("NFKC", text)))
        ids = [i for i in ids if not lo <= i < hi]  # anything that still maps there is dropped
    return ids


def _prefix(tok: TokenizerLike, task: str) -> list[int]:
    return _cached(tok, task)


_PHRASE_CACHE_SIZE = 1 << 16


def _encode_phrase(tok: TokenizerLike, phrase: str) -> list[int]:
    """_encode_text(tok, phrase), memoized per tokenizer (callers must not modify the result).

    Region phrases (detector queries, category names) repeat across a corpus, captions do not, so
    only phrases are cached. Exact: encoding is a pure function of the text. Bounded by clearing
    when full, which is cheaper than LRU bookkeeping on every hit.
    """
    cache = tok.__dict__.get("_locca_phrase_cache")
    if cache is None:
        cache = tok.__dict__.setdefault("_locca_phrase_cache", {})
    ids = cache.get(phrase)
    if ids is None:
        if len(cache) >= _PHRASE_CACHE_SIZE:
            cache.clear()
        ids = cache[phrase] = _encode_text(tok, phrase)
    return ids


def _fill(
    tok: TokenizerLike,
    prefix: list[int],
    target: list[int] | None,
    max_len: int,
    seq_out: np.ndarray,
    mask_out: np.ndarray,
) -> None:
    """Writes one task's row: [BOS] + prefix + target + [EOS] and the loss mask on target + EOS.

    target None: a task not trained, [BOS] + prefix[: max_len - 1], no EOS, no loss (see empty()).
    seq_out: int32[L + 1] filled with pad_id; mask_out: float32[L] of zeros (both written in
    place, so format_example can fill rows of one block and format_task fresh arrays).
    """
    if target is None:
        seq = [tok.bos_id, *prefix[: max_len - 1]]
    else:
        seq = [tok.bos_id, *prefix, *target, tok.eos_id]
    if len(seq) > max_len + 1:
        raise ValueError(f"sequence of {len(seq)} tokens does not fit max_len={max_len}")
    seq_out[: len(seq)] = seq
    if target is not None:
        mask_out[len(prefix) : len(prefix) + len(target) + 1] = 1.0  # target tokens and the EOS


def _pack(
    tok: TokenizerLike, prefix: list[int], target: list[int] | None, max_len: int
) -> Formatted:
    seq = np.full(max_len + 1, tok.pad_id, np.int32)
    mask = np.zeros(max_len, np.float32)
    _fill(tok, prefix, target, max_len, seq, mask)
    return Formatted(seq[:-1].copy(), seq[1:].copy(), mask)


def empty(task: str, tok: TokenizerLike, max_len: int) -> Formatted:
    """A task this example does not train: [BOS] + prefix, all-zero loss mask.

    Not all-pad: the decoder masks pad keys, and a row with every key masked would be NaN-prone.
    Built once per (tokenizer, task, max_len); its arrays are read-only since they are shared.
    """
    cache = tok.__dict__.setdefault("_locca_empty_cache", {})
    key = (task, max_len)
    if key not in cache:
        f = _pack(tok, _prefix(tok, task), None, max_len)
        for a in (f.inputs, f.targets, f.loss_mask):
            a.setflags(write=False)
        cache[key] = f
    return cache[key]


def target_ids(
    task: str,
    tok: TokenizerLike,
    *,
    caption: str = "",
    phrase: str = "",
    box: Sequence[float] | None = None,
    budget: int | None = None,
) -> list[int] | None:
    """Target ids of one task, text truncated to `budget` tokens in total; None if the box won't fit."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    if task == "cap":
        ids = _encode_text(tok, caption)
        return ids if budget is None else ids[:budget]
    if box is None:
        raise ValueError(f"task {task!r} needs a box")
    box_ids = box_to_tokens(box, tok.loc_start, tok.num_loc)
    sep = _cached(tok, SEPARATOR)
    # SentencePiece never merges across a space, so encode("dog :") == encode("dog") + encode(":").
    text = _cut_phrase(_encode_phrase(tok, phrase), budget, sep)  # shared: sliced, never modified
    if not text:
        return None  # No room for even one phrase token: the task is dropped, not faked.
    if task == "aref":
        return text + sep + box_ids
    return box_ids + sep + text  # gcap


def _cut_phrase(text: list[int], budget: int | None, sep: list[int]) -> list[int]:
    """The phrase ids that fit in `budget` target tokens beside a box (4) and the separator."""
    return text if budget is None else text[: max(budget - 4 - len(sep), 0)]


def format_task(
    task: str,
    tok: TokenizerLike,
    *,
    max_len: int = 64,
    caption: str = "",
    phrase: str = "",
    box: Sequence[float] | None = None,
) -> Formatted:
    """Formats one task. Text beyond max_len is cut; a box never is (see module docstring)."""
    prefix, target = _task_ids(tok, task, max_len, caption=caption, phrase=phrase, box=box)
    if target is None:
        return empty(task, tok, max_len)
    return _pack(tok, prefix, target, max_len)


def _task_ids(
    tok: TokenizerLike,
    task: str,
    max_len: int,
    *,
    caption: str = "",
    phrase: str = "",
    box: Sequence[float] | None = None,
) -> tuple[list[int], list[int] | None]:
    """(prefix ids, target ids or None when the task does not fit max_len) of one trained task."""
    prefix = _prefix(tok, task)
    budget = max_len - len(prefix) - 1  # room for target tokens; BOS and EOS take the rest
    if budget < 0:
        return prefix, None
    return prefix, target_ids(task, tok, caption=caption, phrase=phrase, box=box, budget=budget)


def choose_tasks(
    rng: np.random.Generator, has_regions: bool, task_mix: str, weights: dict[str, float]
) -> tuple[str, ...]:
    """Which tasks this example trains. "all": every available one; "sample": one, by weight."""
    available = TASKS if has_regions else ("cap",)
    if task_mix == "all":
        return available
    if task_mix != "sample":
        raise ValueError(f"task_mix must be 'all' or 'sample', got {task_mix!r}")
    w = np.asarray([float(weights.get(t, 0.0)) for t in available])
    if w.sum() <= 0:
        return ("cap",)
    return (available[int(rng.choice(len(available), p=w / w.sum()))],)


def format_example(
    tok: TokenizerLike,
    rng: np.random.Generator,
    *,
    caption: str,
    boxes: np.ndarray,
    phrases: Sequence[str],
    max_len: int = 64,
    task_mix: str = "all",
    task_weights: dict[str, float] | None = None,
    regions_per_task: int = 1,
    aref_unambiguous: bool = False,
    aref_regions: int = 0,
) -> dict[str, Any]:
    """All tasks of one example, keyed "{task}/inputs|targets|loss_mask", plus "has_regions".

    boxes: float[N, 4] normalized. With regions_per_task K = 1 one region is drawn independently
    for each location task and every array is [L]. With K > 1 the aref and gcap arrays are
    [K, L]: K distinct regions each (drawn without replacement, cycling when the image has fewer),
    so one encoder pass trains K grounding rows per location task. aref_unambiguous: aref rows
    use only regions whose phrase names no other object of the image (unambiguous_regions); an
    image with none trains no aref row. gcap (box -> phrase) is well defined either way.
    aref_regions > 0: aref's own K (gcap keeps regions_per_task), since grounding rows are what a
    small model lacks while a second gcap row mostly costs decoder time.
    """
    k = int(regions_per_task)
    if k < 1:
        raise ValueError(f"regions_per_task must be >= 1, got {k}")
    if int(aref_regions) < 0:
        raise ValueError(f"aref_regions must be >= 0 (0: regions_per_task), got {aref_regions}")
    ks = {"aref": int(aref_regions) or k, "gcap": k}
    has_regions = len(phrases) > 0
    weights = task_weights or {t: 1.0 for t in TASKS}
    chosen = choose_tasks(rng, has_regions, task_mix, weights)
    # Draw the regions whatever was chosen, so the rng stream does not depend on the task mix.
    aref_from = unambiguous_regions(phrases, boxes) if aref_unambiguous and has_regions else None
    picks = _region_picks(rng, len(phrases), ks, aref_from)
    rows = {"cap": 1, **ks}
    # Same rows as format_task / empty() (both fill through _fill), written into one [R, L + 1]
    # token block and one [R, L] mask block: two allocations per example instead of four per task
    # (the per-example cost of many small numpy arrays showed in the loader's profile). The
    # returned arrays are views of those blocks.
    seqs = np.full((sum(rows.values()), max_len + 1), tok.pad_id, np.int32)
    mask = np.zeros((sum(rows.values()), max_len), np.float32)
    out: dict[str, Any] = {"has_regions": np.bool_(has_regions)}
    start = 0
    for task in TASKS:
        for j in range(rows[task]):
            row = start + j
            if task not in chosen:
                prefix, target = _prefix(tok, task), None
            elif task == "cap":
                prefix, target = _task_ids(tok, "cap", max_len, caption=caption)
            elif picks[task][j] < 0:  # no unambiguous region for aref in this image
                prefix, target = _prefix(tok, task), None
            else:
                i = picks[task][j]
                prefix, target = _task_ids(tok, task, max_len, phrase=phrases[i], box=boxes[i])
            _fill(tok, prefix, target, max_len, seqs[row], mask[row])
        block = slice(start, start + rows[task]) if rows[task] > 1 else start
        out[f"{task}/inputs"], out[f"{task}/targets"] = seqs[block, :-1], seqs[block, 1:]
        out[f"{task}/loss_mask"] = mask[block]
        start += rows[task]
    return out


_ARTICLES = frozenset({"a", "an", "the"})


def unambiguous_regions(phrases: Sequence[str], boxes: np.ndarray,
                        same_object_iou: float = 0.7) -> list[int]:
    """Indices of regions whose phrase could only mean their own object in this image.

    A phrase is ambiguous when its words (lowercase, articles dropped) are a subset of another
    region's phrase on a different object (box IoU < same_object_iou): "star" beside "red star",
    or "red star" twice. Pseudo-labels name every instance a query matches, so such a phrase has
    several right boxes and an aref target of one of them teaches the decoder to ignore the words.
    boxes: float[N, 4] (y1, x1, y2, x2).
    """
    words = [frozenset(str(p).lower().split()) - _ARTICLES for p in phrases]
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    area = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    lo, hi = np.maximum(b[:, None, :2], b[None, :, :2]), np.minimum(b[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=-1)
    iou = inter / np.maximum(area[:, None] + area[None, :] - inter, 1e-12)
    return [i for i in range(len(words))
            if not any(j != i and iou[i, j] < same_object_iou and words[i] <= words[j]
                       for j in range(len(words)))]


def _region_picks(rng: np.random.Generator, n: int, ks: dict[str, int],
                  aref_from: list[int] | None = None) -> dict[str, list[int]]:
    """Region indices for the aref and gcap rows: ks[task] each, of n regions (zeros when n == 0).

    aref_from: the regions aref may use (all when None); -1 marks an aref row with none left.
    """
    if ks["aref"] == ks["gcap"] == 1:  # one independent draw per task: every K = 1 run's stream
        drawn = rng.integers(0, n, size=2).tolist() if n else [0, 0]
        picks = {"aref": drawn[:1], "gcap": drawn[1:]}
    elif not n:
        picks = {t: [0] * ks[t] for t in ("aref", "gcap")}
    else:
        # np.resize repeats the permutation: distinct regions first, repeats only when n < k.
        picks = {t: [int(i) for i in np.resize(rng.permutation(n), ks[t])]
                 for t in ("aref", "gcap")}
    if aref_from is not None:
        k = ks["aref"]
        if not aref_from:
            picks["aref"] = [-1] * k
        elif k == 1:
            picks["aref"] = [aref_from[int(rng.integers(len(aref_from)))]]
        else:
            picks["aref"] = [int(i) for i in np.resize(rng.permutation(aref_from), k)]
    return picks


def parallel_inputs(inputs, loss_mask, mask_id: int):
    """CapPa parallel prediction: inputs[i] -> mask_id wherever i > 0 and loss_mask[i - 1] is 1.

    The prefix stays visible and every position that predicts a target reads a mask token.
    inputs int[..., L], loss_mask float[..., L]; numpy or jax arrays (uses their array namespace,
    so it traces under jax.jit).
    """
    xp = inputs.__array_namespace__() if hasattr(inputs, "__array_namespace__") else np
    m = xp.asarray(loss_mask) > 0
    shifted = xp.concat([xp.zeros_like(m[..., :1]), m[..., :-1]], axis=-1)
    return xp.where(shifted, xp.asarray(mask_id, dtype=inputs.dtype), inputs)


# --------------------------------------------------------------------------------------- decoding


def make_prompt(
    task: str,
    tok: TokenizerLike,
    *,
    phrase: str = "",
    box: Sequence[float] | None = None,
    max_len: int | None = None,
) -> list[int]:
    """[BOS] + prefix + the given part of the target, for generation.

    cap: nothing given. aref: "{phrase} :" (the model then writes 4 location tokens + EOS).
    gcap: box + ":" (the model then writes the phrase). Same ids as in training, because
    SentencePiece never merges across a space. With `max_len` (the decoder's length), an aref
    phrase is cut exactly as format_task cuts it in training, so the prompt leaves room for the
    box: without the cut, a long expression's prompt would fill the buffer and its answer would
    always be malformed. (Where not even one phrase token fits, training drops the row; the
    prompt then has no phrase at all.)
    """
    prefix = _prefix(tok, task)
    ids = [tok.bos_id, *prefix]
    if task == "aref":
        sep = _cached(tok, SEPARATOR)
        budget = None if max_len is None else max_len - len(prefix) - 1  # as in _task_ids
        ids += _cut_phrase(_encode_text(tok, phrase), budget, sep) + sep
    elif task == "gcap":
        if box is None:
            raise ValueError("gcap needs a box")
        ids += box_to_tokens(box, tok.loc_start, tok.num_loc) + _cached(tok, SEPARATOR)
    elif task != "cap":
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    return ids


@dataclasses.dataclass(frozen=True)
class Decoded:
    """A decoded target: text (phrase or caption) and box (float32[4] or None if absent/malformed)."""

    text: str
    box: np.ndarray | None


def _until_eos(ids: Sequence[int], tok: TokenizerLike) -> list[int]:
    out = []
    for i in ids:
        i = int(i)
        if i == tok.eos_id:
            break
        if i not in (tok.pad_id, tok.bos_id):
            out.append(i)
    return out


def _strip_sep(text: str) -> str:
    text = text.strip()
    if text.endswith(SEPARATOR):
        text = text[: -len(SEPARATOR)]
    if text.startswith(SEPARATOR):
        text = text[len(SEPARATOR) :]
    return text.strip()


def decode_target(task: str, ids: Sequence[int], tok: TokenizerLike) -> Decoded:
    """Generated target ids (after the prefix; EOS/pad allowed) -> text and box.

    The box is the first run of location tokens; it must be exactly four well-ordered ones, else
    None. For aref the text is what precedes it, for gcap what follows it (" : " stripped).
    """
    ids = _until_eos(ids, tok)
    is_loc = [tok.loc_start <= i < tok.loc_start + tok.num_loc for i in ids]
    if task == "cap" or not any(is_loc):
        text = tok.decode([i for i, loc in zip(ids, is_loc, strict=True) if not loc])
        return Decoded(_strip_sep(text) if task != "cap" else text, None)
    start = is_loc.index(True)
    end = start
    while end < len(ids) and is_loc[end]:
        end += 1
    box = tokens_to_box(ids[start:end], tok.loc_start, tok.num_loc)
    text_ids = ids[:start] if task == "aref" else ids[end:]
    return Decoded(_strip_sep(tok.decode(text_ids)), box)
