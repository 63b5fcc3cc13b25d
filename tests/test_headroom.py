"""`bench/reasoning_headroom.py`: the ceiling of what choosing among sampled reasonings can gain.
Its greedy row must be the protocol's own evaluation, and the oracle must be a true per-sample
maximum, or the ceiling it reports for RecPO means nothing."""

from __future__ import annotations

import numpy as np
import pytest

from r2ec.config import SamplingConfig
from r2ec.data import Catalog
from r2ec.model import R2ec
from r2ec.training import evaluate_r2ec
from tests.conftest import load_bench, synthetic_catalog


@pytest.fixture(scope="module")
def headroom_module():
    return load_bench("reasoning_headroom")


def test_summary_of_hand_made_ranks(headroom_module):
    ranks = {"none": np.array([1, 20]), "greedy": np.array([3, 11]),
             "sampled": np.array([[3, 1, 7], [11, 11, 11]]), "mean_state": np.array([2, 12]),
             "placebo": np.array([[4, 3, 30], [2, 40, 11]])}
    s = headroom_module.summarise(ranks, group=3, temperature=1.0)
    assert s["ndcg10_none"] == pytest.approx(0.5)  # 1/log2(2) and 0
    assert s["ndcg10_greedy"] == pytest.approx(0.25)  # 1/log2(4) and 0
    assert s["ndcg10_oracle_best_of_group"] == pytest.approx(0.5)  # rank 1, then nothing in 10
    assert s["ndcg10_sampled_mean"] == pytest.approx((0.5 + 1 + 1 / 3) / 6)
    assert s["ndcg10_mean_state"] == pytest.approx(1 / np.log2(3) / 2)
    assert s["oracle_minus_greedy"] == pytest.approx(0.25)
    assert s["ndcg10_placebo_oracle"] == pytest.approx((1 / np.log2(4) + 1 / np.log2(3)) / 2)
    assert s["share_groups_target_rank_equal"] == 0.5
    assert s["median_rank_spread"] == 3.0  # spreads 6 and 0


def test_greedy_row_is_the_protocol_evaluation_and_oracle_bounds_the_samples(
        headroom_module, tiny_model_dir):
    items, samples = synthetic_catalog()
    samples = samples.iloc[:24].reset_index(drop=True)
    catalog = Catalog.from_frame(items)
    r2ec = R2ec.load(tiny_model_dir, device="cpu")
    ranks = headroom_module.headroom(r2ec, samples, catalog, group=3, temperature=1.5,
                                     max_new_tokens=4, batch_size=10)
    greedy = evaluate_r2ec(r2ec, samples, catalog, reasoning=True,
                           sampling=SamplingConfig(temperature=0.0, max_new_tokens=4))
    none = evaluate_r2ec(r2ec, samples, catalog, reasoning=False)
    np.testing.assert_array_equal(ranks["greedy"], greedy.ranks)
    np.testing.assert_array_equal(ranks["none"], none.ranks)
    assert ranks["sampled"].shape == ranks["placebo"].shape == (24, 3)
    s = headroom_module.summarise(ranks, group=3, temperature=1.5)
    assert s["ndcg10_oracle_best_of_group"] >= s["ndcg10_sampled_mean"]
    assert ranks["sampled"].min() >= 1 and ranks["sampled"].max() <= len(catalog.ids)
