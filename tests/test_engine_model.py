"""The dual-head model: hidden states, padding, prompts, generation, the default model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from r2ec.batching import last_token_states, pad_batch
from r2ec.config import SamplingConfig
from r2ec.data import Catalog, histories, times
from r2ec.model import R2ec
from r2ec.prompts import ANSWER, all_gaps, gap
from tests.conftest import synthetic_catalog


@pytest.fixture(scope="module")
def r2ec(tiny_model_dir) -> R2ec:
    return R2ec.load(tiny_model_dir, device="cpu", batch_size=4)


@pytest.fixture(scope="module")
def data():
    items, samples = synthetic_catalog()
    return Catalog.from_frame(items), samples


def _manual(model, seq) -> np.ndarray:
    """One unpadded forward pass, hidden state of the final layer at the last token."""
    with torch.no_grad():
        out = model(input_ids=torch.tensor([seq]), output_hidden_states=True)
    return out.hidden_states[-1][0, -1].numpy()


@pytest.mark.parametrize("side", ["left", "right"])
def test_last_token_state_ignores_padding(r2ec, data, side):
    cat, samples = data
    s = samples.head(5)
    seqs = r2ec.user_sequences(r2ec.user_prompts(histories(s), times(s["target_ts"])), None)
    seqs[1] = seqs[1][:-17]  # different lengths in one batch
    assert len({len(x) for x in seqs}) > 1
    ids, mask = pad_batch(seqs, r2ec.tokenizer.pad_token_id, side)
    with torch.no_grad():
        batched = last_token_states(r2ec.model, ids, mask).numpy()
    for i, seq in enumerate(seqs):
        np.testing.assert_allclose(batched[i], _manual(r2ec.model, seq), atol=2e-5, rtol=1e-4)


def test_user_state_matches_manual_forward(r2ec, data):
    _, samples = data
    s = samples.head(6)
    prompts = r2ec.user_prompts(histories(s), times(s["target_ts"]))
    gens = r2ec.reason(prompts, sampling=SamplingConfig(max_new_tokens=5))
    h = r2ec.user_state(prompts, [g[0] for g in gens])
    for i, (p, g) in enumerate(zip(prompts, gens, strict=True)):
        seq = list(p) + list(g[0].token_ids) + [r2ec.answer_id]
        np.testing.assert_allclose(h[i], _manual(r2ec.model, seq), atol=2e-5, rtol=1e-4)


def test_item_encodings_equal_single_encodings(r2ec, data):
    cat, _ = data
    prompts = r2ec.item_prompts(cat.ids[:9], cat.titles[:9], cat.attributes[:9])
    batch = r2ec.encode_items(prompts)
    for i in (0, 4, 8):
        np.testing.assert_allclose(batch[i], r2ec.encode_items([prompts[i]])[0], atol=2e-5,
                                   rtol=1e-4)


def test_prompts_follow_the_paper(r2ec, data):
    cat, samples = data
    item = r2ec.tokenizer.decode(r2ec.item_prompts(cat.ids[:1], cat.titles[:1], cat.attributes[:1])[0])
    assert item.startswith("<|im_start|>user\nSummarize key attributes of the following movie")
    assert "Title: <i1> Film number 1 (1981)" in item and item.endswith(f"assistant\n{ANSWER}")
    assert "Genres: Comedy" in item and "Year" not in item  # the title already shows the year
    s = samples.head(1)
    user = r2ec.tokenizer.decode(r2ec.user_prompts(histories(s), times(s["target_ts"]))[0])
    assert "recommend the next movie I might watch inside <answer> and </answer>" in user
    first = s.iloc[0]
    line = f"\nfirst: [<i{first['history_item_ids'][0]}> {first['history_titles'][0]}] ("
    assert line in user and user.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert "\nnow, " in user


def test_prompt_segments_concatenate_to_the_prompt(r2ec, data):
    """What packing relies on: prefix + line segments + readout = the inference prompt, the
    first line is written "first", and lines depend on the past only."""
    _, samples = data
    hist = histories(samples.head(6))[-1]
    ref = times(samples.head(6)["target_ts"])[-1]
    lines = [r2ec.line_ids(h, hist[i - 1].ts if i else None) for i, h in enumerate(hist)]
    whole = r2ec.prefix_ids() + [t for ln in lines for t in ln] + r2ec.readout_ids(hist[-1].ts, ref)
    assert r2ec.user_prompt(hist, ref) == whole
    assert r2ec.tokenizer.decode(lines[0]).startswith("\nfirst: [")
    second = gap((hist[1].ts - hist[0].ts).total_seconds())
    assert r2ec.tokenizer.decode(lines[1]).startswith(f"\n{second}: [")


def test_gap_buckets():
    day = 86400
    assert [gap(x * day) for x in (0.5, 1, 3, 13, 14, 20, 70, 400, 800)] == [
        "same day", "1 day later", "3 days later", "13 days later", "2 weeks later",
        "2 weeks later", "2 months later", "13 months later", "2 years later"]
    assert set(gap(x * day) for x in range(0, 4000, 3)) <= set(all_gaps())


def test_generation_stops_at_answer_and_is_seeded(r2ec, data):
    _, samples = data
    s = samples.head(4)
    prompts = r2ec.user_prompts(histories(s), times(s["target_ts"]))
    sampling = SamplingConfig(temperature=1.5, top_k=50, max_new_tokens=8, seed=7)
    a = r2ec.reason(prompts, n=3, sampling=sampling)
    b = r2ec.reason(prompts, n=3, sampling=sampling)
    assert [[g.token_ids for g in x] for x in a] == [[g.token_ids for g in x] for x in b]
    for per_user in a:
        assert len(per_user) == 3
        for g in per_user:
            assert len(g.token_ids) <= 8 and r2ec.answer_id not in g.token_ids
    seqs = r2ec.user_sequences(prompts, [x[0] for x in a])
    assert all(r2ec.tokenizer.decode(s).endswith(ANSWER) for s in seqs)
    with pytest.raises(ValueError, match="temperature"):
        r2ec.reason(prompts, n=2, sampling=SamplingConfig(temperature=0))


def test_no_reasoning_mode_reads_state_after_the_prompt(r2ec, data):
    _, samples = data
    s = samples.head(2)
    prompts = r2ec.user_prompts(histories(s), times(s["target_ts"]))
    h = r2ec.user_state(prompts, None)
    np.testing.assert_allclose(h[0], _manual(r2ec.model, prompts[0] + [r2ec.answer_id]),
                               atol=2e-5, rtol=1e-4)


def test_score_is_cosine_over_tau():
    rng = np.random.default_rng(0)
    h, H = rng.normal(size=(3, 8)), rng.normal(size=(5, 8))
    cos = (h / np.linalg.norm(h, axis=1, keepdims=True)) @ (H / np.linalg.norm(H, axis=1, keepdims=True)).T
    np.testing.assert_allclose(R2ec.score(h, H, 0.02), cos / 0.02, rtol=1e-5)
    torch_scores = R2ec.score(torch.tensor(h), torch.tensor(H), 0.02).numpy()
    np.testing.assert_allclose(torch_scores, cos / 0.02, rtol=1e-5)


def test_default_tokenizer_round_trips_through_autotokenizer(r2ec, tiny_model_dir, data):
    _, samples = data
    s = samples.head(3)
    prompts = r2ec.user_prompts(histories(s), times(s["target_ts"]))
    reloaded = AutoTokenizer.from_pretrained(tiny_model_dir)
    for p in prompts:
        text = r2ec.tokenizer.decode(p)
        assert reloaded(text, add_special_tokens=False)["input_ids"] == p
    assert reloaded.padding_side == "left"
    assert len(reloaded) == r2ec.model.get_input_embeddings().weight.shape[0]
    assert r2ec.model.config.head_dim * r2ec.model.config.num_attention_heads == \
        r2ec.model.config.hidden_size


def test_test_time_scaling_averages_normalised_states(r2ec, data):
    _, samples = data
    s = samples.head(3)
    prompts = r2ec.user_prompts(histories(s), times(s["target_ts"]))
    sampling = SamplingConfig(temperature=1.0, top_k=50, max_new_tokens=5, seed=3)
    h, gens = r2ec.reasoned_states(prompts, True, 3, sampling)
    parts = [r2ec.user_state(prompts, [g[k] for g in gens]) for k in range(3)]
    want = np.mean([p / np.linalg.norm(p, axis=1, keepdims=True) for p in parts], axis=0)
    np.testing.assert_allclose(h, want, atol=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        r2ec.reasoned_states(prompts, True, 2, SamplingConfig())
    from r2ec_batch.evaluation import eval_mode

    assert [eval_mode(False), eval_mode(True), eval_mode(True, 8, 1.0)] == [
        "no_reasoning", "greedy_reasoning", "reasoning_x8_t1"]


def test_a_new_item_without_an_id_token_is_embedded_and_recommendable(r2ec, data):
    """An item added to the catalogue after the tokenizer was built has no <i{id}> token: its
    prompt is its text alone, it gets an embedding, and a user state near it finds it."""
    from r2ec.index import ItemIndex
    from r2ec.prompts import item_token

    catalog, _ = data
    new = "990001"
    assert item_token(new) not in r2ec.tokenizer.get_vocab()
    assert item_token(catalog.ids[0]) in r2ec.tokenizer.get_vocab()  # the old ones have one
    ids = [*catalog.ids, new]
    prompts = r2ec.item_prompts(ids, [*catalog.titles, "A Brand New Film (2026)"],
                                [*catalog.attributes, {"genres": "Drama"}])
    assert "A Brand New Film" in r2ec.tokenizer.decode(prompts[-1])
    assert "<i" not in r2ec.tokenizer.decode(prompts[-1])  # no item-id token
    vectors = r2ec.encode_items(prompts)
    assert np.isfinite(vectors[-1]).all() and np.abs(vectors[-1]).sum() > 0
    index = ItemIndex(ids, vectors, model_version=r2ec.model_version, tau=r2ec.tau)
    found, _ = index.search(vectors[-1:] + 1e-3 * vectors.std(), 3, exclude=[[]])
    assert found[0][0] == new
