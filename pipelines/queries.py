"""Text queries from an alt-text, following the OWL-ST recipe (OWLv2 paper, appendix A).

Recipe: lowercase, split on whitespace, drop generic web words ("photo", "stock", "jpg", ...), take
every word n-gram up to `max_ngram` words, skip n-grams made only of stopwords, cap the count.

Choices the paper leaves open, fixed here:
- punctuation is stripped from both ends of every word ("cat," -> "cat"); a word that is only
  punctuation, a URL or a file name is dropped like a generic word. Dropped words split the text, so no
  n-gram spans them (an n-gram across "photo" would name nothing that is in the image).
- n-grams are listed shortest first, then by position, without duplicates; the cap keeps the first
  `max_queries`, so short object names survive the cap on long alt-texts.
- only the first `max_words` words are read: a 100,000-character alt-text costs no more than a normal one.
"""

from __future__ import annotations

import re

# Generic web words: they describe the file or the listing, never an object in the picture.
GENERIC_WORDS: frozenset[str] = frozenset(
    """
    photo photos photograph photographs photography image images picture pictures pic pics stock
    royalty free royalty-free vector vectors illustration illustrations clipart clip art jpg jpeg png
    gif webp svg bmp tif tiff www http https com net org html htm download downloads wallpaper
    wallpapers hd 4k uhd background backgrounds thumbnail thumbnails copyright shutterstock getty
    alamy dreamstime istock istockphoto depositphotos 123rf editorial closeup close-up
    """.split()
)

# English stopwords (NLTK's list, trimmed to words that never name an object on their own).
STOPWORDS: frozenset[str] = frozenset(
    """
    a about above after again against all am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further
    had has have having he her here hers herself him himself his how i if in into is it its itself
    just me more most my myself no nor not now of off on once only or other our ours ourselves out
    over own same she should so some such than that the their theirs them themselves then there
    these they this those through to too under until up very was we were what when where which
    while who whom why will with would you your yours yourself yourselves 's s t
    """.split()
)

_PUNCT = "\"'`.,;:!?()[]{}<>|/\\*&^%$#@~+=_-–—…“”‘’«»"
_URLISH = re.compile(r"(^https?:|^www\.|\.(com|org|net|html?|jpe?g|png|gif|webp)$|://)")


def _clean_word(word: str, generic_words: frozenset[str]) -> str | None:
    """Returns the word without edge punctuation, or None when it must split the text."""
    if _URLISH.search(word):
        return None
    word = word.strip(_PUNCT)
    if not word or word in generic_words:
        return None
    if "\ufffd" in word:  # A replacement character: mis-decoded bytes, not a word.
        return None
    return word


def _runs(words: list[str], generic_words: frozenset[str]) -> list[list[str]]:
    """Splits the word list into runs of kept words; a dropped word ends a run."""
    runs: list[list[str]] = [[]]
    for raw in words:
        word = _clean_word(raw, generic_words)
        if word is None:
            if runs[-1]:
                runs.append([])
        else:
            runs[-1].append(word)
    return [r for r in runs if r]


def queries_from_alt_text(
    text: str,
    *,
    max_ngram: int = 10,
    max_queries: int = 300,
    max_words: int = 256,
    generic_words: frozenset[str] = GENERIC_WORDS,
    stopwords: frozenset[str] = STOPWORDS,
) -> list[str]:
    """All word n-grams (1..max_ngram) of the alt-text that may name an object, shortest first.

    Args:
      text: the alt-text (any length; only the first `max_words` words are read).
      max_ngram: longest n-gram in words (10 in the recipe).
      max_queries: cap on the number of queries returned (300 in the recipe); 0 means no cap.
      max_words: words read from the start of the text.
      generic_words: words dropped before n-grams are formed (they split the text).
      stopwords: n-grams made only of these are skipped.

    Returns:
      Distinct queries, lowercase, words joined by one space.
    """
    if max_ngram < 1:
        raise ValueError(f"max_ngram must be >= 1, got {max_ngram}")
    words = text.lower().split()[:max_words]
    runs = _runs(words, generic_words)
    seen: set[str] = set()
    out: list[str] = []
    for n in range(1, max_ngram + 1):
        for run in runs:
            for i in range(len(run) - n + 1):
                gram = run[i : i + n]
                if all(w in stopwords for w in gram):
                    continue
                query = " ".join(gram)
                if query in seen:
                    continue
                seen.add(query)
                out.append(query)
                if max_queries and len(out) >= max_queries:
                    return out
    return out

