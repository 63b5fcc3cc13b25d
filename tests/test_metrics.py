"""Hit@K / NDCG@K against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from r2ec.evaluation import EarlyStopping
from r2ec.metrics import (
    RankAccumulator,
    metrics_from_ranks,
    ndcg_from_lists,
    ndcg_per_sample,
    paired_bootstrap,
    target_ranks,
)


def _scores_with_target_at(rank: int, n: int = 30, target: int = 7) -> np.ndarray:
    s = np.linspace(1.0, 0.0, n)  # row 0 best
    order = [i for i in range(n) if i != target]
    order.insert(rank - 1, target)
    out = np.empty(n)
    out[order] = s
    return out


@pytest.mark.parametrize("rank", [1, 5, 6, 10, 11, 20, 21])
def test_rank_and_metrics_by_hand(rank):
    r = target_ranks(_scores_with_target_at(rank)[None, :], [7])
    assert r.tolist() == [rank]
    m = metrics_from_ranks(r)
    for k in (5, 10, 20):
        assert m[f"hit@{k}"] == (1.0 if rank <= k else 0.0)
        assert m[f"ndcg@{k}"] == pytest.approx(1 / math.log2(rank + 1) if rank <= k else 0.0)


def test_masked_history_moves_target_up_and_masked_target_misses():
    s = _scores_with_target_at(11)[None, :]
    above = np.argsort(-s[0])[:10].tolist()  # the ten items ranked above the target
    assert target_ranks(s, [7], [above[:4]]).tolist() == [7]
    assert target_ranks(s, [7], [[7]]).tolist() == [31]  # target in the history window
    assert metrics_from_ranks([31])["hit@20"] == 0.0


def test_ties_are_broken_by_row_not_in_the_targets_favour():
    s = np.zeros((1, 10))
    assert target_ranks(s, [0]).tolist() == [1]
    assert target_ranks(s, [9]).tolist() == [10]


def test_accumulator_averages_over_batches():
    acc = RankAccumulator()
    acc.add(_scores_with_target_at(1)[None, :], [7])
    acc.add(np.stack([_scores_with_target_at(3), _scores_with_target_at(30)]), [7, 7])
    m = acc.result()
    assert m["hit@5"] == pytest.approx(2 / 3)
    assert m["ndcg@5"] == pytest.approx((1 + 1 / math.log2(4)) / 3)


def test_ndcg_per_sample_matches_the_means():
    ranks = np.array([1, 3, 10, 11, 1683])
    got = ndcg_per_sample(ranks, 10)
    assert got == pytest.approx([1.0, 0.5, 1 / math.log2(11), 0.0, 0.0])
    assert metrics_from_ranks(ranks)["ndcg@10"] == pytest.approx(got.mean())
    assert ndcg_per_sample(ranks.reshape(1, 5), 5).shape == (1, 5)


def test_ndcg_from_lists_matches_ranks():
    lists = [["a", "b", "c"], ["x", "y", "t"], ["p", "q", "r"]]
    got = ndcg_from_lists(lists, ["a", "t", "z"], k=3)
    assert got == pytest.approx([1.0, 1 / math.log2(4), 0.0])
    assert ndcg_from_lists(lists, ["a", "t", "z"], k=2) == pytest.approx([1.0, 0.0, 0.0])


def test_paired_bootstrap_interval():
    rng = np.random.default_rng(1)
    base = rng.random(4000)
    # A constant shift: the difference is exact and the interval has no width.
    d, lo, hi = paired_bootstrap(base + 0.1, base)
    assert d == pytest.approx(0.1) and lo == pytest.approx(0.1) and hi == pytest.approx(0.1)
    # Pure noise around the same mean: the interval holds 0 and is about +-1.96 s.e. wide.
    noise = rng.normal(0, 1, 4000)
    d, lo, hi = paired_bootstrap(noise, np.zeros(4000), n_boot=3000)
    se = noise.std() / math.sqrt(4000)
    assert lo < 0 < hi
    assert (hi - lo) == pytest.approx(2 * 1.96 * se, rel=0.15)
    # A real, small gain on paired data is found even though each arm is noisy.
    d, lo, hi = paired_bootstrap(base + 0.02 + rng.normal(0, 0.05, 4000), base)
    assert lo > 0
    with pytest.raises(ValueError):
        paired_bootstrap(np.zeros(3), np.zeros(4))


def test_early_stopping_rule():
    stop = EarlyStopping(patience=2)
    assert stop.update(0.1) == (True, False)
    assert stop.update(0.1) == (False, False)  # equal is not better
    assert stop.update(0.2) == (True, False)
    assert stop.update(0.15) == (False, False)
    assert stop.update(0.19) == (False, True)
    assert stop.best == 0.2
    never = EarlyStopping(patience=0)
    assert [never.update(0.0)[1] for _ in range(10)] == [False] * 10


def test_beyond_accuracy_on_a_hand_computed_case():
    from r2ec.beyond import beyond_accuracy

    # counts a=3, b=1, c=1, d=0 -> sorted 0,1,1,3 -> mid-rank percentiles .875, .5, .5, .125
    counts, ids = {"a": 3, "b": 1, "c": 1}, ["a", "b", "c", "d"]
    tags = {"a": ["Action"], "b": ["Action", "Comedy"], "c": ["Drama"], "e": ["x"]}
    got = beyond_accuracy([["a", "b"], ["c", "d"]], [["c"], ["a", "b"]], counts, ids, tags,
                          ks=(1, 2))
    assert got["coverage@1"] == 0.5 and got["coverage@2"] == 1.0
    assert got["popularity_percentile@2"] == pytest.approx(((.875 + .5) / 2 + (.5 + .125) / 2) / 2)
    # u1: .6875 - .5 (history c); u2: .3125 - .6875 (history a, b)
    assert got["popularity_bias@2"] == pytest.approx((0.1875 - 0.375) / 2)
    # p = (count + 1) / (5 + 4): a 4/9, b 2/9, c 2/9, d 1/9
    nov = np.mean([np.mean([-np.log2(4 / 9), -np.log2(2 / 9)]),
                   np.mean([-np.log2(2 / 9), -np.log2(1 / 9)])])
    assert got["novelty@2"] == pytest.approx(nov)
    assert got["novelty@1"] == pytest.approx(np.mean([-np.log2(4 / 9), -np.log2(2 / 9)]))
    # (a, b): Jaccard 1/2 -> .5; (c, d): {Drama} vs {} -> 1.0
    assert got["diversity@2"] == pytest.approx(0.75)
    assert np.isnan(got["diversity@1"])  # one item: no pair


def test_diversity_leaves_out_pairs_without_tags():
    from r2ec.beyond import beyond_accuracy

    ids = ["a", "b", "c"]
    got = beyond_accuracy([["a", "b", "c"]], [[]], {}, ids, {"c": ["Drama"]}, ks=(3,))
    assert got["diversity@3"] == 1.0  # (a, b) has no tags at all: only (a, c), (b, c) count
    assert np.isnan(got["popularity_bias@3"])  # no history to compare with
    assert got["popularity_percentile@3"] == 0.5  # all tied at zero: every item mid-rank
