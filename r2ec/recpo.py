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
    min_reward_std: float = _h("a group whose reward std is at most this gets no advantage (its "
                               "samples differ by noise only); the share of such groups is "
                               "logged", default=1e-3)
    eps_low: float = _h("lower clip of the ratio (paper 0.2)", default=0.2)
    eps_high: float = _h("upper clip of the ratio (authors' code 0.28)", default=0.28)
    token_loss_norm: str = _h("'group' = per user mean over its G samples' tokens, then mean over "
                              "users (authors' code); 'token' = mean over all tokens", default="group")
    relabel_topk: int = _h("best-advantage samples per user that get the item loss (paper 1; "
                           "authors' launch script 2)", default=1)
    item_loss_weight: float = _h("weight of the item loss against the token loss", default=1.0)
    users_per_step: int = _h("users per micro-batch (paper: 24 per update; authors' code 12)",
                             default=16)
    grad_accum: int = _h("micro-batches per optimiser step (gradient accumulation)", default=1)
    lr: float = _h("learning rate (paper: 1e-5 for LoRA on 2-3B; the small fully-trained CPU "
                   "model after an annealed warm start: 3e-5)", default=3e-5)
    min_lr: float = _h("floor of the cosine schedule", default=0.0)
    schedule: str = _h("'constant' after warm-up (paper) or 'cosine' (annealed over max(step / "
                       "total, time / budget), so a time-boxed run ends at min_lr)",
                       default="cosine")
    warmup_steps: int = _h("linear warm-up steps (paper: 32)", default=32)
    weight_decay: float = _h("AdamW weight decay", default=0.0)
    beta2: float = _h("AdamW beta2", default=0.999)
    grad_clip: float = _h("gradient norm clip (authors: 1.0)", default=1.0)
    epochs: float = _h("passes over the train split (paper: <= 3 with early stopping)", default=1.0)
    max_minutes: float = _h("stop after this much training time (0 = no limit)", default=0.0)
    max_steps: int = _h("stop this run at this global step (0 = none); the schedule still spans "
                        "`epochs`, so a later --resume continues exactly", default=0)
    refresh_every: int = _h("steps between full item-table refreshes (authors: each evaluation, "
                            "~1/8 epoch)", default=50)
    eval_every: int = _h("steps between validation runs (greedy reasoning)", default=50)
    eval_samples: int = _h("validation samples per run (0 = the whole split: the checkpoint "
                           "choice needs a standard error below the differences it decides; a "
                           "1,000-sample subset swung by +-.015 NDCG@10)", default=0)
    patience: int = _h("validations without improvement before stopping (0 = never; authors 8)",
                       default=8)
    save_every: int = _h("steps between resumable training-state saves", default=50)
    seed: int = _h("seed of data order and sampling", default=0)
    gradient_checkpointing: bool = _h("recompute each layer's activations in the backward "
                                      "pass: far less memory for production backbones, one more "
                                      "forward pass of compute", default=False)
    lora: LoraSettings = field(default_factory=LoraSettings, metadata={"help": "LoRA settings"})

    @property
    def rollout_sampling(self) -> SamplingConfig:
        # No minimum length: the token log-probabilities of the update are those of plain
        # temperature / top-k sampling, so nothing may be suppressed while sampling.
        return SamplingConfig(temperature=self.temperature, top_k=self.top_k,
                              max_new_tokens=self.max_new_tokens, min_new_tokens=0, seed=self.seed)

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


def group_advantages(rewards: torch.Tensor, kind: str = "grpo", eps: float = 1e-8,
                     min_std: float = 0.0) -> torch.Tensor:
    """rewards (B, G) -> advantages (B, G), normalised within each user's group.
    grpo: (R - mean) / (std + eps), unbiased std as torch's default (authors' code);
    rloo: R_i - mean of the other G - 1 rewards (the standard leave-one-out baseline, not the
    authors' `R*(1+1/G) - mean`). A group of one, or whose reward std is at most `min_std`
    (equal rewards, or differences too small to mean anything), gets zero advantage."""
    g = rewards.shape[1]
    if g == 1:
        return torch.zeros_like(rewards)
    std = rewards.std(dim=1, keepdim=True)
    if kind == "grpo":
        adv = (rewards - rewards.mean(dim=1, keepdim=True)) / (std + eps)
    elif kind == "rloo":
        adv = rewards - (rewards.sum(dim=1, keepdim=True) - rewards) / (g - 1)
    else:
        raise ValueError(f"unknown advantage kind {kind!r} (grpo, rloo)")
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


def sequence_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0,
                      top_k: int = 0) -> torch.Tensor:
    """log p of each token given the logits that predict it, (B, T, V), (B, T) -> (B, T),
    under the distribution a sampler with this temperature and top-k draws from: logits / T,
    everything outside the k largest removed, renormalised. A token outside the top k (which
    that sampler cannot draw) gets -inf. temperature <= 0 or 1 and top_k 0 = the plain softmax."""
    z = logits.float()
    if temperature > 0 and temperature != 1.0:
        z = z / temperature
    if 0 < top_k < z.shape[-1]:
        kth = torch.topk(z, top_k, dim=-1).values[..., -1:]
        z = z.masked_fill(z < kth, float("-inf"))
    return torch.log_softmax(z, dim=-1).gather(2, tokens[..., None])[..., 0]
