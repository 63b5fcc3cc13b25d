"""What a user would pick instead of R²ec, on the same protocol and split.

- `Popularity`: how often each item was a train target;
- `LastItemTransition`: counts of (last history item -> next item) in train, popularity as tie-break
  (SMALL_MODEL.md's "ship rule" compares the default model against it);
- `SASRec` (Kang & McAuley 2018): causal self-attention over the item-id history, trained with a
  full softmax over the catalogue on every position of each user's train sequence.

All three score whole catalogues for a batch of samples (pandas frame of training_samples rows)
and plug into `r2ec.evaluation.evaluate`.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from r2ec.data import Catalog
from r2ec.evaluation import evaluate
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
    window: int = 20
    dropout: float = 0.3
    lr: float = 1e-3
    batch_size: int = 128
    max_epochs: int = 200
    eval_every: int = 5
    patience: int = 4  # evaluations without a better valid NDCG@10
    seed: int = 0


class SASRecModel(nn.Module):
    def __init__(self, n_items: int, cfg: SASRecConfig):
        super().__init__()
        self.items = nn.Embedding(n_items + 1, cfg.hidden, padding_idx=0)  # 0 = padding
        self.pos = nn.Embedding(cfg.window, cfg.hidden)
        layer = nn.TransformerEncoderLayer(cfg.hidden, cfg.heads, cfg.hidden, cfg.dropout,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.blocks, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.hidden)
        self.drop = nn.Dropout(cfg.dropout)
        self.window = cfg.window

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, L) left-padded item ids -> (B, L, hidden) states."""
        L = seq.shape[1]
        x = self.items(seq) * math.sqrt(self.items.embedding_dim)
        real = (seq != 0).unsqueeze(-1).to(x.dtype)
        # Padding positions are zeroed and attended to, as the original SASRec does: a key
        # padding mask would make the all-padding rows NaN, and NaN * 0 leaks into real rows.
        x = self.drop(x + self.pos(torch.arange(L, device=seq.device))[None]) * real
        causal = torch.triu(torch.ones(L, L, dtype=torch.bool, device=seq.device), 1)
        x = self.encoder(x, mask=causal)
        return self.norm(x)

    def logits(self, states: torch.Tensor) -> torch.Tensor:
        return states @ self.items.weight[1:].T  # over catalogue rows 0..N-1


def _train_sequences(train: pd.DataFrame, catalog: Catalog) -> list[list[int]]:
    """Each user's train sequence, as catalogue row + 1: first history, then targets in order."""
    seqs = []
    for _, g in train.sort_values(["user_id", "position"]).groupby("user_id", sort=False):
        first = g.iloc[0]
        items = list(first["history_item_ids"]) + list(g["target_item_id"])
        seqs.append([catalog.row[i] + 1 for i in items if i in catalog.row])
    return seqs


def _windows(seqs: list[list[int]], window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut sequences into (input, next-item) windows covering every target once; left-padded."""
    xs, ys = [], []
    for s in seqs:
        end = len(s)
        while end > 1:
            chunk = s[max(0, end - window - 1): end]
            x, y = chunk[:-1], chunk[1:]
            pad = window - len(x)
            xs.append([0] * pad + x)
            ys.append([0] * pad + y)
            end -= window
    return torch.tensor(xs), torch.tensor(ys)


class SASRec:
    """Trained SASRec as a scorer; `fit` selects the epoch by valid NDCG@10."""

    def __init__(self, catalog: Catalog, cfg: SASRecConfig | None = None):
        self.catalog, self.cfg = catalog, cfg or SASRecConfig()
        torch.manual_seed(self.cfg.seed)
        self.model = SASRecModel(len(catalog), self.cfg)

    def _history_tensor(self, batch: pd.DataFrame) -> torch.Tensor:
        w = self.cfg.window
        rows = [[self.catalog.row[i] + 1 for i in h if i in self.catalog.row][-w:]
                for h in batch["history_item_ids"]]
        return torch.tensor([[0] * (w - len(r)) + r for r in rows])

    @torch.no_grad()
    def __call__(self, batch: pd.DataFrame) -> np.ndarray:
        self.model.eval()
        states = self.model(self._history_tensor(batch))[:, -1]
        return self.model.logits(states).numpy()

    def fit(self, train: pd.DataFrame, valid: pd.DataFrame, progress: bool = True) -> dict:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        x, y = _windows(_train_sequences(train, self.catalog), cfg.window)
        opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        best, best_state, since_best, history = -1.0, None, 0, []
        start = time.time()
        for epoch in progress_bar(iterable=range(1, cfg.max_epochs + 1), desc="SASRec epochs",
                                  disable=not progress):
            self.model.train()
            perm = torch.randperm(len(x))
            for i in range(0, len(x), cfg.batch_size):
                idx = perm[i: i + cfg.batch_size]
                logits = self.model.logits(self.model(x[idx]))
                target = y[idx] - 1  # -1 where padding
                loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                   target.reshape(-1), ignore_index=-1)
                opt.zero_grad()
                loss.backward()
                opt.step()
            if epoch % cfg.eval_every == 0 or epoch == cfg.max_epochs:
                ndcg = evaluate(self, valid, self.catalog, progress=False).metrics["ndcg@10"]
                history.append({"epoch": epoch, "valid_ndcg@10": ndcg, "loss": float(loss)})
                log.info("SASRec epoch %d: loss %.3f, valid NDCG@10 %.4f", epoch, float(loss), ndcg)
                if ndcg > best:
                    best, since_best = ndcg, 0
                    best_state = {k: v.clone() for k, v in self.model.state_dict().items()}
                else:
                    since_best += 1
                    if since_best >= cfg.patience:
                        break
        if best_state is not None:
            self.model.load_state_dict(best_state)
        return {"best_valid_ndcg@10": best, "epochs": epoch, "seconds": time.time() - start,
                "history": history}
