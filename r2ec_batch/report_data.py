"""The numbers behind the HTML report, read from the warehouse with deltalake (no Spark), the
way an analyst's notebook reads it. Every function returns a pandas frame (empty when the table
is not there yet), so the report renders whatever a warehouse already has.

Beyond-accuracy and rationale figures of published runs come from the same evaluators as
`evaluations` (`r2ec.beyond`, `r2ec.reasoning.rationale_metrics`), so the report and the
evaluation table never disagree on a definition.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from deltalake import DeltaTable

from r2ec_batch import storage

ACCURACY_METRICS = ("hit", "ndcg")


@dataclass
class Warehouse:
    """Lazy, cached pandas reads of a warehouse's Delta tables."""

    location: str
    _cache: dict[str, pd.DataFrame] = field(default_factory=dict)

    def table(self, name: str, columns: list[str] | None = None,
              filters: list[tuple] | None = None) -> pd.DataFrame:
        key = f"{name}|{columns}|{filters}"
        if key not in self._cache:
            uri, opts = storage.join(self.location, name), storage.delta_rs_options(self.location)
            if not DeltaTable.is_deltatable(uri, opts):
                self._cache[key] = pd.DataFrame(columns=columns or [])
            else:
                self._cache[key] = DeltaTable(uri, storage_options=opts).to_pandas(
                    columns=columns, filters=filters)
        return self._cache[key]

    def live_runs(self) -> pd.DataFrame:
        """published_runs' newest row per (run_date, variant): the runs readers see."""
        runs = self.table("published_runs")
        if runs.empty:
            return runs
        return runs.sort_values("published_at").groupby(["run_date", "variant"]).tail(1) \
            .sort_values("run_date").reset_index(drop=True)

    def published(self, name: str, run: pd.Series) -> pd.DataFrame:
        """Rows of `recommendations` / `rationales` of one published run."""
        rows = self.table(name, filters=[("run_date", "=", run["run_date"]),
                                         ("variant", "=", run["variant"])])
        return rows[rows["run_id"] == run["run_id"]]


def sample_ndcg_se(wh: Warehouse, k: int = 10) -> dict[tuple[str, str], tuple[int, float]]:
    """(model_version, split) -> (samples, standard error of NDCG@k) from the stored rankings
    (the latest evaluation of that model on that split)."""
    ranks, samples = wh.table("eval_rankings"), wh.table(
        "training_samples", columns=["sample_id", "split", "target_item_id"])
    if ranks.empty or samples.empty:
        return {}
    hits = ranks.merge(samples, left_on=["split", "sample_id", "item_id"],
                       right_on=["split", "sample_id", "target_item_id"])
    hits = hits[hits["rank"] <= k]
    out = {}
    for (model, split), g in ranks.groupby(["model_version", "split"]):
        n = g["sample_id"].nunique()
        mine = hits[(hits["model_version"] == model) & (hits["split"] == split)]
        x = np.zeros(n)
        x[: len(mine)] = 1.0 / np.log2(mine["rank"].to_numpy() + 1)
        out[(model, split)] = (n, float(x.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan"))
    return out


def accuracy_history(wh: Warehouse, k: int = 10) -> pd.DataFrame:
    """Every evaluation's hit@k and ndcg@k with a 95% interval half-width `ci95`: exact for hit
    (binomial); for NDCG from the per-sample values when the stored rankings are that
    evaluation's, else the bound sqrt(m(1 - m) / n) (a value in [0, 1] has variance <= m(1 - m))."""
    ev = wh.table("evaluations")
    if ev.empty:
        return ev
    ev = ev[ev["metric"].isin(ACCURACY_METRICS) & (ev["k"] == k)].copy()
    se = sample_ndcg_se(wh, k)
    bound = np.sqrt(ev["value"] * (1 - ev["value"]) / ev["n_samples"].clip(lower=1))

    def exact(row) -> float:
        n, s = se.get((row["model_version"], row["split"]), (None, None))
        return s if row["metric"] == "ndcg" and n == row["n_samples"] else np.nan

    per_sample = ev.apply(exact, axis=1) if len(ev) else pd.Series(dtype="float64")
    ev["interval"] = np.select([ev["metric"] == "hit", per_sample.notna()],
                               ["binomial", "per-sample"], "bound")
    ev["ci95"] = 1.96 * per_sample.fillna(bound)
    return ev.sort_values("evaluated_at")


def latest_quality(wh: Warehouse) -> pd.DataFrame:
    """Newest hit/NDCG at 5, 10, 20 of every model, split and mode (one row each)."""
    ev = wh.table("evaluations")
    if ev.empty:
        return ev
    ev = ev[ev["metric"].isin(ACCURACY_METRICS)].sort_values("evaluated_at")
    ev = ev.groupby(["model_version", "split", "mode", "metric", "k"]).tail(1)
    t = ev.pivot_table(index=["model_version", "split", "mode", "n_samples"],
                       columns=["metric", "k"], values="value").reset_index()
    t.columns = [f"{m}@{k}" if k != "" else m for m, k in t.columns]
    reg = wh.table("model_registry", columns=["model_version", "status", "stage"])
    return reg.merge(t, on="model_version", how="right").sort_values(["split", "model_version"])


def run_context(wh: Warehouse, run: pd.Series) -> dict:
    """What one published run needs for its list and rationale figures."""
    from r2ec.reasoning import item_tags

    items = wh.table("items", columns=["item_id", "title", "attributes"])
    tags = {i: item_tags(a) for i, a in zip(items["item_id"], items["attributes"], strict=True)}
    hist = wh.table("user_histories", filters=[("as_of_date", "=", run["as_of_date"])])
    inter = wh.table("interactions", columns=["item_id", "ts"])
    end = pd.Timestamp(run["as_of_date"], tz="UTC") + pd.Timedelta(days=1)  # Delta ts are UTC
    counts = inter[inter["ts"] < end]["item_id"].value_counts().to_dict()
    recs = wh.published("recommendations", run).sort_values(["user_id", "rank"])
    lists = recs.groupby("user_id")["item_id"].apply(list)
    histories = hist.set_index("user_id").reindex(lists.index)["history_item_ids"]
    return {"items": items, "tags": tags, "hist": hist, "counts": counts, "recs": recs,
            "lists": lists, "histories": [list(h) if isinstance(h, (list, np.ndarray)) else []
                                          for h in histories],
            "rationales": wh.published("rationales", run)}


def run_health(wh: Warehouse, runs: pd.DataFrame, last: int = 30,
               known: dict[str, dict] | None = None) -> pd.DataFrame:
    """One row per published run (newest `last`): users, fallback rate, and the beyond-accuracy
    metrics of its lists at its k. `known`: run contexts already read, by run_id (reading one
    costs a scan of the interactions)."""
    from r2ec.beyond import beyond_accuracy

    rows = []
    for _, run in runs.tail(last).iterrows():
        ctx = (known or {}).get(run["run_id"]) or run_context(wh, run)
        k = int(run["top_k"])
        m = beyond_accuracy(list(ctx["lists"]), ctx["histories"], ctx["counts"],
                            list(ctx["items"]["item_id"]), ctx["tags"], ks=(k,))
        rat = ctx["rationales"]
        rows.append({"run_date": run["run_date"], "variant": run["variant"], "k": k,
                     "users": int(run["users"]), "model_version": run["model_version"],
                     "fallback_rate": float(rat["fallback"].notna().mean()) if len(rat) else 0.0,
                     **{name.split("@")[0]: v for name, v in m.items()}})
    return pd.DataFrame(rows)


def popularity_of_lists(ctx: dict) -> tuple[np.ndarray, np.ndarray]:
    """Popularity percentiles of the recommended items and of the same users' history items."""
    from r2ec.beyond import popularity_percentiles

    pct = popularity_percentiles(ctx["counts"], list(ctx["items"]["item_id"]))
    rec = np.array([pct[i] for items in ctx["lists"] for i in items if i in pct])
    his = np.array([pct[i] for items in ctx["histories"] for i in items if i in pct])
    return rec, his


def rationale_quality(ctx: dict, k: int) -> dict[str, float]:
    """`r2ec.reasoning.rationale_metrics` of one run's stored rationales."""
    from r2ec.reasoning import rationale_metrics

    rat = ctx["rationales"]
    rat = rat[rat["text"].str.len() > 0]
    if rat.empty:
        return {}
    titles = ctx["hist"].set_index("user_id")["history_titles"]
    lists = ctx["lists"].reindex(rat["user_id"])
    return rationale_metrics(
        list(rat["text"]), [list(titles.get(u, [])) for u in rat["user_id"]],
        [[ctx["tags"].get(i, []) for i in (items if isinstance(items, list) else [])]
         for items in lists], set(ctx["items"]["title"]),
        {t for ts in ctx["tags"].values() for t in ts}, k)


def daily_interactions(wh: Warehouse) -> pd.Series:
    inter = wh.table("interactions", columns=["ts"])
    if inter.empty:
        return pd.Series(dtype="int64")
    return inter.groupby(inter["ts"].dt.floor("D")).size()


def quarantine_by_reason(wh: Warehouse) -> pd.DataFrame:
    """Quarantined rows per ingest date (columns: reason, with repaired rows marked)."""
    q = wh.table("quarantine", columns=["ingest_date", "reason", "action"])
    if q.empty:
        return q
    q = q.assign(reason=np.where(q["action"] == "repaired", "repaired: " + q["reason"], q["reason"]))
    return q.groupby(["ingest_date", "reason"]).size().unstack(fill_value=0).sort_index()
