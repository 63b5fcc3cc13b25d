"""Ranking metrics exactly as the paper's evaluation, and the paired bootstrap that says whether a
difference between two methods is more than noise.

One target per sample; full ranking over the whole catalogue; the items of the sample's history
window are masked (-inf) before ranking, so a target that is in the window is never a hit.
Hit@K = [rank <= K]; NDCG@K = 1 / log2(rank + 1) if rank <= K else 0 (single target, no IDCG).

Ties: rank = 1 + #items scoring strictly higher + #items scoring equal with a lower row index,
i.e. a stable sort by score. Popularity-style scores tie a lot; this keeps them deterministic
and never optimistic.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

KS = (5, 10, 20)


def target_ranks(scores: np.ndarray, targets: Sequence[int],
                 exclude: Sequence[Iterable[int]] | None = None) -> np.ndarray:
    """1-based rank of each target row in `scores` (B, N) after masking `exclude[b]`.
    A masked target gets rank N + 1 (a miss at every K)."""
    scores = np.array(scores, dtype=np.float64, copy=True)
    b, n = scores.shape
    targets = np.asarray(targets, dtype=np.int64)
    if len(targets) != b:
        raise ValueError("one target per row")
    if exclude is not None:
        for i, ex in enumerate(exclude):
            ex = list(ex)
            if ex:
                scores[i, ex] = -np.inf
    t = scores[np.arange(b), targets]
    higher = (scores > t[:, None]).sum(1)
    cols = np.arange(n)[None, :]
    tied_before = ((scores == t[:, None]) & (cols < targets[:, None])).sum(1)
    ranks = 1 + higher + tied_before
    return np.where(np.isneginf(t), n + 1, ranks)


def ndcg_per_sample(ranks: np.ndarray, k: int) -> np.ndarray:
    """NDCG@k of each sample from its target's 1-based rank (any array shape)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    return np.where(ranks <= k, 1.0 / np.log2(ranks + 1.0), 0.0)


def metrics_from_ranks(ranks: np.ndarray, ks: Iterable[int] = KS) -> dict[str, float]:
    ranks = np.asarray(ranks, dtype=np.float64)
    out = {}
    for k in ks:
        out[f"hit@{k}"] = float((ranks <= k).mean()) if len(ranks) else 0.0
        out[f"ndcg@{k}"] = float(ndcg_per_sample(ranks, k).mean()) if len(ranks) else 0.0
    return out


class RankAccumulator:
    """Collects ranks batch by batch (full-catalogue scoring does not fit in one array)."""

    def __init__(self) -> None:
        self._ranks: list[np.ndarray] = []

    def add(self, scores: np.ndarray, targets: Sequence[int],
            exclude: Sequence[Iterable[int]] | None = None) -> np.ndarray:
        r = target_ranks(scores, targets, exclude)
        self._ranks.append(r)
        return r

    @property
    def ranks(self) -> np.ndarray:
        return np.concatenate(self._ranks) if self._ranks else np.zeros(0)

    def result(self, ks: Iterable[int] = KS) -> dict[str, float]:
        return metrics_from_ranks(self.ranks, ks)


def ndcg_from_lists(top_items: Sequence[Sequence], targets: Sequence, k: int = 10) -> np.ndarray:
    """Per-sample NDCG@k from ranked lists (best first): 1/log2(rank + 1) when the target is in
    the first k, else 0. Anyone holding the lists can recompute the metrics this way."""
    out = np.zeros(len(targets))
    for i, (items, t) in enumerate(zip(top_items, targets, strict=True)):
        head = list(items[:k])
        if t in head:
            out[i] = 1.0 / np.log2(head.index(t) + 2)
    return out


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n_boot: int = 2000, level: float = 0.95,
                     seed: int = 0) -> tuple[float, float, float]:
    """Mean of a - b over the same samples and its percentile bootstrap interval: resample the
    samples (pairs kept together) `n_boot` times. Returns (difference, low, high); an interval
    that excludes 0 means the difference is not resampling noise at that level. Used by the
    quality benchmark and by promotion decisions."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise ValueError("two equally long, non-empty 1-d arrays of per-sample values")
    d = a - b
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    chunk = max(1, 2_000_000 // len(d))  # bound the index matrix to ~16 MB
    for s in range(0, n_boot, chunk):
        n = min(chunk, n_boot - s)
        means[s: s + n] = d[rng.integers(0, len(d), size=(n, len(d)))].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(d.mean()), float(lo), float(hi)
