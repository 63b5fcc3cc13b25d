"""RecPO's pure functions against hand-computed values, and the trainer on a tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from r2ec import recpo

LOG2 = math.log2


def test_fused_reward_by_hand():
    scores = torch.tensor([[3.0, 2.0, 1.0, 0.0],    # target 1 at rank 2
                           [3.0, 2.0, 1.0, 0.0],    # target 2, item 0 masked -> rank 2
                           [3.0, 2.0, 1.0, 0.0]])   # target 0 is in the history -> masked
    targets = torch.tensor([1, 2, 0])
    exclude = [[], [0], [0, 3]]
    r = recpo.fused_reward(scores, targets, exclude, beta=0.05, ndcg_k=1000)
    p1 = math.exp(2) / sum(math.exp(x) for x in (3, 2, 1, 0))
    p2 = math.exp(1) / sum(math.exp(x) for x in (2, 1, 0))
    assert r[0].item() == pytest.approx(0.95 / LOG2(3) + 0.05 * p1, rel=1e-6)
    assert r[1].item() == pytest.approx(0.95 / LOG2(3) + 0.05 * p2, rel=1e-6)
    assert r[2].item() == 0.0


def test_reward_cutoff_and_ties():
    scores = torch.zeros(1, 5)  # all tied: stable rule puts target 3 at rank 4
    assert recpo.target_rank(scores, torch.tensor([3])).item() == 4
    r = recpo.fused_reward(scores, torch.tensor([3]), [[]], beta=0.0, ndcg_k=3)
    assert r.item() == 0.0  # rank 4 > k_r = 3
    r = recpo.fused_reward(scores, torch.tensor([3]), [[]], beta=1.0, ndcg_k=3)
    assert r.item() == pytest.approx(0.2)


def test_group_advantages():
    rewards = torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]])
    grpo = recpo.group_advantages(rewards, "grpo")
    assert grpo[0].tolist() == pytest.approx([-1.0, 0.0, 1.0])  # unbiased std of 1,2,3 is 1
    assert grpo[1].tolist() == [0.0, 0.0, 0.0]
    rloo = recpo.group_advantages(rewards, "rloo")
    assert rloo[0].tolist() == pytest.approx([-1.5, 0.0, 1.5])
    assert recpo.group_advantages(torch.tensor([[0.7], [0.1]])).tolist() == [[0.0], [0.0]]  # G = 1
    with pytest.raises(ValueError):
        recpo.group_advantages(rewards, "nope")


def test_token_loss_normalisation_and_clipping():
    logp = torch.zeros(4, 3)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 0, 1]], dtype=torch.float)
    adv = torch.tensor([1.0, -1.0, 2.0, 0.0])
    # ratio 1: per-token loss = -A; group norm (G = 2): user 0 -> (-1-1+1)/3, user 1 -> (-2*3)/4
    got = recpo.token_loss(logp, logp, adv, mask, group_size=2, norm="group")
    assert got.item() == pytest.approx(((-1 - 1 + 1) / 3 + (-6 + 0) / 4) / 2)
    tok = recpo.token_loss(logp, logp, adv, mask, group_size=2, norm="token")
    assert tok.item() == pytest.approx((-1 - 1 + 1 - 6) / 7)
    # clipping: ratio 2 with A > 0 is capped at 1 + eps_high; ratio 0.5 with A < 0 at 1 - eps_low
    up = recpo.clipped_ratio_objective(torch.tensor([math.log(2)]), torch.tensor([0.0]),
                                       torch.tensor([1.0]), 0.2, 0.28)
    down = recpo.clipped_ratio_objective(torch.tensor([math.log(0.5)]), torch.tensor([0.0]),
                                         torch.tensor([-1.0]), 0.2, 0.28)
    assert up.item() == pytest.approx(-1.28) and down.item() == pytest.approx(0.8)


def test_token_loss_gradient_follows_advantage():
    logp = torch.zeros(2, 2, requires_grad=True)
    loss = recpo.token_loss(logp, logp.detach(), torch.tensor([1.0, -1.0]), torch.ones(2, 2), 2)
    loss.backward()
    assert (logp.grad[0] < 0).all() and (logp.grad[1] > 0).all()  # raise good, lower bad


def test_best_of_group():
    adv = torch.tensor([[0.1, 0.5, 0.5], [-1.0, 0.0, 2.0]])
    assert recpo.best_of_group(adv, 1).tolist() == [[False, True, False], [False, False, True]]
    assert recpo.best_of_group(adv, 2).tolist() == [[False, True, True], [False, True, True]]


def test_item_loss_by_hand():
    users = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    items = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    labels, adv, tau = torch.tensor([0, 0]), torch.tensor([2.0, 1.0]), 0.5
    nll0 = -math.log(math.exp(2) / (math.exp(2) + 1))
    nll1 = -math.log(1 / (1 + math.exp(2)))
    got = recpo.item_loss(users, items, labels, adv, tau)
    assert got.item() == pytest.approx((2 * nll0 + 1 * nll1) / 2, rel=1e-5)


def test_sequence_logprobs():
    logits = torch.log(torch.tensor([[[0.25, 0.75], [0.5, 0.5]]]))
    got = recpo.sequence_logprobs(logits, torch.tensor([[1, 0]])).exp()
    assert got[0].tolist() == pytest.approx([0.75, 0.5])


def test_sequence_logprobs_follow_the_sampler():
    """Log-probs under temperature and top-k are those of the distribution the sampler draws
    from, which torch.multinomial on the same transformed logits confirms."""
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = torch.log(p)[None, None]
    t, k = 2.0, 3
    scaled = p ** (1 / t)
    scaled[3] = 0.0  # outside the top 3
    want = scaled / scaled.sum()
    for tok in range(3):
        got = recpo.sequence_logprobs(logits, torch.tensor([[tok]]), t, k).exp().item()
        assert got == pytest.approx(want[tok].item(), rel=1e-5)
    assert recpo.sequence_logprobs(logits, torch.tensor([[3]]), t, k).item() == float("-inf")
    # temperature 1 / top-k 0 is the plain softmax
    plain = recpo.sequence_logprobs(logits, torch.tensor([[2]]), 1.0, 0).exp().item()
    assert plain == pytest.approx(0.15, rel=1e-5)
    # the sampler agrees: empirical frequencies of the transformed distribution
    g = torch.Generator().manual_seed(0)
    z = (torch.log(p) / t).masked_fill(torch.arange(4) == 3, float("-inf"))
    draws = torch.multinomial(torch.softmax(z, 0), 20000, replacement=True, generator=g)
    freq = torch.bincount(draws, minlength=4).float() / 20000
    assert freq.tolist() == pytest.approx(want.tolist(), abs=0.01)


def test_sequence_logprobs_equal_what_generate_sampled_from(tiny_model_dir):
    """The same, against the sampler RecPO's rollouts really use: the project's backend runs
    its own `model.generate` call (the rollouts' temperature, top-k and top-p), kept here with
    the processed scores generate drew each token from; sequence_logprobs on a plain forward
    pass must give those log-probabilities. (A ratio taken under another distribution than the
    sampler's, e.g. the temperature left out, biases every RecPO update.)"""
    from r2ec.model import R2ec

    r2ec = R2ec.load(tiny_model_dir, device="cpu")
    kept = []
    plain = r2ec.model.generate

    def keep_scores(**kw):
        out = plain(**kw, output_scores=True, return_dict_in_generate=True)
        kept.append(out)
        return out.sequences

    r2ec.backend.model.generate = keep_scores  # an instance attribute shadows the method
    cfg = recpo.RecPOConfig(temperature=1.7, top_k=7, max_new_tokens=6, group_size=3)
    prompt = r2ec.encode("I watched Film number 3 (1983) and Film number 12 (1992); now")
    r2ec.reason([prompt], n=cfg.group_size, sampling=cfg.rollout_sampling)
    (out,) = kept
    new = out.sequences[:, len(prompt):]
    with torch.no_grad():
        logits = r2ec.model(out.sequences).logits[:, len(prompt) - 1: -1]
    ours = recpo.sequence_logprobs(logits, new, cfg.temperature, cfg.top_k)
    theirs = torch.stack([torch.log_softmax(s.float(), -1).gather(1, new[:, i:i + 1])[:, 0]
                          for i, s in enumerate(out.scores)], 1)
    stops = set(r2ec.backend.stop_ids) | {r2ec.backend.answer_id}
    for row in range(cfg.group_size):  # up to and with each rollout's stop token
        toks = new[row].tolist()
        end = next((i + 1 for i, t in enumerate(toks) if t in stops), len(toks))
        torch.testing.assert_close(ours[row, :end], theirs[row, :end], atol=1e-4, rtol=1e-4)
    assert torch.isfinite(theirs[:, 0]).all()


def test_flat_groups_get_no_advantage():
    rewards = torch.tensor([[0.30, 0.30001, 0.29999], [0.1, 0.5, 0.9]])
    adv = recpo.group_advantages(rewards, "grpo", min_std=1e-3)
    assert adv[0].tolist() == [0.0, 0.0, 0.0]  # noise-level spread, not amplified to +-1
    assert adv[1].tolist() == pytest.approx([-1.0, 0.0, 1.0])
    raw = recpo.group_advantages(rewards, "grpo")
    assert raw[0].abs().max() > 0.5  # what the threshold prevents


def test_rollout_batch_trains_the_token_that_closed_each_reasoning():
    """<answer> written by the model, a chat model's end of turn, and a budget that ran out:
    the sequence always ends at <answer> (where h_T is read); the label there is the token the
    model chose, and it is an action only when the model chose it."""
    from types import SimpleNamespace

    from r2ec.backends import Generation
    from r2ec.recpo_trainer import rollout_batch

    answer, eos, pad = 9, 2, 0
    fake = SimpleNamespace(answer_id=answer, tokenizer=SimpleNamespace(pad_token_id=pad))
    gens = [[Generation((5, 6), "", answer), Generation((5,), "", eos), Generation((7, 7, 7), "", None)]]
    ids, mask, labels, action = rollout_batch(fake, [[1, 3]], gens, "cpu")
    assert ids.tolist() == [[pad, 1, 3, 5, 6, answer], [pad, pad, 1, 3, 5, answer],
                            [1, 3, 7, 7, 7, answer]]
    assert labels[:, -1].tolist() == [answer, eos, answer]
    assert (labels[:, :-1] == ids[:, :-1]).all()
    assert action.tolist() == [[False, False, False, True, True, True],
                               [False, False, False, False, True, True],
                               [False, False, True, True, True, False]]


def test_centered_advantage_has_no_std_normalisation():
    rewards = torch.tensor([[0.1, 0.2, 0.6], [0.3, 0.3, 0.3]])
    adv = recpo.group_advantages(rewards, "centered", min_std=1e-3)
    assert adv[0].tolist() == pytest.approx([-0.2, -0.1, 0.3])  # R - mean, unscaled
    assert adv[1].tolist() == [0.0, 0.0, 0.0]


def test_rollout_temperatures_spread_over_a_group():
    cfg = recpo.RecPOConfig(group_size=4, temperature=1.5)
    assert cfg.rollout_temperatures() == [1.5] * 4
    assert recpo.RecPOConfig(group_size=4, group_temperatures=[2.0, 1.0]).rollout_temperatures() \
        == [1.0, 1.0, 2.0, 2.0]
    assert recpo.RecPOConfig(group_size=4, group_temperatures=[2.0, 1.0, 1.5]) \
        .rollout_temperatures() == [1.0, 1.0, 1.5, 2.0]
    with pytest.raises(ValueError, match="at most"):
        recpo.RecPOConfig(group_size=2, group_temperatures=[1.0, 1.5, 2.0]).rollout_temperatures()


def test_sequence_logprobs_take_each_rows_own_temperature():
    torch.manual_seed(0)
    logits, tokens = torch.randn(3, 2, 7), torch.randint(0, 7, (3, 2))
    temps = torch.tensor([0.7, 1.0, 2.0])
    got = recpo.sequence_logprobs(logits, tokens, temps, top_k=5)
    for i, t in enumerate(temps.tolist()):
        want = recpo.sequence_logprobs(logits[i: i + 1], tokens[i: i + 1], t, top_k=5)
        assert torch.equal(got[i: i + 1], want)


def test_group_rollouts_sample_each_temperature_for_every_prompt():
    from types import SimpleNamespace

    from r2ec.recpo_trainer import group_rollouts

    calls = []

    def reason(prompts, n, sampling):
        calls.append((n, sampling.temperature, sampling.seed))
        return [[f"{p}@{sampling.temperature}#{j}" for j in range(n)] for p in prompts]

    cfg = recpo.RecPOConfig(group_size=4, group_temperatures=[2.0, 1.0])
    out = group_rollouts(SimpleNamespace(reason=reason), ["a", "b"], cfg,
                         cfg.rollout_temperatures(), seed=5)
    assert [c[:2] for c in calls] == [(2, 1.0), (2, 2.0)] and calls[0][2] != calls[1][2]
    assert out == [["a@1.0#0", "a@1.0#1", "a@2.0#0", "a@2.0#1"],
                   ["b@1.0#0", "b@1.0#1", "b@2.0#0", "b@2.0#1"]]
