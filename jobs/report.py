"""Print where the pipeline's output is and what it says: the metrics table of the champion,
and one user's recommendations with titles and rationale; with --html, also write the HTML
report (plots of accuracy over time, list and input health, three example users; see
`r2ec_batch/report_html.py`). Reads Delta with deltalake (no Spark), the way an analyst's
notebook would.

    .venv/bin/python jobs/report.py --warehouse warehouse
    .venv/bin/python jobs/report.py --warehouse warehouse --html warehouse/_reports/latest.html
"""

from __future__ import annotations

import argparse

import pandas as pd
from deltalake import DeltaTable

from r2ec_batch import storage
from r2ec_batch.schemas import ALL_TABLES


def _table(wh: str, name: str) -> pd.DataFrame | None:
    dt = _open(wh, name)
    return dt.to_pandas() if dt is not None else None


def _open(wh: str, name: str) -> DeltaTable | None:
    uri, opts = storage.join(wh, name), storage.delta_rs_options(wh)
    return DeltaTable(uri, storage_options=opts) if DeltaTable.is_deltatable(uri, opts) else None


def published(wh: str, name: str, variant: str | None = "champion") -> pd.DataFrame | None:
    """Rows of `recommendations` / `rationales` from published runs only: the newest row of
    `published_runs` per (run_date, variant) names the run readers see (write-audit-publish)."""
    rows, runs = _table(wh, name), _table(wh, "published_runs")
    if rows is None or runs is None:
        return None
    live = (runs.sort_values("published_at").groupby(["run_date", "variant"]).tail(1)
            [["run_date", "variant", "run_id"]])
    if variant is not None:
        live = live[live["variant"] == variant]
    return rows.merge(live, on=["run_date", "variant", "run_id"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--warehouse", default="warehouse", help="a folder or a URI (s3a://bucket/wh)")
    p.add_argument("--user", help="user to show (default: the first one)")
    p.add_argument("--html", help="also write the HTML report to this file / URI")
    p.add_argument("--variant", default="champion", help="variant the HTML report is about")
    p.add_argument("--run-date", help="HTML report: the latest published run up to this date "
                                      "(YYYY-MM-DD; default: the latest)")
    a = p.parse_args(argv)
    wh = storage.resolve(a.warehouse)
    if a.html:
        from r2ec_batch.report_html import render

        html, shown = render(wh, variant=a.variant, run_date=a.run_date)
        where = storage.write_text(storage.resolve(a.html), html)
        print(f"HTML report ({len(shown['figures'])} plots, {len(html) / 1e6:.1f} MB): {where}")
    reg = _table(wh, "model_registry")
    champ = reg[reg["status"] == "champion"].iloc[0] if reg is not None and len(reg) else None
    print(f"\nDelta tables under {wh}:")
    for name in sorted(ALL_TABLES):
        dt = _open(wh, name)
        if dt is None:
            continue
        print(f"  {name:<18} version {dt.version():>3}  {dt.to_pyarrow_dataset().count_rows():>9,} rows")
    if champ is not None:
        print(f"\nchampion model: {champ['model_version']} at {champ['path']}")
        ev = _table(wh, "evaluations")
        if ev is not None:
            ev = ev[ev["model_version"] == champ["model_version"]]
            # evaluations keep every run: show the newest figure of each metric
            ev = ev.sort_values("evaluated_at").groupby(
                ["split", "mode", "metric", "k"]).tail(1)
            families = (
                ("accuracy (paper protocol: full catalogue, history masked)",
                 ev["metric"].isin(["hit", "ndcg"])),
                ("beyond accuracy (r2ec.beyond)", ~ev["metric"].isin(["hit", "ndcg"])
                 & ~ev["metric"].str.startswith("rationale_")),
                ("rationales", ev["metric"].str.startswith("rationale_")))
            for title, rows in families:
                if not rows.any():
                    continue
                t = ev[rows].pivot_table(index=["split", "mode", "n_samples"],
                                         columns=["metric", "k"], values="value")
                t.columns = [f"{m}@{k}" if k else m for m, k in t.columns]
                print(f"\n{title}:")
                # many metrics, few evaluations: metrics down the page, evaluations across
                print((t if t.shape[1] <= 6 else t.T).round(4).to_string())
    recs, rats = published(wh, "recommendations"), published(wh, "rationales")
    items = _table(wh, "items")
    if recs is not None and len(recs):
        last = recs["run_date"].max()
        recs = recs[recs["run_date"] == last]
        user = a.user or sorted(recs["user_id"])[0]
        mine = recs[recs["user_id"] == user].sort_values("rank").merge(
            items[["item_id", "title"]], on="item_id", how="left")
        print(f"\npublished champion run of {last} ({mine['run_id'].iloc[0] if len(mine) else '-'}), "
              f"user {user}:")
        print(mine[["rank", "item_id", "title", "score"]].to_string(index=False))
        if rats is not None:
            r = rats[(rats["run_date"] == last) & (rats["user_id"] == user)]
            if len(r):
                print(f"rationale ({int(r.iloc[0]['tokens'])} tokens): {r.iloc[0]['text']!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
