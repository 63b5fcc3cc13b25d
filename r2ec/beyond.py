"""Beyond-accuracy metrics of ranked lists: what hit/NDCG do not see. One evaluator, used by
`jobs/evaluate.py` (rows of `evaluations`) and by the quality benchmark, so both report the
same numbers for the same lists.

For each cut-off K (the lists' first K items):
- coverage@K: distinct recommended items over all users / catalogue size.
- popularity_percentile@K: mean popularity percentile of the recommended items (0 = the least
  interacted-with item, 1 = the most; mid-rank for ties), averaged per user.
- popularity_bias@K: that minus the mean percentile of the same user's history items, averaged
  over users with a history: > 0 means the lists lean to more popular items than the user
  consumes (the usual failure of a recommender), < 0 the reverse.
- novelty@K: mean self-information -log2 p(i) of the recommended items, p(i) = (count(i) + 1) /
  (all counts + catalogue size) (add-one, so an item never seen in training is finite).
- diversity@K: intra-list diversity, the mean over pairs of a list of 1 - Jaccard(tags of i,
  tags of j) (MovieLens genres, or Amazon's last category), averaged per user; pairs where
  neither item has a tag are left out, users without such a pair too.
Popularity counts come from the training interactions only, so evaluation data never leaks in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from itertools import combinations

import numpy as np

from r2ec.metrics import KS


def popularity_percentiles(counts: Mapping[str, int], catalog_ids: Sequence[str]
                           ) -> dict[str, float]:
    """Mid-rank percentile of each catalogue item's count: (#lower + #equal / 2) / N."""
    c = np.array([counts.get(i, 0) for i in catalog_ids], dtype=np.int64)
    s = np.sort(c)
    lower = np.searchsorted(s, c, side="left")
    equal = np.searchsorted(s, c, side="right") - lower
    pct = (lower + equal / 2) / len(c)
    return dict(zip(catalog_ids, pct.tolist(), strict=True))


def _jaccard_distance(a: set[str], b: set[str]) -> float | None:
    if not a and not b:
        return None
    return 1.0 - len(a & b) / len(a | b)


def beyond_accuracy(lists: Sequence[Sequence[str]], histories: Sequence[Sequence[str]],
                    counts: Mapping[str, int], catalog_ids: Sequence[str],
                    tags: Mapping[str, Iterable[str]], ks: Iterable[int] = KS) -> dict[str, float]:
    """{'coverage@K', 'popularity_percentile@K', 'popularity_bias@K', 'novelty@K',
    'diversity@K'} for every K in `ks` (see the module docstring)."""
    n_items = len(catalog_ids)
    pct = popularity_percentiles(counts, catalog_ids)
    total = sum(counts.get(i, 0) for i in catalog_ids)
    info = {i: -np.log2((counts.get(i, 0) + 1) / (total + n_items)) for i in catalog_ids}
    tagset = {i: set(tags.get(i, ())) for i in catalog_ids}
    hist_pct = [np.mean([pct[h] for h in hs if h in pct]) if any(h in pct for h in hs) else None
                for hs in histories]
    out: dict[str, float] = {}
    for k in ks:
        tops = [list(x)[:k] for x in lists]
        seen = {i for t in tops for i in t}
        rec_pct = [float(np.mean([pct[i] for i in t])) for t in tops if t]
        bias = [float(np.mean([pct[i] for i in t])) - hp
                for t, hp in zip(tops, hist_pct, strict=True) if t and hp is not None]
        div = []
        for t in tops:
            d = [x for a, b in combinations(t, 2)
                 if (x := _jaccard_distance(tagset[a], tagset[b])) is not None]
            if d:
                div.append(float(np.mean(d)))
        out[f"coverage@{k}"] = len(seen) / n_items
        out[f"popularity_percentile@{k}"] = float(np.mean(rec_pct)) if rec_pct else float("nan")
        out[f"popularity_bias@{k}"] = float(np.mean(bias)) if bias else float("nan")
        out[f"novelty@{k}"] = (float(np.mean([np.mean([info[i] for i in t]) for t in tops if t]))
                               if rec_pct else float("nan"))
        out[f"diversity@{k}"] = float(np.mean(div)) if div else float("nan")
    return out


BEYOND_COLS = ("coverage", "popularity_percentile", "popularity_bias", "novelty", "diversity")


def beyond_markdown(lists_by_method: Mapping[str, Sequence[Sequence[str]]],
                    histories: Sequence[Sequence[str]], counts: Mapping[str, int],
                    catalog_ids: Sequence[str], tags: Mapping[str, Iterable[str]], k: int = 10
                    ) -> tuple[list[dict], str]:
    """One row per method at cut-off k, and the same as a markdown table (the benchmarks')."""
    rows = []
    for method, lists in lists_by_method.items():
        m = beyond_accuracy(lists, histories, counts, catalog_ids, tags, ks=(k,))
        rows.append({"method": method, **{c: m[f"{c}@{k}"] for c in BEYOND_COLS}})
    md = ["| method | " + " | ".join(f"{c}@{k}" for c in BEYOND_COLS) + " |",
          "|---|" + "---:|" * len(BEYOND_COLS)]
    md += [f"| {r['method']} | " + " | ".join(f"{r[c]:.4f}" for c in BEYOND_COLS) + " |"
           for r in rows]
    return rows, "\n".join(md) + "\n"
