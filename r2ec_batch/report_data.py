"""The numbers behind the HTML report, read from the warehouse with deltalake (no Spark), the
way an analyst's notebook reads it. Every function returns a pandas frame (empty when the table
is not there yet), so the report renders whatever a warehouse already has.

Beyond-accuracy and rationale figures of published runs come from the same evaluators as
`evaluations` (`r2ec.beyond`, `r2ec.reasoning.rationale_metrics`), so the report and the
evaluation table never disagree on a definition.

Memory does not grow with the warehouse's history: the tables that grow with time
(`interactions`, `quarantine`, `eval_rankings`) are aggregated batch by batch as they are
scanned, and a published run's rows are read with its partition and run id as filters, one run
at a time and not kept; only small tables (published_runs, evaluations, the registry) and the
current run's items and histories are held whole.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from r2ec_batch import live_runs

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
            dt = live_runs.open_table(self.location, name)
            self._cache[key] = pd.DataFrame(columns=columns or []) if dt is None else \
                dt.to_pandas(columns=columns, filters=filters)
        return self._cache[key]

    def batches(self, name: str, columns: list[str], where=None):
        """The table's rows as Arrow record batches (nothing cached): for aggregates over
        tables that grow with time."""
        dt = live_runs.open_table(self.location, name)
        if dt is None:
            return iter(())
        dataset = dt.to_pyarrow_dataset()
        return dataset.scanner(columns=columns, filter=where, batch_size=65_536).to_batches()

    def item_counts(self, before: pd.Timestamp) -> dict[str, int]:
        """Interactions per item before `before` (UTC), counted batch by batch."""
        key = f"counts|{before}"
        if key not in self._cache:
            end = pa.scalar(before.to_pydatetime(), pa.timestamp("us", "UTC"))
            counts: Counter = Counter()
            for b in self.batches("interactions", ["item_id"], ds.field("ts") < end):
                vc = pc.value_counts(b.column("item_id"))
                counts.update(dict(zip(vc.field("values").to_pylist(),
                                       vc.field("counts").to_pylist(), strict=True)))
            self._cache[key] = dict(counts)
        return self._cache[key]

    def live_runs(self) -> pd.DataFrame:
        """The runs readers see (r2ec_batch.live_runs), in run_date order."""
        return live_runs.newest(self.table("published_runs"))

    def published(self, name: str, run: pd.Series) -> pd.DataFrame:
        """Rows of `recommendations` / `rationales` of one published run (not cached: a
        report reads one run after another)."""
        dt = live_runs.open_table(self.location, name)
        return pd.DataFrame() if dt is None else live_runs.run_rows(dt, run)


def sample_ndcg_se(wh: Warehouse, k: int = 10) -> dict[tuple[str, str], tuple[int, float]]:
    """(model_version, split) -> (samples, standard error of NDCG@k) from the stored rankings
    (the latest evaluation of that model on that split), accumulated batch by batch."""
    samples = wh.table("training_samples", columns=["sample_id", "split", "target_item_id"],
                       filters=[("split", "in", ["valid", "test"])])
    if samples.empty:
        return {}
    keys = zip(samples["split"], samples["sample_id"], strict=True)
    target = dict(zip(keys, samples["target_item_id"], strict=True))
    n: Counter = Counter()
    s1: Counter = Counter()
    s2: Counter = Counter()
    for b in wh.batches("eval_rankings", ["model_version", "split", "sample_id", "rank", "item_id"],
                        ds.field("rank") <= k):
        df = b.to_pandas()
        first = df[df["rank"] == 1]
        n.update(Counter(zip(first["model_version"], first["split"], strict=True)))
        hit = [target.get((sp, sid)) == item for sp, sid, item in
               zip(df["split"], df["sample_id"], df["item_id"], strict=True)]
        hits = df[hit]
        gain = 1.0 / np.log2(hits["rank"].to_numpy() + 1)
        for key, g in zip(zip(hits["model_version"], hits["split"], strict=True), gain, strict=True):
            s1[key] += g
            s2[key] += g * g
    out = {}
    for key, m in n.items():
        mean = s1[key] / m
        var = (s2[key] / m - mean * mean) * m / (m - 1) if m > 1 else float("nan")
        out[key] = (m, float(np.sqrt(max(var, 0.0) / m)) if m > 1 else float("nan"))
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
    end = pd.Timestamp(run["as_of_date"], tz="UTC") + pd.Timedelta(days=1)  # Delta ts are UTC
    counts = wh.item_counts(end)
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


def run_costs(wh: Warehouse, runs: pd.DataFrame) -> pd.DataFrame:
    """What each published run cost, from `scoring_runs` (all parts of the run added up):
    seconds per 1,000 users scored (driver wall time; task seconds of reasoning and of h_T +
    search), tokens per user, errors. Runs scored before the ledger existed are left out."""
    ledger = wh.table("scoring_runs")
    if ledger is None or ledger.empty or runs.empty:
        return pd.DataFrame()
    done = ledger[ledger["finished_at"].notna()]
    parts = done.groupby("run_id").agg(
        users=("users_scored", "sum"), wall=("wall_seconds_score", "sum"),
        read=("wall_seconds_read", "sum"), write=("wall_seconds_write", "sum"),
        reasoning=("task_seconds_reasoning", "sum"), search=("task_seconds_search", "sum"),
        tokens=("tokens_generated", "sum"), p95=("tokens_p95", "max"), errors=("errors", "sum"),
        devices=("devices", "last"))
    out = runs[["run_date", "variant", "run_id"]].merge(parts, left_on="run_id", right_index=True)
    per_k = 1000 / out["users"].clip(lower=1)
    return out.assign(
        wall_per_1k=(out["wall"] + out["read"] + out["write"]) * per_k,
        reasoning_per_1k=out["reasoning"] * per_k, search_per_1k=out["search"] * per_k,
        tokens_per_user=out["tokens"] / out["users"].clip(lower=1))


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
    """Interactions per UTC day, counted batch by batch."""
    days: Counter = Counter()
    for b in wh.batches("interactions", ["ts"]):
        vc = pc.value_counts(pc.floor_temporal(b.column("ts"), unit="day"))
        days.update(dict(zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist(),
                             strict=True)))
    if not days:
        return pd.Series(dtype="int64")
    return pd.Series(days).sort_index()


def quarantine_by_reason(wh: Warehouse) -> pd.DataFrame:
    """Quarantined rows per ingest date (columns: reason, with repaired rows marked)."""
    groups: Counter = Counter()
    for b in wh.batches("quarantine", ["ingest_date", "reason", "action"]):
        q = b.to_pandas()
        q["reason"] = np.where(q["action"] == "repaired", "repaired: " + q["reason"], q["reason"])
        groups.update(Counter(zip(q["ingest_date"], q["reason"], strict=True)))
    if not groups:
        return pd.DataFrame(columns=["ingest_date", "reason"])
    s = pd.Series(groups)
    s.index = s.index.set_names(["ingest_date", "reason"])
    return s.unstack(fill_value=0).sort_index()
