"""The text summary `jobs/report.py` prints: every Delta table's version and rows, the
champion's newest metrics (accuracy, beyond accuracy, rationales), and one user's published
recommendations with titles and rationale. Reads with deltalake (no Spark), the way an
analyst's notebook would.
"""

from __future__ import annotations

import pandas as pd

from r2ec_batch.live_runs import open_table, published
from r2ec_batch.schemas import ALL_TABLES

# Metric families, each shown as its own table.
FAMILIES = (
    ("accuracy (paper protocol: full catalogue, history masked)",
     lambda m: m.isin(["hit", "ndcg"])),
    ("beyond accuracy (r2ec.beyond)",
     lambda m: ~m.isin(["hit", "ndcg"]) & ~m.str.startswith("rationale_")),
    ("rationales", lambda m: m.str.startswith("rationale_")),
)


def _table(wh: str, name: str) -> pd.DataFrame | None:
    dt = open_table(wh, name)
    return dt.to_pandas() if dt is not None else None


def summary(wh: str, user: str | None = None) -> str:
    """The whole text report for warehouse `wh` (a resolved folder or URI)."""
    return "\n".join([*table_lines(wh), *champion_lines(wh), *user_lines(wh, user)])


def table_lines(wh: str) -> list[str]:
    lines = [f"\nDelta tables under {wh}:"]
    for name in sorted(ALL_TABLES):
        dt = open_table(wh, name)
        if dt is not None:
            lines.append(f"  {name:<18} version {dt.version():>3}  "
                         f"{dt.to_pyarrow_dataset().count_rows():>9,} rows")
    return lines


def champion_lines(wh: str) -> list[str]:
    """The champion and its newest figure of each metric (evaluations keep every run)."""
    reg = _table(wh, "model_registry")
    if reg is None or not (reg["status"] == "champion").any():
        return []
    champ = reg[reg["status"] == "champion"].iloc[0]
    lines = [f"\nchampion model: {champ['model_version']} at {champ['path']}"]
    ev = _table(wh, "evaluations")
    if ev is None:
        return lines
    ev = ev[ev["model_version"] == champ["model_version"]]
    ev = ev.sort_values("evaluated_at").groupby(["split", "mode", "metric", "k"]).tail(1)
    for title, family in FAMILIES:
        rows = family(ev["metric"])
        if not rows.any():
            continue
        t = ev[rows].pivot_table(index=["split", "mode", "n_samples"], columns=["metric", "k"],
                                 values="value")
        t.columns = [f"{m}@{k}" if k else m for m, k in t.columns]
        # many metrics, few evaluations: metrics down the page, evaluations across
        lines += [f"\n{title}:", (t if t.shape[1] <= 6 else t.T).round(4).to_string()]
    return lines


def user_lines(wh: str, user: str | None = None) -> list[str]:
    """One user's list of the newest published run (default: the first user)."""
    recs = published(wh, "recommendations", last_only=True)
    if recs is None or not len(recs):
        return []
    last = recs["run_date"].max()
    recs = recs[recs["run_date"] == last]
    user = user or sorted(recs["user_id"])[0]
    mine = recs[recs["user_id"] == user].sort_values("rank")
    items = open_table(wh, "items").to_pandas(columns=["item_id", "title"], filters=[
        ("item_id", "in", list(mine["item_id"]) or [""])])  # only the titles shown
    mine = mine.merge(items, on="item_id", how="left")
    run = mine["run_id"].iloc[0] if len(mine) else "-"
    lines = [f"\npublished champion run of {last} ({run}), user {user}:",
             mine[["rank", "item_id", "title", "score"]].to_string(index=False)]
    rats = published(wh, "rationales", last_only=True)
    if rats is not None:
        r = rats[(rats["run_date"] == last) & (rats["user_id"] == user)]
        if len(r):
            lines.append(f"rationale ({int(r.iloc[0]['tokens'])} tokens): {r.iloc[0]['text']!r}")
    return lines
