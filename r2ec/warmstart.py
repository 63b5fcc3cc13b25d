"""Stage 0, the warm start: multi-target contrastive training of h_T against the item states,
optionally teaching a reasoning format (the paper's "w/o reasoning" ablation when it does not).

One forward pass per user window carries many targets: the window's history lines are packed
with a readout block after each line (`r2ec.packing`), and the state at each block's <answer>
is exactly the h_T that inference computes for the prompt ending at that line. Each readout
predicts the next item with a softmax over the catalogue, whose item states are encoded with
gradient in the same step (one consistent table: the item side learns every step, and
negatives are pushed down). A prompt line is ~9 tokens and a readout ~7, so one pass yields a
target per ~16 tokens instead of one per ~180-token prompt.

Windows: per user, the events up to the last train target, `window` lines per packed row,
rows starting every `stride` events; in every row after a user's first only the readouts of
the second half count, so each train target is trained once per epoch, with at least
`window - stride` lines of context where the user has them.

With `reasoning_share` > 0, that share of the readouts carries a taught reasoning
(`r2ec.reasoning`) between the assistant header and <answer>, with an LM loss on it; h_T is read
after it, as greedy-reasoning inference does.

    bin/r2ec-submit jobs/train_recpo.py --stage warmstart --model models/work/init --out models/ws
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F

from r2ec import distributed
from r2ec.config import SamplingConfig
from r2ec.data import Catalog, _rating, _to_datetime, histories
from r2ec.model import R2ec
from r2ec.modeling import last_token_states, length_sorted_batches, pad_batch
from r2ec.packing import Readout, Window, pack, packed_hidden
from r2ec.prompts import HistoryItem
from r2ec.reasoning import Teacher, cooccurrence, item_tags, reasoning_text
from r2ec.training import EpochOrder, LoraSettings, apply_lora, evaluate_r2ec, run_loop

log = logging.getLogger(__name__)


def _h(text: str, **kw):
    return field(metadata={"help": text}, **kw)


@dataclass
class WarmStartConfig:
    epochs: float = _h("passes over the train targets", default=8.0)
    max_minutes: float = _h("training time budget (0 = none); the schedule anneals within it",
                            default=0.0)
    max_steps: int = _h("stop this run at this global step (0 = none); the schedule still spans "
                        "`epochs`, so a later --resume continues exactly", default=0)
    windows_per_step: int = _h("packed user windows per micro-batch (~10 targets each)",
                               default=96)
    grad_accum: int = _h("micro-batches per optimiser step", default=1)
    window: int = _h("history lines per packed window (the prompts' window)", default=20)
    stride: int = _h("events between window starts; later windows count only their last "
                     "`stride` targets", default=10)
    item_sample: int = _h("catalogue items encoded with gradient per step: 0 = all (one "
                          "consistent full softmax); N = the batch's targets plus random others "
                          "up to N (sampled softmax, for large catalogues)", default=0)
    lr: float = _h("peak AdamW learning rate (measured on the small model: 1e-3 with ~1,000 "
                   "targets per step)", default=1e-3)
    min_lr: float = _h("cosine floor", default=0.0)
    schedule: str = _h("'cosine' (annealed over max(step/total, time/budget)) or 'constant'",
                       default="cosine")
    warmup_steps: int = _h("linear warm-up steps", default=50)
    weight_decay: float = _h("AdamW weight decay", default=0.01)
    beta2: float = _h("AdamW beta2 (0.98: few, noisy steps)", default=0.98)
    grad_clip: float = _h("gradient norm clip", default=1.0)
    reasoning_share: float = _h("share of readouts that carry a taught reasoning (0 = the "
                                "paper's w/o-reasoning stage)", default=0.0)
    reasoning_genres: str = _h("taught genres: 'target' (the next item's) or 'profile' "
                               "(the history's most frequent)", default="target")
    reasoning_items: str = _h("taught items: 'cooccur' (history items that co-occur most with "
                              "the next one in train) or 'recent' (latest well-rated)",
                              default="cooccur")
    lm_loss_weight: float = _h("weight of the LM loss on the taught reasoning", default=0.5)
    eval_every: int = _h("steps between validations", default=100)
    eval_samples: int = _h("valid samples per validation (0 = the whole split; a fixed "
                           "seeded subset otherwise)", default=0)
    eval_reasoning: bool = _h("validate with greedy reasoning (what scoring does) instead of "
                              "without; only with reasoning_share > 0", default=True)
    eval_max_new_tokens: int = _h("reasoning budget of those validations", default=16)
    patience: int = _h("validations without a better valid NDCG@10 before stopping (0 = never)",
                       default=4)
    save_every: int = _h("steps between resumable training-state saves", default=100)
    seed: int = _h("seed of data order and sampling", default=0)
    gradient_checkpointing: bool = _h("recompute each layer's activations in the backward "
                                      "pass: far less memory for production backbones, one more "
                                      "forward pass of compute", default=False)
    lora: LoraSettings = field(default_factory=LoraSettings, metadata={"help": "LoRA settings"})


@dataclass
class UserWindow:
    events: list[HistoryItem]   # the window's events; lines are all but possibly the last
    rows: list[int]             # catalogue row of each event (-1 unknown)
    counted: range              # event indices j whose prediction (from events[:j]) counts


def user_windows(samples: pd.DataFrame, catalog: Catalog, window: int, stride: int
                 ) -> list[UserWindow]:
    """Cut each user's train timeline into packed windows (see the module docstring)."""
    if not 0 < stride <= window:
        raise ValueError("need 0 < stride <= window")
    out = []
    hists = histories(samples)
    by_user: dict[str, list[int]] = {}
    for i, u in enumerate(samples["user_id"]):
        by_user.setdefault(u, []).append(i)
    for idx in by_user.values():
        idx = sorted(idx, key=lambda i: samples["position"].iat[i])
        first = idx[0]
        events = list(hists[first])
        for i in idx:  # each later sample adds its target to the user's timeline
            t = str(samples["target_item_id"].iat[i])
            title = catalog.titles[catalog.row[t]] if t in catalog.row else ""
            events.append(HistoryItem(t, title, _rating(samples["target_rating"].iat[i]),
                                      _to_datetime(samples["target_ts"].iat[i])))
        first_target = len(hists[first])  # events before it are history only
        rows = [catalog.row.get(e.item_id, -1) for e in events]
        start = 0
        while True:
            lo = max(first_target, start + 1 if start == 0 else start + window - stride + 1)
            hi = min(len(events) - 1, start + window)
            if lo <= hi:
                out.append(UserWindow(events[start: hi + 1], rows[start: hi + 1],
                                      range(lo - start, hi - start + 1)))
            if start + window >= len(events) - 1:
                break
            start += stride
    return out


def catalogue_softmax_loss(users: torch.Tensor, items: torch.Tensor, targets: torch.Tensor,
                           tau: float) -> torch.Tensor:
    """Cross-entropy of each user state's target over the given item states (cosine / tau).
    `targets` index rows of `items`. In float32 whatever the model's dtype: with bf16 states,
    cosine / 0.02 would be rounded to steps of 0.25."""
    logits = F.normalize(users.float(), dim=-1) @ F.normalize(items.float(), dim=-1).T / tau
    return F.cross_entropy(logits, targets)


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token NLL of the taught reasoning tokens."""
    return F.cross_entropy(logits.float(), labels)


def encode_items_with_grad(model, prompts, rows: list[int], pad_id: int, device,
                           batch_size: int = 512) -> torch.Tensor:
    """Last-token states of the given item prompts, in `rows` order, with gradient."""
    out = [None] * len(rows)
    for idx in length_sorted_batches([len(prompts[r]) for r in rows], batch_size):
        ids, mask = pad_batch([prompts[rows[i]] for i in idx], pad_id, "right", device)
        states = last_token_states(model, ids, mask)
        for j, i in enumerate(idx):
            out[i] = states[j]
    return torch.stack(out)


def train(r2ec: R2ec, catalog: Catalog, train_samples: pd.DataFrame, valid_samples: pd.DataFrame,
          cfg: WarmStartConfig, out_dir, resume: bool = False, progress: bool = True) -> dict:
    """Train in place; the best model by valid NDCG@10 is saved in `out_dir/best`."""
    from accelerate.utils import set_seed

    out_dir = Path(out_dir)
    set_seed(cfg.seed)
    r2ec.set_model(apply_lora(r2ec.model, cfg.lora))
    model = r2ec.model
    windows = user_windows(train_samples, catalog, cfg.window, cfg.stride)
    n_targets = sum(len(w.counted) for w in windows)
    log.info("%d packed windows carry %d train targets", len(windows), n_targets)
    order = EpochOrder(len(windows), cfg.windows_per_step, cfg.seed, *distributed.world())
    item_prompts = r2ec.item_prompts(catalog.ids, catalog.titles, catalog.attributes)
    pad, device = r2ec.tokenizer.pad_token_id, r2ec.device
    tags = [item_tags(a) for a in catalog.attributes]
    teacher = None
    if cfg.reasoning_share > 0:
        hist_rows = [catalog.rows(h) for h in train_samples["history_item_ids"]]
        tgt_rows = [catalog.row[t] for t in train_samples["target_item_id"]]
        teacher = Teacher(tags, cooccurrence(hist_rows, tgt_rows, len(catalog)),
                          cfg.reasoning_genres, cfg.reasoning_items)
    reasoning_eval = cfg.eval_reasoning and cfg.reasoning_share > 0
    subset = valid_samples if not cfg.eval_samples or cfg.eval_samples >= len(valid_samples) \
        else valid_samples.sample(n=cfg.eval_samples, random_state=cfg.seed)

    def build(w: UserWindow, rng: np.random.Generator) -> Window:
        lines = [r2ec.line_ids(e, w.events[i - 1].ts if i else None)
                 for i, e in enumerate(w.events[: w.counted.stop - 1])]
        readouts = []
        for j in w.counted:
            block = r2ec.readout_ids(w.events[j - 1].ts, w.events[j].ts)
            lm_from = -1
            if teacher is not None and rng.random() < cfg.reasoning_share:
                hist, rows = w.events[max(0, j - cfg.window): j], w.rows[max(0, j - cfg.window): j]
                pos = teacher.pick_items(hist, rows, w.rows[j])
                text = reasoning_text(teacher.pick_tags(rows, w.rows[j]),
                                      sorted(len(hist) - p for p in pos))
                lm_from = len(block)
                block = block + r2ec._encode(text)
            readouts.append(Readout(j, block + [r2ec.answer_id], w.rows[j], lm_from))
        return Window(r2ec.prefix_ids(), lines, readouts)

    def step_fn(step: int, micro: int) -> tuple[torch.Tensor, dict]:
        rng = np.random.default_rng([cfg.seed, step, micro])  # replays exactly on resume
        batch = [build(windows[i], rng) for i in order.next_batch()]
        p = pack(batch, pad, device)
        hidden = packed_hidden(model, p)
        keep = p.targets >= 0
        users = hidden[p.readout_rows[keep], p.readout_pos[keep]]
        targets = p.targets[keep]
        if cfg.item_sample and cfg.item_sample < len(catalog):
            uniq = torch.unique(targets).tolist()
            taken = set(uniq)
            others = [r for r in rng.permutation(len(catalog)).tolist() if r not in taken]
            extra = others[: max(0, cfg.item_sample - len(uniq))]
            rows = uniq + extra
            lookup = torch.full((len(catalog),), -1, dtype=torch.long, device=device)
            lookup[torch.tensor(rows, device=device)] = torch.arange(len(rows), device=device)
            targets = lookup[targets]
        else:
            rows = list(range(len(catalog)))
        items = encode_items_with_grad(model, item_prompts, rows, pad, device)
        loss = catalogue_softmax_loss(users, items, targets, r2ec.tau)
        info = {"loss_items": loss.item(), "readouts": int(keep.sum())}
        if len(p.lm_labels) and cfg.lm_loss_weight:
            head = r2ec.model.get_output_embeddings()
            lm = lm_loss(head(hidden[p.lm_rows, p.lm_pos]), p.lm_labels)
            loss = loss + cfg.lm_loss_weight * lm
            info["loss_lm"] = lm.item()
        return loss, info

    def validate() -> dict:
        res = evaluate_r2ec(r2ec, subset, catalog, reasoning_eval,
                            SamplingConfig(max_new_tokens=cfg.eval_max_new_tokens),
                            item_prompts=item_prompts)
        return res.metrics

    steps_per_epoch = max(1, round(len(windows) / (cfg.windows_per_step * order.world)))
    return run_loop(r2ec, cfg, stage="warmstart", out_dir=out_dir, steps_per_epoch=steps_per_epoch,
                    step_fn=step_fn, validate=validate, state=[order], resume=resume,
                    progress=progress)
