"""Every attribute value of the corpus and every word that may name it.

Canonical words (the first of each synonym list) are what ground-truth phrases, clean captions and
referring expressions use; alt-texts also draw on the synonyms so they look like noisy web text. A
region's `names` list is built here too, so the alt-text generator can only ever name an object with
a phrase that the region's `names` contain (that is what lets n-gram queries match region names).
"""

from __future__ import annotations

import itertools

# Object colours: canonical name -> RGB. Chosen to be far apart so colour words are unambiguous.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 30, 35),
    "orange": (245, 135, 20),
    "yellow": (240, 215, 35),
    "green": (35, 155, 60),
    "blue": (30, 75, 215),
    "purple": (130, 45, 170),
    "pink": (245, 125, 190),
    "brown": (125, 75, 35),
}
COLOR_SYNONYMS: dict[str, tuple[str, ...]] = {
    "red": ("red", "crimson", "scarlet"),
    "orange": ("orange", "tangerine"),
    "yellow": ("yellow", "golden"),
    "green": ("green", "emerald"),
    "blue": ("blue", "azure", "cobalt"),
    "purple": ("purple", "violet"),
    "pink": ("pink", "rose"),
    "brown": ("brown", "chocolate"),
}

SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "hexagon",
    "diamond",
    "cross",
    "heart",
    "pentagon",
    "arrow",
)
SHAPE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disk"),
    "square": ("square", "box"),
    "triangle": ("triangle",),
    "star": ("star",),
    "hexagon": ("hexagon",),
    "diamond": ("diamond", "rhombus"),
    "cross": ("cross", "plus sign"),
    "heart": ("heart",),
    "pentagon": ("pentagon",),
    "arrow": ("arrow",),
}

# Size class -> (min, max) radius as a fraction of min(image height, width). The gaps between
# classes keep "large" and "small" visually obvious.
SIZES: dict[str, tuple[float, float]] = {
    "small": (0.06, 0.09),
    "medium": (0.12, 0.16),
    "large": (0.20, 0.26),
}
# The refcoco preset's size classes (same meaning): larger, as RefCOCO's referents are, with gaps
# kept so that a size word still tells twins apart at a glance.
REFCOCO_SIZES: dict[str, tuple[float, float]] = {
    "small": (0.2, 0.23),
    "medium": (0.28, 0.32),
    "large": (0.37, 0.43),
}
SIZE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "small": ("small", "little", "tiny"),
    "medium": ("medium", "medium-sized"),
    "large": ("large", "big"),
}

BACKGROUND_KINDS: tuple[str, ...] = ("plain", "gradient", "noise", "texture")
# Background tones are muted so every object colour stands out against every background.
BACKGROUND_COLORS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 242),
    "light gray": (200, 200, 200),
    "gray": (140, 140, 145),
    "dark gray": (60, 60, 65),
    "beige": (225, 210, 180),
    "pale blue": (195, 215, 235),
    "black": (20, 20, 22),
    "mint": (200, 235, 215),
}

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight")


def names_for(color: str, shape: str, size: str) -> list[str]:
    """All phrases that name this object alone or generically, canonical 'color shape' first.

    Every combination of (optional size word, optional colour word, shape word); a bare size word
    plus shape ("large star") is included, a colour alone is not (it names no object).
    """
    phrases = [f"{color} {shape}"]
    for size_w, color_w, shape_w in itertools.product(
        ("",) + SIZE_SYNONYMS[size], ("",) + COLOR_SYNONYMS[color], SHAPE_SYNONYMS[shape]
    ):
        phrase = " ".join(w for w in (size_w, color_w, shape_w) if w)
        if phrase not in phrases:
            phrases.append(phrase)
    return phrases


def article(phrase: str) -> str:
    """'a' or 'an' for the phrase that follows."""
    return "an" if phrase[:1] in "aeiou" else "a"


def plural(shape: str) -> str:
    """Plural of a shape word ("cross" -> "crosses", "plus sign" -> "plus signs")."""
    return shape + ("es" if shape.endswith(("s", "x")) else "s")
