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
after it, as greedy-reasoning inference does. This module holds the config, the windows and the
losses; the loop is `r2ec/warmstart_trainer.py` (as `r2ec.recpo` and `r2ec.recpo_trainer`).

    bin/r2ec-submit jobs/train.py --stage warmstart --model models/work/init --out models/ws
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pandas as pd
import torch
from torch.nn import functional as F

from r2ec.batching import last_token_states, length_sorted_batches, pad_batch
from r2ec.config import HISTORY_WINDOW, SamplingConfig, option, restate
from r2ec.data import Catalog, histories, rating_value, to_datetime
from r2ec.prompts import HistoryItem
from r2ec.training import LoopConfig

log = logging.getLogger(__name__)


@dataclass
class WarmStartConfig(LoopConfig):
    """Stage 0 (the paper's "w/o reasoning" training, or a taught reasoning format with
    reasoning_share > 0); the loop settings are `LoopConfig`'s."""

    epochs: float = restate(LoopConfig, "epochs", 8.0, "a from-scratch model needs many")
    lr: float = restate(LoopConfig, "lr", 1e-3, "measured on the small model: 1e-3 with ~1,000 "
                                                "targets per step")
    warmup_steps: int = restate(LoopConfig, "warmup_steps", 50, "the warm start: 50")
    weight_decay: float = restate(LoopConfig, "weight_decay", 0.01, "AdamW's usual 0.01")
    beta2: float = restate(LoopConfig, "beta2", 0.98, "0.98: few, noisy steps")
    eval_every: int = restate(LoopConfig, "eval_every", 100, "validations cost more than steps")
    patience: int = restate(LoopConfig, "patience", 4, "the warm start plateaus early")
    save_every: int = restate(LoopConfig, "save_every", 100, "as often as it validates")
    windows_per_step: int = option(96, "packed user windows per micro-batch (~10 targets each)")
    window: int = option(HISTORY_WINDOW, "history lines per packed window (the prompts' window)")
    stride: int = option(10, "events between window starts; later windows count only their "
                             "last `stride` targets")
    item_sample: int = option(0, "catalogue items encoded with gradient per step: 0 = all (one "
                                 "consistent full softmax); N = the batch's targets plus random "
                                 "others up to N (sampled softmax, for large catalogues)")
    reasoning_share: float = option(0.0, "share of readouts that carry a taught reasoning (0 = "
                                         "the paper's w/o-reasoning stage)")
    reasoning_genres: str = option("target", "taught genres: 'target' (the next item's) or "
                                             "'profile' (the history's most frequent)")
    reasoning_items: str = option("cooccur", "taught items: 'cooccur' (history items that "
                                             "co-occur most with the next one in train) or "
                                             "'recent' (latest well-rated)")
    lm_loss_weight: float = option(0.5, "weight of the LM loss on the taught reasoning")
    eval_reasoning: bool = option(True, "validate with greedy reasoning (what scoring does) "
                                        "instead of without; only with reasoning_share > 0")
    eval_max_new_tokens: int = option(16, "reasoning budget of those validations")

    @property
    def eval_sampling(self) -> SamplingConfig:
        """How validations reason: greedy, within `eval_max_new_tokens`."""
        return SamplingConfig(max_new_tokens=self.eval_max_new_tokens)


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
            events.append(HistoryItem(t, title, rating_value(samples["target_rating"].iat[i]),
                                      to_datetime(samples["target_ts"].iat[i])))
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
