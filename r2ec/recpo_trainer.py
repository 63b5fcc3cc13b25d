"""The RecPO training loop (paper Alg. 1) on the shared skeleton (`r2ec.training.run_loop`).
Reward, advantage and losses are the pure functions of `r2ec.recpo`; rollouts go through the
model's generation backend, so a vLLM backend can do them on a GPU while this loop only does
the update.

Per step: sample G reasonings per user -> h_T of each (one forward with gradient, left-padded
so every sequence ends at the same position and logits are needed only for the last
max_new_tokens + 2 positions) -> rewards against the cached item table -> advantages -> one
update of token loss + item loss. Token log-probabilities are taken under the sampling
distribution (temperature, top-k) the rollouts came from; the closing token (<answer>, or a
chat model's end of turn) is an action when the model wrote it (stopping is rewarded or
penalised like any token). The item table is
refreshed in full every `refresh_every` steps and the batch's target rows are overwritten
(detached) every step, as the authors do. The starting model is the first "best": RecPO keeps
a checkpoint only if it beats it on the validation split.

    bin/r2ec-submit jobs/train.py --stage recpo --model champion --out models/recpo
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch
from torch.nn import functional as F

from r2ec import distributed, recpo
from r2ec.batching import forward_tail, last_token_states, pad_batch
from r2ec.data import Catalog, histories, times
from r2ec.model import R2ec
from r2ec.training import EpochOrder, ItemTable, apply_lora, evaluate_r2ec, run_loop

log = logging.getLogger(__name__)


def rollout_batch(r2ec: R2ec, prompts, gens, device):
    """Flatten B users x G generations into left-padded sequences prompt + reasoning + <answer>
    (ids, mask), the tokens the policy chose at each position (labels) and the mask of those
    choices (action): the reasoning, plus the closing token when the model closed it itself
    (not when <answer> was appended after the budget ran out). The closing token sits where
    <answer> is: the default model writes <answer> itself; a chat model ends its turn, and
    then the label there is its end-of-turn token, whose probability the logits at that
    position give just as well (the state is still read at the appended <answer>)."""
    flat = [g for group in gens for g in group]
    seqs = [list(p) + list(g.token_ids) + [r2ec.answer_id]
            for p, group in zip(prompts, gens, strict=True) for g in group]
    ids, mask = pad_batch(seqs, r2ec.tokenizer.pad_token_id, "left", device)
    width = ids.shape[1]
    pos = torch.arange(width, device=device)[None]
    n_reason = torch.tensor([len(g.token_ids) for g in flat], device=device)[:, None]
    finished = torch.tensor([g.finished for g in flat], device=device)[:, None]
    in_reasoning = (pos >= width - 1 - n_reason) & (pos <= width - 2)
    action = in_reasoning | (finished & (pos == width - 1))
    labels = ids.clone()
    labels[:, -1] = torch.tensor([g.stop_id if g.finished else r2ec.answer_id for g in flat],
                                 device=device)
    return ids, mask, labels, action


def group_rollouts(r2ec: R2ec, prompts, cfg: recpo.RecPOConfig, temps: list[float], seed: int
                   ) -> list[list]:
    """G rollouts per prompt, the g-th at temps[g] (one generate call per distinct
    temperature, each for every prompt at once)."""
    levels = sorted(set(temps))
    if len(levels) == 1:
        return r2ec.reason(prompts, n=len(temps), sampling=replace(
            cfg.rollout_sampling, temperature=levels[0], seed=seed))
    out: list[list] = [[] for _ in prompts]
    for k, t in enumerate(levels):  # temps is sorted: each level's rollouts are contiguous
        gens = r2ec.reason(prompts, n=temps.count(t), sampling=replace(
            cfg.rollout_sampling, temperature=t, seed=seed + 31 * k))
        for i, g in enumerate(gens):
            out[i].extend(g)
    return out


def policy_forward(model, ids, mask, labels, keep: int, temperature: float | torch.Tensor,
                   top_k: int):
    """(h_T (N, d), log-probs of the last keep - 1 labels under the sampling distribution) with
    gradient (left-padded input)."""
    hidden, logits = forward_tail(model, ids, mask, keep)
    tokens = labels[:, ids.shape[1] - keep + 1:]
    return hidden[:, -1], recpo.sequence_logprobs(logits, tokens, temperature, top_k)


def train(r2ec: R2ec, catalog: Catalog, train_samples: pd.DataFrame, valid_samples: pd.DataFrame,
          cfg: recpo.RecPOConfig, out_dir, resume: bool = False, progress: bool = True) -> dict:
    from accelerate.utils import set_seed

    out_dir = Path(out_dir)
    set_seed(cfg.seed)
    r2ec.set_model(apply_lora(r2ec.model, cfg.lora))
    model = r2ec.model
    order = EpochOrder(len(train_samples), cfg.users_per_step, cfg.seed, *distributed.world())
    item_prompts = r2ec.item_prompts(catalog.ids, catalog.titles, catalog.attributes)
    table = ItemTable(r2ec, item_prompts)
    pad, G, device = r2ec.tokenizer.pad_token_id, cfg.group_size, r2ec.device
    subset = valid_samples if not cfg.eval_samples or cfg.eval_samples >= len(valid_samples) \
        else valid_samples.sample(n=cfg.eval_samples, random_state=cfg.seed)

    def before_step(step: int) -> None:
        if table.table is None or step - table.refreshed_at >= cfg.refresh_every:
            table.refresh(step)

    temps = cfg.rollout_temperatures()

    def rewards_of(h_t: torch.Tensor, batch: pd.DataFrame) -> torch.Tensor:
        """(B, G) fused rewards of a batch's rollout states against the cached item table."""
        targets = torch.tensor([catalog.row[t] for t in batch["target_item_id"]],
                               device=device).repeat_interleave(G)
        hist = [catalog.rows(h) for h in batch["history_item_ids"] for _ in range(G)]
        with torch.no_grad():
            scores = F.normalize(h_t.detach().float(), dim=-1) @ table.table.T / r2ec.tau
            return recpo.fused_reward(scores, targets, hist, cfg.beta, cfg.ndcg_k).view(-1, G)

    def sample(seed: int) -> tuple[pd.DataFrame, list[list[int]], list]:
        batch = train_samples.iloc[order.next_batch()]
        prompts = r2ec.user_prompts(histories(batch), times(batch["target_ts"]))
        return batch, prompts, group_rollouts(r2ec, prompts, cfg, temps, seed)

    def step_fn(step: int, micro: int) -> tuple[torch.Tensor, dict]:
        """Rollouts, rewards, advantages and the loss of one micro-batch of users."""
        # A seed per step: rollouts differ between steps and replay identically after a resume
        # (the authors pass seed=42 on every call, so their samples repeat across steps).
        seed = cfg.seed * 1_000_003 + step * cfg.grad_accum + micro + 7_919 * order.rank
        batch, prompts, gens = sample(seed)
        first_flat, rollouts = None, len(gens) * G
        if cfg.refill_rounds:
            # Dynamic sampling: keep the groups whose rewards differ, refill with new users.
            kept: list[tuple[pd.Series, list[int], list]] = []
            for round_ in range(cfg.refill_rounds + 1):
                if round_:
                    batch, prompts, gens = sample(seed + 104_729 * round_)
                    rollouts += len(gens) * G
                h = torch.from_numpy(r2ec.user_state(
                    [p for p in prompts for _ in range(G)], [g for grp in gens for g in grp]))
                informative = rewards_of(h.to(device), batch).std(dim=1) > cfg.min_reward_std
                if first_flat is None:
                    first_flat = 1.0 - informative.float().mean().item()
                kept += [(batch.iloc[i], prompts[i], gens[i])
                         for i in torch.nonzero(informative).flatten().tolist()]
                if len(kept) >= cfg.users_per_step:
                    break
            if kept:  # else every group was flat: the last batch stands (zero advantages)
                kept = kept[: cfg.users_per_step]
                batch = pd.DataFrame([k[0] for k in kept])
                prompts, gens = [k[1] for k in kept], [k[2] for k in kept]
        ids, mask, labels, action = rollout_batch(r2ec, prompts, gens, device)
        keep = min(ids.shape[1], cfg.max_new_tokens + 2)
        model.train()
        row_temps = torch.tensor(temps * len(gens), device=device)
        h_t, logp = policy_forward(model, ids, mask, labels, keep, row_temps, cfg.top_k)
        action = action[:, -(keep - 1):] & torch.isfinite(logp)
        logp = torch.where(action, logp, torch.zeros_like(logp))
        targets = torch.tensor([catalog.row[t] for t in batch["target_item_id"]],
                               device=device).repeat_interleave(G)
        rewards = rewards_of(h_t, batch)
        adv = recpo.group_advantages(rewards, cfg.advantage, min_std=cfg.min_reward_std)
        tok = recpo.token_loss(logp, logp.detach(), adv.flatten(), action.float(), G,
                               cfg.eps_low, cfg.eps_high, cfg.token_loss_norm)
        best = recpo.best_of_group(adv, cfg.relabel_topk).flatten()
        uniq = sorted(set(targets.tolist()))
        item_ids, item_mask = pad_batch([item_prompts[r] for r in uniq], pad, "right", device)
        items = last_token_states(model, item_ids, item_mask)
        labels = torch.tensor([uniq.index(int(t)) for t in targets[best]], device=device)
        itl = recpo.item_loss(h_t[best], items, labels, adv.flatten()[best], r2ec.tau)
        lengths = [len(g.token_ids) for grp in gens for g in grp]
        spread = rewards.std(dim=1)
        flat = (spread <= cfg.min_reward_std).float().mean().item()
        return tok + cfg.item_loss_weight * itl, {
            "uniq": uniq, "items": items.detach(), "token_loss": tok.item(), "item_loss": itl.item(),
            "reward_mean": rewards.mean().item(), "reward_group_std": spread.mean().item(),
            # the share of flat groups as sampled (before any refill), and in the update
            "flat_groups": flat if first_flat is None else first_flat, "flat_groups_used": flat,
            "rollouts_per_group": rollouts / len(gens),
            "adv_abs_mean": adv.abs().mean().item(), "reasoning_len": sum(lengths) / len(lengths),
            "finished": sum(g.finished for grp in gens for g in grp) / len(lengths)}

    def after_step(step: int, infos: list[dict]) -> dict:
        for info in infos:
            table.update_rows(info.pop("uniq"), info.pop("items"))
        # A backend with its own copy of the weights (vLLM) must see this update before the
        # next rollout; the transformers backend shares the live model and needs nothing.
        if hasattr(r2ec.backend, "sync_weights"):
            from accelerate.utils import extract_model_from_parallel

            r2ec.backend.sync_weights(extract_model_from_parallel(model))
        return {}

    def validate() -> dict:
        return evaluate_r2ec(r2ec, subset, catalog, True, cfg.eval_sampling,
                             batch_size=cfg.eval_batch_size, item_prompts=item_prompts).metrics

    return run_loop(r2ec, cfg, stage="recpo", out_dir=out_dir,
                    steps_per_epoch=order.steps_per_epoch, step_fn=step_fn, validate=validate,
                    state=[order, table], before_step=before_step, after_step=after_step,
                    validate_first=True, resume=resume, progress=progress)
