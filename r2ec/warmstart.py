"""Stage 0: the no-reasoning warm start (the paper's "w/o reasoning" ablation, Table 2).

h_T is read straight after the user prompt (assistant turn pre-filled with <answer>) and trained
contrastively against item states, with no generation:

- in-batch loss: softmax over the batch's target items, encoded with gradient (the paper's item
  loss, which is also what trains the item side);
- catalogue loss: softmax over the whole detached item table, history masked: the protocol
  ranks the whole catalogue (SMALL_MODEL.md: +7%);
- line loss (ours, optional, off by default): the state at the end of every history line
  predicts the next history item against the detached table, so one causal pass carries ~20
  targets, as SASRec's training does (SMALL_MODEL.md's "structural lever"). Measured on ML-100k
  it did not help within 500 steps (see the field's help), so it is off unless asked for.

    bin/r2ec-submit jobs/train_recpo.py --stage warmstart --model models/default --out models/ws
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F

from r2ec.config import SamplingConfig
from r2ec.data import Catalog, histories, times
from r2ec.model import R2ec
from r2ec.modeling import forward_tail, last_token_states, pad_batch
from r2ec.training import (
    EpochOrder,
    ItemTable,
    LoraSettings,
    MetricsLog,
    StepCounter,
    apply_lora,
    cosine_with_warmup,
    finish_run,
    progress_bar,
    validate_and_keep_best,
)

log = logging.getLogger(__name__)


def _h(text: str, **kw):
    return field(metadata={"help": text}, **kw)


@dataclass
class WarmStartConfig:
    epochs: float = _h("passes over the train split", default=2.0)
    max_minutes: float = _h("stop after this much training time (0 = no limit)", default=0.0)
    max_steps: int = _h("stop this run at this global step (0 = none); the schedule still spans "
                        "`epochs`, so a later --resume continues exactly", default=0)
    batch_size: int = _h("users per micro-batch (SMALL_MODEL.md recipe: 64)", default=64)
    grad_accum: int = _h("micro-batches per optimiser step (gradient accumulation)", default=1)
    lr: float = _h("peak AdamW learning rate. SMALL_MODEL.md's recipe says 1e-3; measured here at "
                   "batch 64: valid N@10 .022 at step 500 with 1e-3 vs .029 with 3e-4", default=3e-4)
    min_lr: float = _h("cosine schedule floor", default=3e-5)
    warmup_steps: int = _h("linear warm-up steps", default=50)
    weight_decay: float = _h("AdamW weight decay", default=0.01)
    beta2: float = _h("AdamW beta2 (0.98: small batches, noisy second moments)", default=0.98)
    grad_clip: float = _h("gradient norm clip", default=1.0)
    tau: float = _h("temperature of cosine similarity (authors' code: 0.02)", default=0.02)
    catalogue_loss: bool = _h("add the full-catalogue softmax against the detached table",
                              default=True)
    line_loss_weight: float = _h(
        "weight of the per-history-line next-item loss (0 = off). Measured on ML-100k at lr 3e-4: "
        "valid N@10 .029 with it vs .034 without after 500 steps, so off by default", default=0.0)
    recap_max_items: int = _h(
        "teach a reasoning: before <answer>, 0..N of the user's own history items written as "
        "'[title] (rating)' lines, with an LM loss on them and h_T read after them (0 = off, h_T "
        "right after the prompt). Without it the untrained LM head writes junk that moves h_T "
        "off its training distribution (measured: valid N@10 .036 -> .008 with greedy reasoning)",
        default=3)
    lm_loss_weight: float = _h("weight of the LM loss on the recap tokens and <answer>", default=1.0)
    refresh_every: int = _h("steps between full item-table refreshes", default=20)
    eval_every: int = _h("steps between validation runs", default=200)
    eval_reasoning: bool = _h(
        "select the best checkpoint by valid NDCG@10 with greedy reasoning (what scoring does) "
        "instead of without; only meaningful with recap_max_items > 0", default=True)
    eval_max_new_tokens: int = _h("reasoning budget of those validation runs", default=32)
    eval_samples: int = _h("validation samples per run (fixed seeded subset; 0 = all)", default=2000)
    patience: int = _h("validations without improvement before stopping (0 = never)", default=6)
    save_every: int = _h("steps between resumable training-state saves", default=200)
    seed: int = _h("seed of data order and initialisation", default=0)
    lora: LoraSettings = field(default_factory=LoraSettings, metadata={"help": "LoRA settings"})


def in_batch_loss(users: torch.Tensor, items: torch.Tensor, labels: torch.Tensor,
                  tau: float) -> torch.Tensor:
    """Softmax over the batch's distinct target items; labels index into `items`."""
    logits = F.normalize(users, dim=-1) @ F.normalize(items, dim=-1).T / tau
    return F.cross_entropy(logits, labels)


def catalogue_loss(users: torch.Tensor, table: torch.Tensor, targets: torch.Tensor,
                   exclude: list[list[int]] | None, tau: float) -> torch.Tensor:
    """Softmax over every item of the (normalised, detached) table, history items masked."""
    logits = F.normalize(users, dim=-1) @ table.T / tau
    if exclude:
        mask = torch.zeros_like(logits, dtype=torch.bool)
        for i, rows in enumerate(exclude):
            keep = [r for r in rows if r != int(targets[i])]
            mask[i, keep] = True
        logits = logits.masked_fill(mask, float("-inf"))
    return F.cross_entropy(logits, targets)


def line_end_ids(tokenizer) -> set[int]:
    """Ids of the tokens that end a history line ('] (4)\\n' fragments of the default model)."""
    vocab = tokenizer.get_vocab()
    ends = {f"] ({r:g})\n" for r in np.arange(0, 10.5, 0.5)}
    return {i for t, i in vocab.items() if t in ends}


def _line_targets(ids: torch.Tensor, hist_rows: list[list[int]], ends: set[int],
                  tails: list[int]):
    """(row, position, next-item row) for each history line end whose next item is known;
    the last tails[b] tokens of row b (recap, <answer>) are not history lines."""
    out = []
    for b, rows in enumerate(hist_rows):
        row = ids[b].tolist()[: ids.shape[1] - tails[b]]
        pos = [p for p, t in enumerate(row) if t in ends]
        nxt = rows[len(rows) - len(pos):] if pos else []  # the last len(pos) items follow a line end
        if pos and len(nxt) == len(pos):
            out += [(b, p, r) for p, r in zip(pos, nxt, strict=True)]
    return out


def _recap_ids(r2ec: R2ec, history, rng: np.random.Generator, max_items: int) -> list[int]:
    """Token ids of a recap of 0..max_items of the history's items (kept in history order)."""
    window = list(history)[-r2ec.prompt_cfg.window:]
    k = int(rng.integers(0, min(max_items, len(window)) + 1)) if max_items else 0
    if not k:
        return []
    chosen = sorted(rng.choice(len(window), size=k, replace=False))
    return r2ec._encode(r2ec.prompter.recap([window[i] for i in chosen]))


def train(r2ec: R2ec, catalog: Catalog, train_samples: pd.DataFrame, valid_samples: pd.DataFrame,
          cfg: WarmStartConfig, out_dir, resume: bool = False, progress: bool = True) -> dict:
    """Train in place; the best model by valid NDCG@10 (greedy reasoning when a recap is taught,
    else none) is saved in `out_dir/best`."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    out_dir = Path(out_dir)
    set_seed(cfg.seed)
    acc = Accelerator(cpu=r2ec.device.type == "cpu")
    r2ec.set_model(apply_lora(r2ec.model, cfg.lora))
    model = r2ec.model
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                            betas=(0.9, cfg.beta2), weight_decay=cfg.weight_decay)
    order = EpochOrder(len(train_samples), cfg.batch_size, cfg.seed)
    total = max(1, int(cfg.epochs * order.steps_per_epoch / cfg.grad_accum))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: cosine_with_warmup(s, cfg.warmup_steps, total, cfg.lr, cfg.min_lr) / cfg.lr)
    model, opt, sched = acc.prepare(model, opt, sched)
    counter = StepCounter()
    item_prompts = r2ec.item_prompts(catalog.ids, catalog.titles, catalog.attributes)
    table = ItemTable(r2ec, item_prompts)
    acc.register_for_checkpointing(order, counter, table)
    state_dir = out_dir / "state"
    if resume and state_dir.is_dir():
        acc.load_state(str(state_dir))
        log.info("resumed at step %d (epoch %d)", counter.step, order.epoch)

    pad = r2ec.tokenizer.pad_token_id
    ends = line_end_ids(r2ec.tokenizer) if cfg.line_loss_weight > 0 else set()
    if cfg.line_loss_weight > 0 and not ends:
        log.warning("line loss asked for, but this tokenizer has no line-end tokens; it is off")
    subset = valid_samples if not cfg.eval_samples or cfg.eval_samples >= len(valid_samples) \
        else valid_samples.sample(n=cfg.eval_samples, random_state=cfg.seed)
    metrics_log = MetricsLog(out_dir / "metrics.jsonl")
    reasoning_eval = cfg.eval_reasoning and cfg.recap_max_items > 0

    def batch_losses(batch: pd.DataFrame, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        hists = histories(batch)
        prompts = r2ec.user_prompts(hists, times(batch["target_ts"]))
        recaps = [_recap_ids(r2ec, h, rng, cfg.recap_max_items) for h in hists]
        seqs = [list(p) + rc + [r2ec.answer_id] for p, rc in zip(prompts, recaps, strict=True)]
        ids, mask = pad_batch(seqs, pad, "left", r2ec.device)  # every h_T at the last position
        keep = min(ids.shape[1], max(len(rc) for rc in recaps) + 2)
        hidden, logp = forward_tail(model, ids, mask, keep)
        users = hidden[:, -1]
        targets = [catalog.row[t] for t in batch["target_item_id"]]
        uniq = sorted(set(targets))
        item_ids, item_mask = pad_batch([item_prompts[r] for r in uniq], pad, "right", r2ec.device)
        items = last_token_states(model, item_ids, item_mask)
        labels = torch.tensor([uniq.index(t) for t in targets], device=r2ec.device)
        losses = {"in_batch": in_batch_loss(users, items, labels, cfg.tau)}
        hist_rows = [catalog.rows(h) for h in batch["history_item_ids"]]
        if cfg.catalogue_loss:
            tgt = torch.tensor(targets, device=r2ec.device)
            losses["catalogue"] = catalogue_loss(users, table.table, tgt, hist_rows, cfg.tau)
        if cfg.recap_max_items and cfg.lm_loss_weight:
            # the recap tokens and the closing <answer> are the last len(recap) + 1 tokens
            n = torch.tensor([len(rc) + 1 for rc in recaps], device=r2ec.device)[:, None]
            pos = torch.arange(keep - 1, device=r2ec.device)[None]
            lm_mask = (pos >= keep - 1 - n).float()
            losses["lm"] = cfg.lm_loss_weight * -(logp * lm_mask).sum() / lm_mask.sum()
        lines = _line_targets(ids, hist_rows, ends, [len(rc) + 1 for rc in recaps]) if ends else []
        if lines:
            b, p, r = (torch.tensor(x, device=r2ec.device) for x in zip(*lines, strict=True))
            losses["line"] = cfg.line_loss_weight * catalogue_loss(hidden[b, p], table.table, r,
                                                                   None, cfg.tau)
        return losses

    start, stopped = time.time(), "steps"
    bar = progress_bar(total, "warm start", disable=not progress, initial=counter.step)
    while counter.step < total and not (cfg.max_steps and counter.step >= cfg.max_steps):
        step = counter.step
        if table.table is None or step - table.refreshed_at >= cfg.refresh_every:
            table.refresh(step)
        model.train()
        opt.zero_grad()
        for micro in range(cfg.grad_accum):
            rng = np.random.default_rng([cfg.seed, step, micro])  # replays exactly on resume
            losses = batch_losses(train_samples.iloc[order.next_batch()], rng)
            loss = sum(losses.values())
            acc.backward(loss / cfg.grad_accum)
        acc.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        counter.step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        if counter.step % 20 == 0:
            metrics_log.write(step=counter.step, epoch=order.epoch, lr=sched.get_last_lr()[0],
                              loss=loss.item(), **{f"loss_{k}": v.item() for k, v in losses.items()})
        over_time = cfg.max_minutes and time.time() - start > 60 * cfg.max_minutes
        last = counter.step == total or over_time or counter.step == cfg.max_steps
        if (counter.step % cfg.eval_every == 0 or last) and validate_and_keep_best(
                r2ec, counter, subset, catalog, item_prompts, reasoning_eval,
                SamplingConfig(max_new_tokens=cfg.eval_max_new_tokens), metrics_log,
                out_dir / "best", "warmstart", {"warmstart_config": asdict(cfg)}, cfg.patience):
            stopped = "early stopping"
            break
        if counter.step % cfg.save_every == 0:
            acc.save_state(str(state_dir))
        if over_time:
            stopped = "time budget"
            break
    bar.close()
    return finish_run(acc, state_dir, counter, stopped, start, out_dir)
