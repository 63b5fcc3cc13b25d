"""Which run readers see: the one rule of write-audit-publish, for Spark and deltalake readers.

A scoring run writes its rows to `recommendations` and `rationales` unpublished; `publish` audits
it and appends one row to `published_runs`. For each (run_date, variant) the row with the newest
`published_at` names the live run; re-publishing an older run (a roll-back) is one more row.
`publishing.live_runs` applies this rule with a Spark window; `newest` and `published` here
apply it to pandas frames read with deltalake (the report, an analyst's notebook, the tests).

    from r2ec_batch.live_runs import published
    recs = published("warehouse", "recommendations")          # the champion's live rows
"""

from __future__ import annotations

import pandas as pd
from deltalake import DeltaTable

from r2ec_batch import storage

# One live run per these columns of `published_runs` ...
KEY = ["run_date", "variant"]
# ... the row with the largest value of this one.
ORDER = "published_at"


def newest(runs: pd.DataFrame) -> pd.DataFrame:
    """published_runs' newest row per (run_date, variant), in run_date order."""
    if runs.empty:
        return runs
    return (runs.sort_values(ORDER).groupby(KEY).tail(1)
            .sort_values("run_date").reset_index(drop=True))


def open_table(wh: str, name: str) -> DeltaTable | None:
    """A table of the warehouse (a folder or a URI) with deltalake; None when it is not there."""
    uri, opts = storage.join(wh, name), storage.delta_rs_options(wh)
    return DeltaTable(uri, storage_options=opts) if DeltaTable.is_deltatable(uri, opts) else None


def run_rows(dt: DeltaTable, run) -> pd.DataFrame:
    """One run's rows, read with its partition and run id as filters (no other run is loaded)."""
    return dt.to_pandas(filters=[("run_date", "=", run["run_date"]),
                                 ("variant", "=", run["variant"]), ("run_id", "=", run["run_id"])])


def published(wh: str, name: str, variant: str | None = "champion",
              last_only: bool = False) -> pd.DataFrame | None:
    """Rows of `recommendations` / `rationales` of live runs only (of one variant, or all with
    None); `last_only`: the latest run date's only. None when either table is not there."""
    runs, dt = open_table(wh, "published_runs"), open_table(wh, name)
    if runs is None or dt is None:
        return None
    live = newest(runs.to_pandas())
    if variant is not None:
        live = live[live["variant"] == variant]
    if last_only and len(live):
        live = live[live["run_date"] == live["run_date"].max()]
    parts = [run_rows(dt, r) for _, r in live.iterrows()]
    return pd.concat(parts, ignore_index=True) if parts else dt.to_pandas(
        filters=[("run_id", "=", "")])
