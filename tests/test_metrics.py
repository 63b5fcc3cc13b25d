"""Hit@K / NDCG@K against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from r2ec.metrics import RankAccumulator, metrics_from_ranks, target_ranks


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
