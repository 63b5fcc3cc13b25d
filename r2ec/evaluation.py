"""Offline evaluation on the paper's protocol, for any scorer (R²ec, SASRec, popularity...).

A scorer maps a batch of samples (a pandas frame with the training_samples columns) to a
(B, N) score matrix over the catalogue rows. `evaluate` masks each sample's history window,
ranks the target, and returns the metrics, the ranks, and the top-k ranked item rows (for the
eval_rankings table, so anyone can recompute the metrics).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from r2ec.data import Catalog
from r2ec.metrics import KS, RankAccumulator
from r2ec.progress import progress_bar

Scorer = Callable[[pd.DataFrame], np.ndarray]


@dataclass
class EarlyStopping:
    """The model-selection rule of every trained method (SASRec and both R²ec stages): keep the
    checkpoint with the best valid NDCG@10, stop after `patience` validations in a row without
    a better one (0 = never stop early). Its fields are plain, so trainers can save and resume
    it."""

    patience: int
    best: float = -1.0
    since_best: int = 0

    def update(self, value: float) -> tuple[bool, bool]:
        """Record one validation: (improved, stop)."""
        if value > self.best:
            self.best, self.since_best = value, 0
            return True, False
        self.since_best += 1
        return False, bool(self.patience) and self.since_best >= self.patience


@dataclass
class EvalResult:
    metrics: dict[str, float]
    ranks: np.ndarray          # (S,) 1-based rank of each target; N + 1 = masked target
    top_rows: np.ndarray       # (S, top_k) catalogue rows, best first, history masked
    top_scores: np.ndarray     # (S, top_k)
    sample_ids: list[int]
    generations: list = field(default_factory=list)  # R²ec: the reasoning of each sample


def history_rows(samples: pd.DataFrame, catalog: Catalog) -> list[list[int]]:
    return [catalog.rows(ids) for ids in samples["history_item_ids"]]


def evaluate(scorer: Scorer, samples: pd.DataFrame, catalog: Catalog, batch_size: int = 256,
             top_k: int = 20, desc: str = "evaluating", progress: bool = True) -> EvalResult:
    acc = RankAccumulator()
    tops, top_scores = [], []
    # Targets outside the catalogue cannot be ranked; the protocol has none (ingest refuses
    # unknown items), so refuse loudly instead of silently skipping samples.
    missing = set(samples["target_item_id"]) - set(catalog.row)
    if missing:
        raise ValueError(f"{len(missing)} target item(s) not in the catalogue, e.g. {sorted(missing)[:3]}")
    for start in progress_bar(iterable=range(0, len(samples), batch_size), desc=desc,
                              disable=not progress):
        batch = samples.iloc[start: start + batch_size]
        scores = np.asarray(scorer(batch), dtype=np.float64)
        hist = history_rows(batch, catalog)
        targets = [catalog.row[t] for t in batch["target_item_id"]]
        acc.add(scores, targets, hist)
        masked = scores.copy()
        for i, h in enumerate(hist):
            masked[i, h] = -np.inf
        k = min(top_k, masked.shape[1])
        part = np.argpartition(-masked, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(masked, part, 1)
        # Stable order: by score descending, then by row (the metrics' tie rule).
        idx = np.lexsort((part, -order), axis=1)
        rows = np.take_along_axis(part, idx, 1)
        tops.append(rows)
        top_scores.append(np.take_along_axis(masked, rows, 1))
    return EvalResult(acc.result(KS), acc.ranks,
                      np.concatenate(tops) if tops else np.zeros((0, top_k), int),
                      np.concatenate(top_scores) if top_scores else np.zeros((0, top_k)),
                      list(samples["sample_id"]))
