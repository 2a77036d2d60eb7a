"""The reference labeler's plural and number-word rule (pipelines/labelers/inflect.py)."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.labelers import inflect
from pipelines.labelers.reference import EXACT, score_matrix


@pytest.mark.parametrize("plural,single", [
    ("giraffes", "giraffe"), ("zebras", "zebra"), ("buses", "bus"), ("boxes", "box"),
    ("people", "person"), ("mice", "mouse"), ("knives", "knife"), ("benches", "bench"),
    ("dishes", "dish"), ("glasses", "glass"), ("puppies", "puppy"), ("movies", "movie"),
    ("horses", "horse"), ("vases", "vase"), ("skis", "ski"), ("tomatoes", "tomato"),
    ("women", "woman"), ("shelves", "shelf"), ("giraffe", "giraffe"), ("bus", "bus"),
    ("glass", "glass"), ("tennis", "tennis"), ("species", "species"), ("sheep", "sheep"),
    ("scissors", "scissors"), ("cactus", "cactus"), ("dogs", "dog"),
])
def test_singular(plural, single):
    assert inflect.singular(plural) == single


@pytest.mark.parametrize("phrase,canon", [
    ("two zebras", "zebra"), ("3 trains", "train"), ("several hot dogs", "hot dog"),
    ("wine glasses", "wine glass"), ("two", ""), ("teddy bears", "teddy bear"),
    ("the red star on the left", "the red star on the left"),
])
def test_canonical(phrase, canon):
    assert inflect.canonical(phrase) == canon


def test_plural_and_counted_queries_match_exactly():
    names = [["giraffe"], ["train"], ["hot dog"]]
    queries = ["giraffes", "two trains", "hot dogs", "two", "dog"]
    s = score_matrix(names, queries)
    assert s[0, 0] >= EXACT and s[1, 1] >= EXACT and s[2, 2] >= EXACT
    assert np.all(s[:, 3] == 0)  # a number word alone names nothing
    assert 0 < s[2, 4] < EXACT  # "dog" shares a word with "hot dog": partial only
    assert s[0, 1] == 0 and s[1, 0] == 0
