"""Noisy, web-like alt-texts for the training stream.

Two forms:
- plain (~64%): most objects named by colour+shape ("red star"), since that is what lets n-gram
  queries from the alt-text match region names; the rest of the variety is what web alt-text has:
  synonyms, word order, templates, file names, ids, marketing words, partial mentions, and ~3%
  useless ones. Drawn from the TEXT rng alone, so these texts are what they were before the
  referring form existed.
- referring (~36%): some objects described the way people refer to them, with the expressions of
  `refexp.referring_expressions` ("the red star on the left and a blue circle on white
  background", "Photo: the blue circle above the green heart"), as real alt-text now and then
  does; the other mentioned objects get a plain "a red star" mention. Drawn from the REFEXP rng.

Every object mention is one of that object's region `names`: a plain mention is one of its
`vocab.names_for` phrases, and each referring expression used is returned in `AltText.expressions`
so that `annotations.region` adds it to the names. The reference labeler then matches the whole
expression, which outscores the "red star" inside it; an expression no longer than another name of
its object elsewhere in the text (a twin's "pink square" vs "left square") is not used.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from pipelines.corpus import refexp, vocab
from pipelines.corpus.render import RenderedScene, VisibleObject

USELESS = (
    "",
    "image",
    "untitled",
    "photo",
    "IMG_{n}.jpg",
    "download ({d}).jpg",
    "DSC_{n}",
    "picture {n}",
    "no description available",
)
USELESS_RATE = 0.03

BACKGROUND_WORDS = {
    "plain": ("{color} background", "plain {color} background", "{color}"),
    "gradient": ("gradient background", "{color} gradient", "soft gradient backdrop"),
    "noise": ("grainy {color} background", "noisy background", "{color} grunge texture"),
    "texture": ("textured background", "{color} pattern background", "seamless pattern"),
}

# Templates: {list} = "red star, blue circle and green square"; {alist} with articles;
# {keywords} = bare space-separated phrases; {bg}, {n}, {id}, {count} as named.
TEMPLATES = (
    ("{list}", 3),
    ("{alist} on {bg}", 3),
    ("{list} - stock photo", 2),
    ("{list} | free download", 1),
    ("IMG_{n}.jpg {list}", 1),
    ("{list} IMG_{n}.JPG", 1),
    ("Photo of {alist}", 2),
    ("{list} vector illustration. Image ID: {id}", 1),
    ("geometric shapes {keywords} pattern wallpaper", 1),
    ("{count} colorful shapes: {list}", 1),
    ("Royalty-free image #{id}: {alist} on {bg}", 1),
    ("{keywords} clipart png", 1),
    ("abstract background with {alist}", 1),
    ("{list}, isolated, {bg}, high resolution", 1),
    ("www.shapes-{n}.com {list} download", 1),
    ("{alist}", 2),
)

# Share of images drawn for the referring form. A few of those have no object with a safe
# expression and fall back to the plain form, so the realised share is a little lower (~36%).
REFEXP_RATE = 0.38
# Chance that a mentioned object with an expression is described by it (not by "a red star").
REFEXP_MENTION_RATE = 0.6
# At most this many expressions per alt-text: each is up to 10 words, and a text of too many words
# has more n-grams than the query cap (300, shortest first) keeps, which would drop the longest
# n-grams -- the expressions themselves.
MAX_EXPRESSIONS = 3
# {refs}: the mentions joined ("the red star on the left and a blue circle"); {bg} as above.
REFEXP_TEMPLATES = (
    ("{refs}", 4),
    ("Photo: {refs} on {bg}", 2),
    ("{refs} on {bg}", 2),
    ("{refs} - stock photo", 1),
    ("Photo of {refs}", 1),
    ("{refs}, isolated, {bg}", 1),
    ("IMG_{n}.jpg {refs}", 1),
)


@dataclasses.dataclass(frozen=True)
class AltText:
    """text: the alt-text; expressions: per scene object (drawing order), the referring
    expressions the text uses for it, lowercase (empty for plain mentions and plain texts)."""

    text: str
    expressions: tuple[tuple[str, ...], ...]


def _mention(obj: VisibleObject, rng: np.random.Generator) -> str:
    """One phrase naming `obj`; canonical colour+shape most of the time."""
    o = obj.spec
    r = rng.random()
    color, shape, size = o.color, o.shape, ""
    if r < 0.68:
        pass
    elif r < 0.80:
        color = str(rng.choice(vocab.COLOR_SYNONYMS[o.color]))
    elif r < 0.90:
        size = str(rng.choice(vocab.SIZE_SYNONYMS[o.size]))
    elif r < 0.96:
        shape = str(rng.choice(vocab.SHAPE_SYNONYMS[o.shape]))
    else:
        color = ""
    phrase = " ".join(w for w in (size, color, shape) if w)
    assert phrase in vocab.names_for(o.color, o.shape, o.size), phrase
    return phrase


def _subset(objects: tuple[VisibleObject, ...], rng: np.random.Generator) -> list[int]:
    """Indices of the objects the text mentions: usually all, sometimes the most visible few."""
    r = rng.random()
    if r < 0.75 or len(objects) == 1:
        chosen = list(range(len(objects)))
    else:
        by_area = sorted(range(len(objects)), key=lambda i: -objects[i].visible_pixels)
        k = 1 if r > 0.93 else int(rng.integers(max(1, len(objects) // 2), len(objects)))
        chosen = by_area[:k]
    order = rng.permutation(len(chosen)) if rng.random() < 0.5 else range(len(chosen))
    return [chosen[i] for i in order]


def _join(items: list[str], rng: np.random.Generator) -> str:
    if len(items) == 1:
        return items[0]
    conj = str(rng.choice([" and ", " & ", " with ", ", "]))
    return ", ".join(items[:-1]) + conj + items[-1]


def _casing(text: str, rng: np.random.Generator) -> str:
    r = rng.random()
    if r < 0.2:
        return text.title()
    if r < 0.6:
        return text[:1].upper() + text[1:]
    return text


def _pick_template(weighted: tuple[tuple[str, int], ...], rng: np.random.Generator) -> str:
    """One template of (template, weight) pairs, drawn in proportion to the weights."""
    templates, weights = zip(*weighted, strict=True)
    p = np.asarray(weights, np.float64)
    return templates[int(rng.choice(len(templates), p=p / p.sum()))]


def _background(scene: RenderedScene, rng: np.random.Generator) -> str:
    bg_color = scene.spec.background_color
    return str(rng.choice(BACKGROUND_WORDS[scene.spec.background])).format(color=bg_color)


def alt_text(
    scene: RenderedScene, rng: np.random.Generator, refexp_rng: np.random.Generator
) -> AltText:
    """The alt-text of one image, plain or referring (see the module docstring).

    rng: `sample_rng(..., TEXT)`; refexp_rng: `sample_rng(..., REFEXP)`, which alone decides the
    form, so a plain text is exactly `plain_alt_text(scene, rng)`.
    """
    if refexp_rng.random() < REFEXP_RATE:
        referring = referring_alt_text(scene, refexp_rng)
        if referring is not None:
            return referring
    return AltText(plain_alt_text(scene, rng), ((),) * len(scene.objects))


def _longest_name(names: list[str], texts: list[str]) -> int:
    """Words in the longest of `names` that occurs as a word n-gram of one of `texts` (0: none)."""
    names_set, best = set(names), 0
    for text in texts:
        words = text.split()
        for n in range(best + 1, len(words) + 1):
            if any(" ".join(words[k : k + n]) in names_set for k in range(len(words) - n + 1)):
                best = n
    return best


def referring_alt_text(scene: RenderedScene, rng: np.random.Generator) -> AltText | None:
    """An alt-text that describes 1-MAX_EXPRESSIONS objects by a referring expression, or None
    when no mentioned object has one it can use (rng: `sample_rng(..., REFEXP)`)."""
    objs = scene.objects
    exprs = refexp.referring_expressions(list(objs), scene.spec.width, scene.spec.height, rng)
    chosen = _subset(objs, rng)
    candidates = [i for i in chosen if exprs[i]]
    if not candidates:
        return None
    use = [i for i in candidates if rng.random() < REFEXP_MENTION_RATE]
    if not use:
        use = [candidates[int(rng.integers(len(candidates)))]]
    if len(use) > MAX_EXPRESSIONS:
        use = sorted(rng.choice(use, MAX_EXPRESSIONS, replace=False).tolist())
    # Every draw happens before the check below, so dropping an expression moves no other draw.
    expression = {i: str(rng.choice(exprs[i])) for i in use}
    plain = {i: _mention(objs[i], rng) for i in chosen}
    while use:
        mentions: list[str] = []
        for i in chosen:
            m = expression[i] if i in use else f"{vocab.article(plain[i])} {plain[i]}"
            if m not in mentions:  # twins: "a red star and a red star" reads as a bug
                mentions.append(m)
        # The reference labeler gives a box the longest exact name among the n-grams; ties go
        # to the earlier one. An expression must outscore every other name of its object that
        # the rest of the text contains ("left square" vs a twin's "pink square"), or that
        # object would be labelled by the other name -- so such an expression is not used.
        losing = [
            i
            for i in use
            if len(expression[i].split())
            <= _longest_name(
                vocab.names_for(objs[i].spec.color, objs[i].spec.shape, objs[i].spec.size),
                [m for m in mentions if m != expression[i]],
            )
        ]
        if not losing:
            break
        use = [i for i in use if i not in losing]
    if not use:
        return None
    template = _pick_template(REFEXP_TEMPLATES, rng)
    text = template.format(
        refs=_join(mentions, rng), bg=_background(scene, rng), n=rng.integers(1000, 9999)
    )
    used = tuple((expression[i],) if i in use else () for i in range(len(objs)))
    return AltText(_casing(text, rng), used)


def plain_alt_text(scene: RenderedScene, rng: np.random.Generator) -> str:
    """The plain alt-text of one image (rng: `sample_rng(..., TEXT)`)."""
    if rng.random() < USELESS_RATE:
        return str(rng.choice(USELESS)).format(n=rng.integers(1000, 9999), d=rng.integers(1, 9))
    phrases: list[str] = []
    for i in _subset(scene.objects, rng):
        p = _mention(scene.objects[i], rng)
        if p not in phrases:  # "red star and red star" reads as a generator bug, not as web text
            phrases.append(p)
    bg = _background(scene, rng)
    template = _pick_template(TEMPLATES, rng)
    if "{count}" in template and len(phrases) == 1:
        template = "{alist} on {bg}"  # "one colorful shapes" is not even web English
    text = template.format(
        list=_join(phrases, rng),
        alist=_join([f"{vocab.article(x)} {x}" for x in phrases], rng),
        keywords=" ".join(phrases),
        bg=bg,
        n=rng.integers(1000, 9999),
        id=rng.integers(10**6, 10**8),
        count=vocab.NUMBER_WORDS[len(phrases)]
        if len(phrases) < len(vocab.NUMBER_WORDS)
        else "many",
    )
    return _casing(text, rng)
