"""RecPO (arXiv 2505.16994 §3.2): reward, advantage and losses as small pure functions.

For each user, G reasonings are sampled; each one's h_T scores the catalogue, and

    R = (1 - beta) * NDCG@k_r(target) + beta * softmax(scores)[target]     (history masked)

Advantages are normalised within each user's group. One update then minimises
    token loss: clipped policy gradient on the reasoning tokens of all G samples, and
    item loss:  in-batch softmax over the batch's target items for the best-advantage sample(s),
                weighted by their advantage (gradient reaches the item encoder through it).
No KL term, no reference model (as the paper). See PAPER.md §5 for where the authors' code
differs from the paper; the defaults below say which they follow.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.nn import functional as F

from r2ec.config import SamplingConfig
from r2ec.training import LoraSettings


def _h(text: str, **kw):
    return field(metadata={"help": text}, **kw)


@dataclass
class RecPOConfig:
    group_size: int = _h("G reasonings per user (paper: 4; 6-8 suffice, Fig. 3c/d)", default=4)
    temperature: float = _h("rollout temperature (paper 1.5; authors' HEAD 2.0)", default=1.5)
    top_k: int = _h("rollout top-k (paper 200; authors' launch script 50)", default=200)
    max_new_tokens: int = _h("reasoning budget per rollout (paper: 512 for 2-3B models; small "
                             "CPU model: 32)", default=32)
    beta: float = _h("weight of the softmax reward R_c (paper: 0.05)", default=0.05)
    ndcg_k: int = _h("cut-off of the ranking reward R_d (paper: 1000)", default=1000)
    advantage: str = _h("'grpo' (group mean/std, paper default) or 'rloo' (leave-one-out)",
                        default="grpo")
    eps_low: float = _h("lower clip of the ratio (paper 0.2)", default=0.2)
    eps_high: float = _h("upper clip of the ratio (authors' code 0.28)", default=0.28)
    token_loss_norm: str = _h("'group' = per user mean over its G samples' tokens, then mean over "
                              "users (authors' code); 'token' = mean over all tokens", default="group")
    relabel_topk: int = _h("best-advantage samples per user that get the item loss (paper 1; "
                           "authors' launch script 2)", default=1)
    item_loss_weight: float = _h("weight of the item loss against the token loss", default=1.0)
    tau: float = _h("cosine temperature (authors' code: 0.02)", default=0.02)
    users_per_step: int = _h("users per micro-batch (paper: 24 per update; authors' code 12)",
                             default=16)
    grad_accum: int = _h("micro-batches per optimiser step (gradient accumulation)", default=1)
    lr: float = _h("learning rate (paper: 1e-5 for LoRA on 2-3B; the small fully-trained CPU "
                   "model needs more)", default=1e-4)
    warmup_steps: int = _h("linear warm-up steps (paper: 32), then constant", default=32)
    weight_decay: float = _h("AdamW weight decay", default=0.0)
    grad_clip: float = _h("gradient norm clip (authors: 1.0)", default=1.0)
    epochs: float = _h("passes over the train split (paper: <= 3 with early stopping)", default=1.0)
    max_minutes: float = _h("stop after this much training time (0 = no limit)", default=0.0)
    max_steps: int = _h("stop this run at this global step (0 = none); the schedule still spans "
                        "`epochs`, so a later --resume continues exactly", default=0)
    refresh_every: int = _h("steps between full item-table refreshes (authors: each evaluation, "
                            "~1/8 epoch)", default=50)
    eval_every: int = _h("steps between validation runs (greedy reasoning)", default=50)
    eval_samples: int = _h("validation samples per run (seeded subset; 0 = all)", default=1000)
    patience: int = _h("validations without improvement before stopping (0 = never; authors 8)",
                       default=8)
    save_every: int = _h("steps between resumable training-state saves", default=50)
    seed: int = _h("seed of data order and sampling", default=0)
    lora: LoraSettings = field(default_factory=LoraSettings, metadata={"help": "LoRA settings"})

    @property
    def rollout_sampling(self) -> SamplingConfig:
        return SamplingConfig(temperature=self.temperature, top_k=self.top_k,
                              max_new_tokens=self.max_new_tokens, seed=self.seed)

    @property
    def eval_sampling(self) -> SamplingConfig:
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


def group_advantages(rewards: torch.Tensor, kind: str = "grpo", eps: float = 1e-8) -> torch.Tensor:
    """rewards (B, G) -> advantages (B, G), normalised within each user's group.
    grpo: (R - mean) / (std + eps), unbiased std as torch's default (authors' code);
    rloo: R_i - mean of the other G - 1 rewards (the standard leave-one-out baseline, not the
    authors' `R*(1+1/G) - mean`). A group of one, or of equal rewards, gets zero advantage."""
    g = rewards.shape[1]
    if g == 1:
        return torch.zeros_like(rewards)
    if kind == "grpo":
        std = rewards.std(dim=1, keepdim=True)
        return (rewards - rewards.mean(dim=1, keepdim=True)) / (std + eps)
    if kind == "rloo":
        others = (rewards.sum(dim=1, keepdim=True) - rewards) / (g - 1)
        return rewards - others
    raise ValueError(f"unknown advantage kind {kind!r} (grpo, rloo)")


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
    so the ratio is 1 and the clip never binds (PAPER.md §5 caveat); it matters for reuse."""
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
    ratio form, and its value (advantage-weighted NLL) stays readable in the logs."""
    logits = F.normalize(users, dim=-1) @ F.normalize(items, dim=-1).T / tau
    nll = -torch.log_softmax(logits, dim=1).gather(1, labels[:, None])[:, 0]
    return (adv.detach() * nll).mean()


def sequence_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p of each token given the logits that predict it: (B, T, V), (B, T) -> (B, T)."""
    return torch.log_softmax(logits.float(), dim=-1).gather(2, tokens[..., None])[..., 0]
