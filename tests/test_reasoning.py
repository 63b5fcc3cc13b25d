"""The reasoning format: what analysts read (no internal tokens, real items only), how it is
taught from the data, and the rationale-quality metrics against hand-computed values."""

from __future__ import annotations

import math
from datetime import datetime

import numpy as np
import pytest

from r2ec.prompts import HistoryItem
from r2ec.reasoning import (
    Teacher,
    cooccurrence,
    item_tags,
    rationale_metrics,
    reasoning_text,
    render,
)

TITLES = {"12": "Heat (1995)", "7": "Casino (1995)", "3": "Toy Story (1995)"}


def test_render_names_items_by_title_and_hides_internal_tokens():
    history = ["Toy Story (1995)", "Casino (1995)", "Heat (1995)"]  # oldest first
    raw = "Because of: #1 #2 #9\nGenres: Crime Drama<|im_end|>"
    assert render(raw, TITLES, history) == \
        "Because of: [Heat (1995)] [Casino (1995)]\nGenres: Crime Drama"
    assert render("Because of:<i12><i999>", TITLES) == "Because of: [Heat (1995)]"
    assert "<" not in render("<i3> <answer>x</answer> <pad>", TITLES)


def test_reasoning_text():
    assert reasoning_text(["Crime"], [1, 3]) == "Because of: #1 #3\nGenres: Crime"
    assert reasoning_text(["Crime", "Drama"], []) == "Because of:\nGenres: Crime Drama"


def test_item_tags():
    assert item_tags({"genres": "Animation Children's Comedy"}) == ["Animation", "Children's",
                                                                   "Comedy"]
    assert item_tags({"categories": "Music > Instruments > Strings"}) == ["Strings"]
    assert item_tags(None) == []


def _hist(ratings):
    return [HistoryItem(str(i), f"T{i}", r, datetime(1998, 1, 1 + i)) for i, r in enumerate(ratings)]


def test_teacher_picks():
    tags = [["Drama"], ["Comedy"], ["Drama", "War"], ["Horror"], ["Comedy", "Drama"]]
    counts = cooccurrence([[0, 1], [0, 2], [2]], [4, 4, 4], 5)
    assert counts[0, 4] == 2 and counts[2, 4] == 2 and counts[1, 4] == 1 and counts.sum() == 5
    hist, rows = _hist([5, 2, 4]), [0, 1, 2]
    t = Teacher(tags, counts, genres="target", anchors="cooccur")
    assert t.pick_tags(rows, 4) == ["Comedy", "Drama"]
    assert t.pick_items(hist, rows, 4) == [0, 2]  # rows 0 and 2 co-occur twice with 4
    p = Teacher(tags, None, genres="profile", anchors="recent", max_items=1)
    assert p.pick_tags(rows, 4) == ["Drama", "Comedy"]  # Drama twice in the history
    assert p.pick_items(hist, rows, 4) == [2]  # the latest item rated >= 4


def test_rationale_metrics_by_hand():
    rendered = [
        "Genres: Drama War\nBecause of: [Heat (1995)] [Nope (2001)]",  # one fake item
        "Genres: Drama\nGenres: Drama",                                 # a loop
        "Because of: <i12>",                                            # an internal token left
    ]
    history = [["Heat (1995)"], ["Casino (1995)"], []]
    recs = [[["Drama"], ["Comedy"], ["War", "Drama"], ["Horror"]], [["Comedy"]] * 4, [[]] * 4]
    m = rationale_metrics(rendered, history, recs, {"Heat (1995)", "Casino (1995)"},
                          {"Drama", "War", "Comedy", "Horror"}, k=4)
    assert m["distinct_lines"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert m["internal_tokens"] == pytest.approx(1 / 3)
    assert m["grounded_items"] == pytest.approx(0.5)   # only the first names items
    assert m["history_items"] == pytest.approx(0.5)
    assert m["grounded_genres"] == 1.0
    # user 1: 2 of 4 recommended carry Drama or War; user 2: none carry Drama
    assert m["genre_agreement@4"] == pytest.approx((0.5 + 0.0) / 2)
    assert m["named_genres_in_top@4"] == pytest.approx((1.0 + 0.0) / 2)
    assert math.isnan(rationale_metrics([""], [[]], [[]], set(), set())["grounded_items"])
    assert np.isfinite(m["distinct_lines"])
