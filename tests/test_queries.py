"""OWL-ST query extraction from alt-texts (pipelines/queries.py)."""

import time

import pytest

from pipelines.queries import GENERIC_WORDS, queries_from_alt_text


def test_lowercase_ngrams_shortest_first():
    q = queries_from_alt_text("Red Star on Grass")
    assert q[:4] == ["red", "star", "grass", "red star"]  # "on" alone is a stopword
    assert "red star on grass" in q
    assert "on" not in q
    assert all(s == s.lower() for s in q)


def test_generic_words_dropped_and_split_the_text():
    q = queries_from_alt_text("stock photo of a red car jpg www.example.com")
    assert not any(w in GENERIC_WORDS for s in q for w in s.split())
    assert "red car" in q
    # "photo" split the text: no n-gram spans it.
    assert not any("stock" in s or "photo" in s for s in q)
    assert not any("example" in s for s in q)  # URL-like words are dropped


def test_stopword_only_ngrams_skipped_but_kept_inside_longer_ones():
    q = queries_from_alt_text("the cat on the mat")
    assert "the" not in q and "on the" not in q
    assert "cat on the mat" in q


def test_punctuation_stripped_from_word_edges():
    q = queries_from_alt_text('"Blue circle," (large)!')
    assert "blue circle" in q and "large" in q


def test_max_ngram_and_cap():
    text = " ".join(f"w{i}" for i in range(40))
    q = queries_from_alt_text(text, max_ngram=3, max_queries=0)
    assert max(len(s.split()) for s in q) == 3
    assert len(q) == 40 + 39 + 38
    capped = queries_from_alt_text(text, max_ngram=10, max_queries=50)
    assert len(capped) == 50 and capped == q[:50]


def test_default_recipe_values():
    text = " ".join(f"w{i}" for i in range(100))
    q = queries_from_alt_text(text)
    assert len(q) == 300
    assert max(len(s.split()) for s in queries_from_alt_text(" ".join(["x"] * 3 + ["y"] * 12),
                                                          max_queries=0)) == 10


def test_duplicates_removed():
    q = queries_from_alt_text("dog dog dog")
    assert q == ["dog", "dog dog", "dog dog dog"]


def test_empty_and_whitespace():
    assert queries_from_alt_text("") == []
    assert queries_from_alt_text("   \n\t ") == []
    assert queries_from_alt_text("photo stock jpg") == []


def test_huge_alt_text_is_bounded():
    text = "lorem ipsum dolor sit amet " * 20_000  # 100,000+ characters
    start = time.perf_counter()
    q = queries_from_alt_text(text)
    assert time.perf_counter() - start < 0.5
    assert 0 < len(q) <= 300


def test_replacement_characters_never_reach_queries():
    q = queries_from_alt_text("caf\ufffd red mug")
    assert "red mug" in q and not any("\ufffd" in s for s in q)


def test_bad_max_ngram():
    with pytest.raises(ValueError, match="max_ngram"):
        queries_from_alt_text("a b", max_ngram=0)
