"""What a user would pick instead of R²ec, on the same protocol and split.

- `Popularity`: how often each item was a train target;
- `LastItemTransition`: counts of (last history item -> next item) in train, popularity as tie-break
  (the promotion job's ship rule: a first champion must beat it);
- `SASRec` (Kang & McAuley 2018): causal self-attention over the item-id history, trained with a
  full softmax over the catalogue at every position of every training sample's window, padding
  masked, early-stopped on valid NDCG@10 by the same rule as every trained method.

All three score whole catalogues for a batch of samples (pandas frame of training_samples rows)
and plug into `r2ec.evaluation.evaluate`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from r2ec.config import HISTORY_WINDOW
from r2ec.data import Catalog
from r2ec.evaluation import EarlyStopping, evaluate
from r2ec.progress import progress_bar

log = logging.getLogger(__name__)


class Popularity:
    def __init__(self, train: pd.DataFrame, catalog: Catalog):
        counts = np.zeros(len(catalog))
        np.add.at(counts, catalog.rows(train["target_item_id"]), 1.0)
        self.scores = counts

    def __call__(self, batch: pd.DataFrame) -> np.ndarray:
        return np.tile(self.scores, (len(batch), 1))


class LastItemTransition:
    def __init__(self, train: pd.DataFrame, catalog: Catalog):
        n = len(catalog)
        self.catalog = catalog
        self.counts = np.zeros((n, n), dtype=np.float32)
        last = [catalog.row.get(h[-1]) for h in train["history_item_ids"]]
        nxt = [catalog.row.get(t) for t in train["target_item_id"]]
        for a, b in zip(last, nxt, strict=True):
            if a is not None and b is not None:
                self.counts[a, b] += 1
        pop = Popularity(train, catalog).scores
        self.tiebreak = pop / (pop.max() + 1.0)  # < 1: never outweighs one transition

    def __call__(self, batch: pd.DataFrame) -> np.ndarray:
        out = np.tile(self.tiebreak, (len(batch), 1))
        for i, h in enumerate(batch["history_item_ids"]):
            r = self.catalog.row.get(h[-1]) if len(h) else None
            if r is not None:
                out[i] += self.counts[r]
        return out


@dataclass
class SASRecConfig:
    hidden: int = 64
    blocks: int = 2
    heads: int = 1
    window: int = HISTORY_WINDOW
    dropout: float = 0.3
    lr: float = 1e-3
    init_std: float = 0.02  # N(0, 0.02) for every weight: tied logits start near zero
    batch_size: int = 128
    loss_positions: str = "all"  # "all": next item at every window position; "last": target only
    max_epochs: int = 200
    max_minutes: float = 0.0  # 0 = no time limit
    eval_every: int = 1       # epochs between validations (the whole valid split)
    patience: int = 5         # validations without a better valid NDCG@10 (EarlyStopping)
    seed: int = 0


class SASRecModel(nn.Module):
    """Causal self-attention over left-padded item ids (Kang & McAuley 2018), tied output."""

    def __init__(self, n_items: int, cfg: SASRecConfig):
        super().__init__()
        self.items = nn.Embedding(n_items + 1, cfg.hidden, padding_idx=0)  # 0 = padding
        self.pos = nn.Embedding(cfg.window, cfg.hidden)
        layer = nn.TransformerEncoderLayer(cfg.hidden, cfg.heads, cfg.hidden, cfg.dropout,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.blocks, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.hidden)
        self.drop = nn.Dropout(cfg.dropout)
        self.heads = cfg.heads
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=cfg.init_std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        for name, p in self.encoder.named_parameters():  # attention's packed projections
            if name.endswith("in_proj_weight"):
                nn.init.normal_(p, std=cfg.init_std)
            elif name.endswith("in_proj_bias"):
                nn.init.zeros_(p)
        with torch.no_grad():
            self.items.weight[0].zero_()

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, L) left-padded item ids -> (B, L, hidden) states."""
        b, L = seq.shape
        pad = seq == 0
        x = self.drop(self.items(seq) + self.pos(torch.arange(L, device=seq.device))[None])
        x = x.masked_fill(pad.unsqueeze(-1), 0.0)
        # Causal and key-padding mask in one: a real position never attends to padding. Every
        # position may attend to itself, so an all-padding row has one key and no NaN.
        causal = torch.triu(torch.ones(L, L, dtype=torch.bool, device=seq.device), 1)
        masked = (causal[None] | pad[:, None, :]) & ~torch.eye(L, dtype=torch.bool,
                                                               device=seq.device)[None]
        x = self.encoder(x, mask=masked.repeat_interleave(self.heads, 0))
        return self.norm(x)

    def logits(self, states: torch.Tensor) -> torch.Tensor:
        return states @ self.items.weight[1:].T  # over catalogue rows 0..N-1


def _windows(samples: pd.DataFrame, catalog: Catalog, window: int
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """One left-padded window per training sample: its history as input, and as labels the
    next item at every position (the last label is the sample's target); 0 = no label."""
    xs, ys = [], []
    for hist, target in zip(samples["history_item_ids"], samples["target_item_id"], strict=True):
        seq = [catalog.row[i] + 1 for i in list(hist) + [target] if i in catalog.row][-window - 1:]
        if len(seq) < 2:
            continue
        x, y = seq[:-1], seq[1:]
        pad = window - len(x)
        xs.append([0] * pad + x)
        ys.append([0] * pad + y)
    return torch.tensor(xs), torch.tensor(ys)


class SASRec:
    """Trained SASRec as a scorer; `fit` selects the epoch by valid NDCG@10 (EarlyStopping)."""

    def __init__(self, catalog: Catalog, cfg: SASRecConfig | None = None,
                 device: str | torch.device = "cpu"):
        self.catalog, self.cfg, self.device = catalog, cfg or SASRecConfig(), torch.device(device)
        torch.manual_seed(self.cfg.seed)
        self.model = SASRecModel(len(catalog), self.cfg).to(self.device)

    def _history_tensor(self, batch: pd.DataFrame) -> torch.Tensor:
        w = self.cfg.window
        rows = [[self.catalog.row[i] + 1 for i in h if i in self.catalog.row][-w:]
                for h in batch["history_item_ids"]]
        return torch.tensor([[0] * (w - len(r)) + r for r in rows], device=self.device)

    @torch.no_grad()
    def __call__(self, batch: pd.DataFrame) -> np.ndarray:
        self.model.eval()
        states = self.model(self._history_tensor(batch))[:, -1]
        return self.model.logits(states).float().cpu().numpy()

    def fit(self, train: pd.DataFrame, valid: pd.DataFrame, progress: bool = True) -> dict:
        """Train on one window per training sample; after every `eval_every` epochs, NDCG@10 on
        the whole valid split; keep the best epoch, stop after `patience` without a better one.
        Returns the summary and the valid curve (epoch, training minutes, NDCG@10); the time
        budget, like the R²ec trainers', counts training time, not validations."""
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        x, y = (t.to(self.device) for t in _windows(train, self.catalog, cfg.window))
        if cfg.loss_positions == "last":
            y = torch.where(torch.arange(cfg.window, device=self.device)[None] == cfg.window - 1, y, 0)
        elif cfg.loss_positions != "all":
            raise ValueError(f"loss_positions must be 'all' or 'last', not {cfg.loss_positions!r}")
        opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, betas=(0.9, 0.98))
        stopper, best_state, curve = EarlyStopping(cfg.patience), None, []
        start, stopped, trained = time.time(), "epochs", 0.0  # trained: seconds in epochs only
        for epoch in progress_bar(iterable=range(1, cfg.max_epochs + 1), desc="SASRec epochs",
                                  disable=not progress):
            epoch_start = time.time()
            self.model.train()
            perm = torch.randperm(len(x)).to(self.device)
            for i in range(0, len(x), cfg.batch_size):
                idx = perm[i: i + cfg.batch_size]
                logits = self.model.logits(self.model(x[idx]))
                target = y[idx] - 1  # -1 where there is no label
                loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                   target.reshape(-1), ignore_index=-1)
                opt.zero_grad()
                loss.backward()
                opt.step()
            trained += time.time() - epoch_start
            over_time = cfg.max_minutes and trained > 60 * cfg.max_minutes
            if epoch % cfg.eval_every and not over_time and epoch != cfg.max_epochs:
                continue
            ndcg = evaluate(self, valid, self.catalog, progress=False).metrics["ndcg@10"]
            minutes = trained / 60
            curve.append({"epoch": epoch, "minutes": round(minutes, 3), "valid_ndcg@10": ndcg,
                          "loss": loss.item()})
            log.info("SASRec epoch %d (%.1f min): loss %.3f, valid NDCG@10 %.4f", epoch, minutes,
                     loss.item(), ndcg)
            improved, stop = stopper.update(ndcg)
            if improved:
                best_state = {k: v.clone() for k, v in self.model.state_dict().items()}
            if stop or over_time:
                stopped = "early stopping" if stop else "time budget"
                break
        if best_state is not None:
            self.model.load_state_dict(best_state)
        return {"best_valid_ndcg@10": stopper.best, "epochs": epoch, "stopped_by": stopped,
                "best_epoch": max(curve, key=lambda c: c["valid_ndcg@10"])["epoch"],
                "seconds": time.time() - start, "train_minutes": trained / 60, "curve": curve}
