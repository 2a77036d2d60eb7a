"""A rule-based English singulariser for phrase matching (no model, no download).

The `reference` labeler compares alt-text queries with region names after mapping both to a
canonical form, so "giraffes" finds a region named "giraffe" and "two zebras" finds "zebra":

  canonical(text) = the normalized words, number words dropped ("two", "3", "several", ...),
                    each remaining word singularised.

Singularising one word (lowercase, already stripped of punctuation), first rule that applies:
  1. words of three letters or fewer are kept ("bus", "gas", "ski");
  2. an irregular plural from IRREGULAR ("people" -> "person", "mice" -> "mouse",
     "knives" -> "knife", "buses" -> "bus", "tomatoes" -> "tomato");
  3. words that are not plurals though they end in s are kept: endings -ss, -us, -is, -ous,
     -ics and the words in INVARIANT ("glass", "tennis", "species", "news");
  4. -ies -> -y ("puppies" -> "puppy"), except the -ie nouns of IE_NOUNS ("movies" -> "movie");
  5. -xes, -ches, -shes, -sses, -zzes -> drop "es" ("boxes" -> "box", "benches" -> "bench");
  6. any other final s is dropped ("giraffes" -> "giraffe", "horses" -> "horse", "skis" -> "ski").
Both sides go through the same function, so a rule that is wrong for a rare word ("lens" ->
"len") still matches that word with itself; what it can cost is a false match between two words
that share a canonical form, which the word lists above keep to rare words.
"""

from __future__ import annotations

IRREGULAR: dict[str, str] = {
    "people": "person", "persons": "person", "men": "man", "women": "woman",
    "children": "child", "mice": "mouse", "geese": "goose", "teeth": "tooth", "feet": "foot",
    "oxen": "ox", "dice": "die", "knives": "knife", "wives": "wife", "lives": "life",
    "leaves": "leaf", "loaves": "loaf", "shelves": "shelf", "wolves": "wolf", "halves": "half",
    "calves": "calf", "scarves": "scarf", "thieves": "thief", "elves": "elf", "buses": "bus",
    "busses": "bus", "skis": "ski", "tomatoes": "tomato", "potatoes": "potato", "heroes": "hero",
    "mangoes": "mango", "volcanoes": "volcano", "echoes": "echo", "cacti": "cactus",
    "octopi": "octopus", "fungi": "fungus", "criteria": "criterion", "phenomena": "phenomenon",
}
INVARIANT: frozenset[str] = frozenset(
    "species series news sheep deer fish moose aircraft scissors shorts pants jeans trousers "
    "clothes this his has was yes always perhaps whereas".split())
IE_NOUNS: frozenset[str] = frozenset(
    "movies cookies pies ties lies brownies hippies smoothies zombies selfies hoodies "
    "calories goalies".split())
NUMBER_WORDS: frozenset[str] = frozenset(
    """zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen
    fifteen sixteen seventeen eighteen nineteen twenty thirty forty fifty hundred dozen dozens
    several many multiple numerous few couple""".split())


def singular(word: str) -> str:
    """One lowercase word -> its singular by the rules in the module docstring."""
    if len(word) <= 3:
        return word
    if word in IRREGULAR:
        return IRREGULAR[word]
    if word in INVARIANT or word.endswith(("ss", "us", "is", "ous", "ics")):
        return word
    if word.endswith("ies"):
        return word[:-1] if word in IE_NOUNS else word[:-3] + "y"
    if word.endswith(("xes", "ches", "shes", "sses", "zzes")):
        return word[:-2]
    if word.endswith("s"):
        return word[:-1]
    return word


def is_number(word: str) -> bool:
    """A cardinal or quantity word ("two", "12", "several")."""
    return word in NUMBER_WORDS or word.replace(",", "").isdigit()


def canonical(normalized: str) -> str:
    """A normalized phrase (lowercase words, single spaces) -> its canonical form for matching.

    "two zebras" -> "zebra"; "hot dogs" -> "hot dog"; "people" -> "person"; a phrase made only of
    number words -> "".
    """
    return " ".join(singular(w) for w in normalized.split() if not is_number(w))
