"""Noisy, web-like alt-texts for the training stream.

Most alt-texts name most objects by colour+shape ("red star"), since that is what lets n-gram
queries from the alt-text match region names; the rest of the variety is what web alt-text has:
synonyms, word order, templates, file names, ids, marketing words, partial mentions, and ~3%
useless ones. Every object mention is one of the object's `vocab.names_for` phrases.
"""

from __future__ import annotations

import numpy as np

from pipelines.corpus import vocab
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


def _subset(objects: tuple[VisibleObject, ...], rng: np.random.Generator) -> list[VisibleObject]:
    """Which objects the text mentions: usually all, sometimes the most visible few."""
    r = rng.random()
    if r < 0.75 or len(objects) == 1:
        chosen = list(objects)
    else:
        by_area = sorted(objects, key=lambda o: -o.visible_pixels)
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


def alt_text(scene: RenderedScene, rng: np.random.Generator) -> str:
    """The alt-text of one image (rng: `sample_rng(..., TEXT)`)."""
    if rng.random() < USELESS_RATE:
        return str(rng.choice(USELESS)).format(n=rng.integers(1000, 9999), d=rng.integers(1, 9))
    phrases: list[str] = []
    for obj in _subset(scene.objects, rng):
        p = _mention(obj, rng)
        if p not in phrases:  # "red star and red star" reads as a generator bug, not as web text
            phrases.append(p)
    bg_color = scene.spec.background_color
    bg = str(rng.choice(BACKGROUND_WORDS[scene.spec.background])).format(color=bg_color)
    templates, weights = zip(*TEMPLATES, strict=True)
    p = np.asarray(weights, np.float64)
    template = templates[int(rng.choice(len(templates), p=p / p.sum()))]
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
