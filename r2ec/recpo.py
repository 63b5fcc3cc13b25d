"""RecPO (arXiv 2505.16994 §3.2): reward, advantage and losses as small pure functions.

For each user, G reasonings are sampled; each one's h_T scores the catalogue, and

    R = (1 - beta) * NDCG@k_r(target) + beta * softmax(scores)[target]     (history masked)

Advantages are normalised within each user's group. One update then minimises
    token loss: clipped policy gradient on the reasoning tokens of all G samples, and
    item loss:  in-batch softmax over the batch's target items for the best-advantage sample(s),
                weighted by their advantage (gradient reaches the item encoder through it).
No KL term, no reference model (as the paper). Where the authors' code differs from the
paper, each default below says which one it follows.

Two corrections to the authors' code: token log-probabilities are taken under the distribution
the rollouts were sampled from (temperature and top-k applied), not the raw softmax, so the
policy gradient is unbiased; and a group whose rewards barely differ gets no advantage at all,
instead of having noise divided by a tiny standard deviation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from r2ec.config import SamplingConfig, option, restate
from r2ec.training import LoopConfig


@dataclass
class RecPOConfig(LoopConfig):
    """RecPO (paper Alg. 1): rollouts, the fused reward, the clipped policy loss and the item
    loss; the loop settings are `LoopConfig`'s, whose defaults are RecPO's."""

    lr: float = restate(LoopConfig, "lr", 3e-5, "paper: 1e-5 for LoRA on 2-3B models; the small "
                                                "fully-trained CPU model after an annealed warm "
                                                "start: 3e-5")
    epochs: float = restate(LoopConfig, "epochs", 1.0, "paper: <= 3 with early stopping")
    group_size: int = option(help="G reasonings per user (paper: 4; 6-8 suffice, Fig. 3c/d)", default=4)
    temperature: float = option(help="rollout temperature (paper 1.5; authors' HEAD 2.0)", default=1.5)
    top_k: int = option(help="rollout top-k (paper 200; authors' launch script 50)", default=200)
    max_new_tokens: int = option(help="reasoning budget per rollout (paper: 512 for 2-3B models; "
                                      "small CPU model: the scoring budget)",
                                 default=SamplingConfig.max_new_tokens)
    beta: float = option(help="weight of the softmax reward R_c (paper: 0.05)", default=0.05)
    ndcg_k: int = option(help="cut-off of the ranking reward R_d (paper: 1000)", default=1000)
    advantage: str = option(help="'grpo' (group mean/std, paper default), 'rloo' (leave-one-out) or "
                        "'centered' (R - group mean, no division by the std: Dr. GRPO, Liu et al. "
                        "2025, which keeps a group whose rewards barely differ from being blown "
                        "up to unit scale)", default="grpo")
    min_reward_std: float = option(help="a group whose reward std is at most this gets no advantage (its "
                               "samples differ by noise only); the share of such groups is "
                               "logged", default=1e-3)
    group_temperatures: list[float] = option(help=
        "rollout temperatures within each group, spread evenly over its G rollouts (empty = all "
        "at `temperature`). A known remedy when groups collapse (every rollout of a user gets "
        "the same reward): hotter rollouts differ more. Each rollout's log-probabilities are "
        "taken under its own temperature", default_factory=list)
    refill_rounds: int = option(help=
        "extra rollout rounds per step that replace groups with no reward spread (std <= "
        "min_reward_std) by the next users' groups, until the step has users_per_step "
        "informative groups or the rounds run out (DAPO's dynamic sampling, Yu et al. 2025). "
        "Costs rollouts and one no-gradient pass per round; 0 = off", default=0)
    eps_low: float = option(help="lower clip of the ratio (paper 0.2)", default=0.2)
    eps_high: float = option(help="upper clip of the ratio (authors' code 0.28)", default=0.28)
    token_loss_norm: str = option(help="'group' = per user mean over its G samples' tokens, then mean over "
                              "users (authors' code); 'token' = mean over all tokens", default="group")
    relabel_topk: int = option(help="best-advantage samples per user that get the item loss (paper 1; "
                           "authors' launch script 2)", default=1)
    item_loss_weight: float = option(help="weight of the item loss against the token loss", default=1.0)
    users_per_step: int = option(help="users per micro-batch (paper: 24 per update; authors' code 12)",
                             default=16)
    refresh_every: int = option(help="steps between full item-table refreshes (authors: each evaluation, "
                            "~1/8 epoch)", default=50)

    @property
    def rollout_sampling(self) -> SamplingConfig:
        # No minimum length: the token log-probabilities of the update are those of plain
        # temperature / top-k sampling, so nothing may be suppressed while sampling.
        return SamplingConfig(temperature=self.temperature, top_k=self.top_k,
                              max_new_tokens=self.max_new_tokens, min_new_tokens=0, seed=self.seed)

    def rollout_temperatures(self) -> list[float]:
        """The temperature of each of a group's G rollouts, in rollout order."""
        if not self.group_temperatures:
            return [self.temperature] * self.group_size
        temps = sorted(self.group_temperatures)
        if len(temps) > self.group_size or any(t <= 0 for t in temps):
            raise ValueError(f"group_temperatures {temps}: at most G = {self.group_size} values, "
                             "each > 0")
        # G rollouts over the listed temperatures, as evenly as G allows (lower ones first)
        return [temps[g * len(temps) // self.group_size] for g in range(self.group_size)]

    @property
    def eval_sampling(self) -> SamplingConfig:
        """How validations reason: greedy, within the rollouts' budget."""
        return SamplingConfig(temperature=0.0, max_new_tokens=self.max_new_tokens)


def mask_history(scores: torch.Tensor, exclude: list[list[int]]) -> torch.Tensor:
    """scores (B, N) with each row's excluded items set to -inf (a copy)."""
    out = scores.clone()
    for i, rows in enumerate(exclude):
        if rows:
            out[i, rows] = float("-inf")
    return out


def target_rank(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1-based rank of each target (stable tie rule of r2ec.metrics); -inf target -> N + 1."""
    t = scores.gather(1, targets[:, None])
    cols = torch.arange(scores.shape[1], device=scores.device)[None]
    rank = 1 + (scores > t).sum(1) + ((scores == t) & (cols < targets[:, None])).sum(1)
    return torch.where(torch.isneginf(t[:, 0]), scores.shape[1] + 1, rank)


def fused_reward(scores: torch.Tensor, targets: torch.Tensor, exclude: list[list[int]],
                 beta: float = 0.05, ndcg_k: int = 1000) -> torch.Tensor:
    """R = (1 - beta) * NDCG@k(target) + beta * softmax(masked scores)[target], per row.
    `scores` are logits cos/tau over the whole catalogue, one row per sampled reasoning."""
    masked = mask_history(scores, exclude)
    rank = target_rank(masked, targets).to(scores.dtype)
    hit = (rank <= ndcg_k) & ~torch.isneginf(masked.gather(1, targets[:, None])[:, 0])
    ndcg = torch.where(hit, 1.0 / torch.log2(rank + 1.0), torch.zeros_like(rank))
    prob = torch.softmax(masked, dim=1).gather(1, targets[:, None])[:, 0]
    prob = torch.nan_to_num(prob, nan=0.0)
    return (1 - beta) * ndcg + beta * prob


def group_advantages(rewards: torch.Tensor, kind: str = "grpo", eps: float = 1e-8,
                     min_std: float = 0.0) -> torch.Tensor:
    """rewards (B, G) -> advantages (B, G), normalised within each user's group.
    grpo: (R - mean) / (std + eps), unbiased std as torch's default (authors' code);
    rloo: R_i - mean of the other G - 1 rewards (the standard leave-one-out baseline, not the
    authors' `R*(1+1/G) - mean`); centered: R - mean (Dr. GRPO: no std normalisation).
    A group of one, or whose reward std is at most `min_std` (equal rewards, or differences
    too small to mean anything), gets zero advantage."""
    g = rewards.shape[1]
    if g == 1:
        return torch.zeros_like(rewards)
    std = rewards.std(dim=1, keepdim=True)
    if kind == "grpo":
        adv = (rewards - rewards.mean(dim=1, keepdim=True)) / (std + eps)
    elif kind == "rloo":
        adv = rewards - (rewards.sum(dim=1, keepdim=True) - rewards) / (g - 1)
    elif kind == "centered":
        adv = rewards - rewards.mean(dim=1, keepdim=True)
    else:
        raise ValueError(f"unknown advantage kind {kind!r} (grpo, rloo, centered)")
    return torch.where(std > min_std, adv, torch.zeros_like(adv))


def clipped_ratio_objective(logp: torch.Tensor, logp_old: torch.Tensor, adv: torch.Tensor,
                            eps_low: float, eps_high: float) -> torch.Tensor:
    """Per-element -min(r A, clip(r, 1-eps_low, 1+eps_high) A), r = exp(logp - logp_old)."""
    ratio = torch.exp(logp - logp_old)
    return -torch.min(ratio * adv, ratio.clamp(1 - eps_low, 1 + eps_high) * adv)


def token_loss(logp: torch.Tensor, logp_old: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
               group_size: int, eps_low: float = 0.2, eps_high: float = 0.28,
               norm: str = "group") -> torch.Tensor:
    """Clipped policy gradient over reasoning tokens. logp/logp_old/mask: (B*G, T) with rows
    grouped per user; adv: (B*G,). With one update per rollout batch logp_old = logp.detach(),
    so the ratio is 1 and the clip never binds (as in the authors' code); it matters for reuse."""
    per_tok = clipped_ratio_objective(logp, logp_old, adv[:, None], eps_low, eps_high) * mask
    if norm == "token":
        return per_tok.sum() / mask.sum().clamp(min=1)
    if norm == "group":
        users = per_tok.shape[0] // group_size
        per_user = per_tok.reshape(users, -1).sum(1) / mask.reshape(users, -1).sum(1).clamp(min=1)
        return per_user.mean()
    raise ValueError(f"unknown token loss normalisation {norm!r} (group, token)")


def best_of_group(adv: torch.Tensor, topk: int = 1) -> torch.Tensor:
    """(B, G) advantages -> boolean mask of each group's top-k samples (ties: lowest index)."""
    k = min(topk, adv.shape[1])
    idx = torch.sort(adv, dim=1, descending=True, stable=True).indices[:, :k]
    return torch.zeros_like(adv, dtype=torch.bool).scatter(1, idx, True)


def item_loss(users: torch.Tensor, items: torch.Tensor, labels: torch.Tensor, adv: torch.Tensor,
              tau: float) -> torch.Tensor:
    """Item action of the selected samples: in-batch softmax over the batch's target items
    (rows of `items`), -log p(target), weighted by the sample's advantage and averaged.
    users (S, d), items (U, d), labels (S,) indexing items, adv (S,).
    At ratio 1 (one update per rollout batch) this has exactly the gradient of the clipped
    ratio form, and its value (advantage-weighted NLL) stays readable in the logs. Computed in
    float32: with bf16 states, cosine / 0.02 would be rounded to steps of 0.25."""
    logits = F.normalize(users.float(), dim=-1) @ F.normalize(items.float(), dim=-1).T / tau
    nll = -torch.log_softmax(logits, dim=1).gather(1, labels[:, None])[:, 0]
    return (adv.detach() * nll).mean()


def sequence_logprobs(logits: torch.Tensor, tokens: torch.Tensor,
                      temperature: float | torch.Tensor = 1.0, top_k: int = 0) -> torch.Tensor:
    """log p of each token given the logits that predict it, (B, T, V), (B, T) -> (B, T),
    under the distribution a sampler with this temperature and top-k draws from: logits / T,
    everything outside the k largest removed, renormalised. A token outside the top k (which
    that sampler cannot draw) gets -inf. temperature <= 0 or 1 and top_k 0 = the plain softmax.
    `temperature` may be a (B,) tensor: each row's own (rollouts sampled at several)."""
    z = logits.float()
    if isinstance(temperature, torch.Tensor):
        t = temperature.to(z.device, torch.float32)
        z = z / torch.where(t > 0, t, torch.ones_like(t))[:, None, None]
    elif temperature > 0 and temperature != 1.0:
        z = z / temperature
    if 0 < top_k < z.shape[-1]:
        kth = torch.topk(z, top_k, dim=-1).values[..., -1:]
        z = z.masked_fill(z < kth, float("-inf"))
    return torch.log_softmax(z, dim=-1).gather(2, tokens[..., None])[..., 0]
