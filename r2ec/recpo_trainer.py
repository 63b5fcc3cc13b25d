"""The RecPO training loop (paper Alg. 1). Reward, advantage and loss are the pure functions of
`r2ec.recpo`; rollouts go through the model's generation backend, so a vLLM backend can do
them on a GPU while this loop only does the update.

Per step: sample G reasonings per user -> h_T of each (one forward with gradient, left-padded
so every sequence ends at the same position and logits are needed only for the last
max_new_tokens + 2 positions) -> rewards against the cached item table -> advantages -> one
update of token loss + item loss. The item table is refreshed in full every `refresh_every`
steps and the batch's target rows are overwritten (detached) every step, as the authors do.

    bin/r2ec-submit jobs/train_recpo.py --stage recpo --model champion --out models/recpo
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, replace
from pathlib import Path

import pandas as pd
import torch
from torch.nn import functional as F

from r2ec import recpo
from r2ec.data import Catalog, histories, times
from r2ec.model import R2ec
from r2ec.modeling import forward_tail, last_token_states, pad_batch
from r2ec.training import (
    EpochOrder,
    ItemTable,
    MetricsLog,
    StepCounter,
    apply_lora,
    evaluate_r2ec,
    finish_run,
    progress_bar,
    validate_and_keep_best,
)

log = logging.getLogger(__name__)


def rollout_batch(r2ec: R2ec, prompts, gens, device):
    """Flatten B users x G generations into left-padded sequences prompt + reasoning + <answer>
    and the mask of the tokens the policy chose: the reasoning, plus the final <answer> when
    the model wrote it itself (not when it was appended after the budget ran out)."""
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
    return ids, mask, action


def policy_forward(model, ids, mask, keep: int):
    """(h_T (N, d), log-probs of the last keep - 1 tokens) with gradient (left-padded input)."""
    hidden, logp = forward_tail(model, ids, mask, keep)
    return hidden[:, -1], logp


def train(r2ec: R2ec, catalog: Catalog, train_samples: pd.DataFrame, valid_samples: pd.DataFrame,
          cfg: recpo.RecPOConfig, out_dir, resume: bool = False, progress: bool = True) -> dict:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    out_dir = Path(out_dir)
    set_seed(cfg.seed)
    acc = Accelerator(cpu=r2ec.device.type == "cpu")
    r2ec.set_model(apply_lora(r2ec.model, cfg.lora))
    model = r2ec.model
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up, then constant (paper)
        opt, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup_steps)))
    order = EpochOrder(len(train_samples), cfg.users_per_step, cfg.seed)
    total = max(1, int(cfg.epochs * order.steps_per_epoch / cfg.grad_accum))
    model, opt, sched = acc.prepare(model, opt, sched)
    counter = StepCounter()
    item_prompts = r2ec.item_prompts(catalog.ids, catalog.titles, catalog.attributes)
    table = ItemTable(r2ec, item_prompts)
    acc.register_for_checkpointing(order, counter, table)
    state_dir = out_dir / "state"
    if resume and state_dir.is_dir():
        acc.load_state(str(state_dir))
        log.info("resumed at step %d", counter.step)

    pad, G = r2ec.tokenizer.pad_token_id, cfg.group_size
    subset = valid_samples if not cfg.eval_samples or cfg.eval_samples >= len(valid_samples) \
        else valid_samples.sample(n=cfg.eval_samples, random_state=cfg.seed)
    metrics_log = MetricsLog(out_dir / "metrics.jsonl")
    if counter.best < 0:  # the starting point is the first "best": RecPO must beat it
        res = evaluate_r2ec(r2ec, subset, catalog, True, cfg.eval_sampling, item_prompts=item_prompts)
        counter.best = res.metrics["ndcg@10"]
        metrics_log.write(step=counter.step, split="valid", **res.metrics)
        r2ec.save(out_dir / "best", stage="recpo", extra={"step": 0, "recpo_config": asdict(cfg)})
        log.info("start: valid NDCG@10 %.4f with greedy reasoning", counter.best)

    def micro_step(batch: pd.DataFrame, step: int, micro: int) -> dict:
        """Rollouts, rewards, advantages and the backward pass of one micro-batch of users."""
        prompts = r2ec.user_prompts(histories(batch), times(batch["target_ts"]))
        # A seed per step: rollouts differ between steps and replay identically after a resume
        # (the authors pass seed=42 on every call, so their samples repeat across steps).
        seed = cfg.seed * 1_000_003 + step * cfg.grad_accum + micro
        gens = r2ec.reason(prompts, n=G, sampling=replace(cfg.rollout_sampling, seed=seed))
        ids, mask, action = rollout_batch(r2ec, prompts, gens, r2ec.device)
        keep = min(ids.shape[1], cfg.max_new_tokens + 2)
        model.train()
        h_t, logp = policy_forward(model, ids, mask, keep)
        action = action[:, -(keep - 1):].float()
        targets = torch.tensor([catalog.row[t] for t in batch["target_item_id"]],
                               device=r2ec.device).repeat_interleave(G)
        hist = [catalog.rows(h) for h in batch["history_item_ids"] for _ in range(G)]
        with torch.no_grad():
            scores = F.normalize(h_t.detach().float(), dim=-1) @ table.table.T / cfg.tau
            rewards = recpo.fused_reward(scores, targets, hist, cfg.beta, cfg.ndcg_k).view(-1, G)
            adv = recpo.group_advantages(rewards, cfg.advantage)
        tok = recpo.token_loss(logp, logp.detach(), adv.flatten(), action, G, cfg.eps_low,
                               cfg.eps_high, cfg.token_loss_norm)
        best = recpo.best_of_group(adv, cfg.relabel_topk).flatten()
        uniq = sorted(set(targets.tolist()))
        item_ids, item_mask = pad_batch([item_prompts[r] for r in uniq], pad, "right", r2ec.device)
        items = last_token_states(model, item_ids, item_mask)
        labels = torch.tensor([uniq.index(int(t)) for t in targets[best]], device=r2ec.device)
        itl = recpo.item_loss(h_t[best], items, labels, adv.flatten()[best], cfg.tau)
        acc.backward((tok + cfg.item_loss_weight * itl) / cfg.grad_accum)
        return {"uniq": uniq, "items": items.detach(), "rewards": rewards, "adv": adv,
                "gens": gens, "tok": tok.item(), "itl": itl.item()}

    start, stopped = time.time(), "steps"
    bar = progress_bar(total, "RecPO", disable=not progress, initial=counter.step)
    while counter.step < total and not (cfg.max_steps and counter.step >= cfg.max_steps):
        step = counter.step
        if table.table is None or step - table.refreshed_at >= cfg.refresh_every:
            table.refresh(step)
        model.train()
        opt.zero_grad()
        parts = [micro_step(train_samples.iloc[order.next_batch()], step, m)
                 for m in range(cfg.grad_accum)]
        acc.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        for uniq, items in ((p["uniq"], p["items"]) for p in parts):
            table.update_rows(uniq, items)
        # A backend with its own copy of the weights (vLLM) must see this update before the
        # next rollout; the transformers backend shares the live model and needs nothing.
        if hasattr(r2ec.backend, "sync_weights"):
            r2ec.backend.sync_weights(acc.unwrap_model(model))
        rewards = torch.cat([p["rewards"] for p in parts])
        adv = torch.cat([p["adv"] for p in parts])
        gens = [g for p in parts for g in p["gens"]]
        tok = sum(p["tok"] for p in parts) / len(parts)
        itl = sum(p["itl"] for p in parts) / len(parts)
        counter.step += 1
        bar.update(1)
        lengths = [len(g.token_ids) for grp in gens for g in grp]
        bar.set_postfix(reward=f"{rewards.mean().item():.3f}", len=f"{sum(lengths) / len(lengths):.1f}",
                        refresh=False)
        metrics_log.write(
            step=counter.step, reward_mean=rewards.mean().item(), reward_std=rewards.std().item(),
            adv_abs_mean=adv.abs().mean().item(), token_loss=tok, item_loss=itl,
            reasoning_len=sum(lengths) / len(lengths),
            finished=sum(g.finished for grp in gens for g in grp) / len(lengths))
        over_time = cfg.max_minutes and time.time() - start > 60 * cfg.max_minutes
        last = counter.step == total or over_time or counter.step == cfg.max_steps
        if (counter.step % cfg.eval_every == 0 or last) and validate_and_keep_best(
                r2ec, counter, subset, catalog, item_prompts, True, cfg.eval_sampling,
                metrics_log, out_dir / "best", "recpo", {"recpo_config": asdict(cfg)},
                cfg.patience):
            stopped = "early stopping"
            break
        if counter.step % cfg.save_every == 0:
            acc.save_state(str(state_dir))
        if over_time:
            stopped = "time budget"
            break
    bar.close()
    return finish_run(acc, state_dir, counter, stopped, start, out_dir)
