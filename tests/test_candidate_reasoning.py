"""`bench/candidate_reasoning.py`: the candidates it writes are the best unmasked items, the
readouts it trains are the plain ones plus one per plain readout with the candidates before
<answer>, and its `none` figure is the protocol's own no-reasoning evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from r2ec.config import SamplingConfig
from r2ec.data import Catalog
from r2ec.model import R2ec
from r2ec.prompts import item_token
from r2ec.training import evaluate_r2ec
from r2ec.warmstart import user_windows
from tests.conftest import load_bench, synthetic_catalog


@pytest.fixture(scope="module")
def bench():
    return load_bench("candidate_reasoning")


def test_top_candidates_skip_masked_rows(bench):
    items = torch.eye(5)
    users = torch.tensor([[0.0, 1.0, 0.9, 0.1, 0.0], [1.0, 0.0, 0.0, 0.0, 0.5]])
    got = bench.top_candidates(users, items, [[1], []], k=2, tau=0.02)
    assert got == [[2, 3], [0, 4]]


def test_candidate_readouts_follow_the_plain_ones(bench, tiny_model_dir):
    items, samples = synthetic_catalog(n_users=4)
    catalog = Catalog.from_frame(items)
    r2ec = R2ec.load(tiny_model_dir, device="cpu")
    batch = user_windows(samples, catalog, 20, 10)
    windows = bench.plain_windows(r2ec, batch)
    plain = [(r.after_line, list(r.block), r.target) for w in windows for r in w.readouts]
    cands = [[i % 5, 7] for i in range(len(plain))]
    head = r2ec.encode(bench.HEAD)
    token_of_row = [r2ec.encode(item_token(i))[0] for i in catalog.ids]
    bench.add_candidate_readouts(windows, cands, head, token_of_row, r2ec.answer_id)
    extra = [r for w in windows for r in w.readouts[len(w.readouts) // 2:]]
    assert len(extra) == len(plain)
    for r, (line, block, target), c in zip(extra, plain, cands, strict=True):
        assert (r.after_line, r.target) == (line, target)
        assert list(r.block) == block[:-1] + head + [token_of_row[x] for x in c] + block[-1:]
        assert r.lm_from == len(block) - 1  # the LM loss covers the reasoning and <answer>


def test_none_is_the_protocol_evaluation(bench, tiny_model_dir):
    items, samples = synthetic_catalog()
    samples = samples.iloc[:20].reset_index(drop=True)
    catalog = Catalog.from_frame(items)
    r2ec = R2ec.load(tiny_model_dir, device="cpu")
    head = r2ec.encode(bench.HEAD)
    token_of_row = [r2ec.encode(item_token(i))[0] for i in catalog.ids]
    got = bench.evaluate(r2ec, samples, catalog, head, token_of_row, k=3, batch_size=8)
    want = evaluate_r2ec(r2ec, samples, catalog, reasoning=False).metrics["ndcg@10"]
    assert got["none"] == pytest.approx(want)
    # the greedy read-out is the protocol's greedy-reasoning evaluation with the same budget
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=3 + len(head) + 2)
    want = evaluate_r2ec(r2ec, samples, catalog, reasoning=True, sampling=greedy).metrics
    assert got["lm_reasoning"] == pytest.approx(want["ndcg@10"])
    for key in ("rec_candidates", "random_candidates", "target_written", "lm_names_top_k"):
        assert 0.0 <= got[key] <= 1.0
    assert np.isfinite(got["target_written"]) and got["samples"] == 20
