"""Delta upkeep, as `jobs/maintain_tables.py` asks for it: the table properties that keep the
promised time travel, compaction (Z-ordered by each table's `cluster_by`), VACUUM within the
retention, and the deletion of scoring runs that were never published and are past their window.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from delta.tables import DeltaTable
from pyspark.sql import SparkSession

from r2ec_batch import delta_io, publishing
from r2ec_batch.schemas import ALL_TABLES, TableSpec

log = logging.getLogger(__name__)
DELTA_DEFAULT_HOURS = 168  # Delta's own default retention, and what the README promises
RETENTION_CHECK = "spark.databricks.delta.retentionDurationCheck.enabled"


def maintain_all(spark: SparkSession, warehouse: str, names: list[str], retention_hours: float,
                 optimize: bool = True, allow_short_retention: bool = False,
                 unpublished_days: float | None = None) -> tuple[int | None, list[dict]]:
    """(scoring runs deleted, or None when neither scoring table was asked for; one summary
    per table maintained). Tables not in the warehouse are skipped."""
    days = (unpublished_days if unpublished_days is not None
            else publishing.UNPUBLISHED_RETENTION.total_seconds() / 86400)
    dropped = None
    if {"recommendations", "rationales"} & set(names):
        dropped = publishing.drop_unpublished(spark, warehouse, timedelta(days=days))
    # Delta refuses a VACUUM below its default unless this check is off, for this job only.
    spark.conf.set(RETENTION_CHECK, str(not allow_short_retention).lower())
    rows = []
    try:
        for name in names:
            spec = ALL_TABLES[name]
            if not delta_io.exists(spark, warehouse, spec):
                log.info("%s: not in the warehouse; skipped", name)
                continue
            rows.append(maintain(spark, warehouse, spec, retention_hours, optimize))
            log.info("%s", rows[-1])
    finally:
        spark.conf.unset(RETENTION_CHECK)
    return dropped, rows


def _properties(retention_hours: float) -> dict[str, str]:
    # The log must outlive the data files, or time travel loses its versions first (Delta's
    # log retention default is 30 days).
    log_hours = max(retention_hours, 30 * 24)
    return {"delta.deletedFileRetentionDuration": f"interval {retention_hours:g} hours",
            "delta.logRetentionDuration": f"interval {log_hours:g} hours"}


def maintain(spark: SparkSession, warehouse: str, spec: TableSpec, retention_hours: float,
             optimize: bool) -> dict:
    """One table: properties (only when they differ), optimize, VACUUM."""
    path = delta_io.table_path(warehouse, spec)
    table = DeltaTable.forPath(spark, path)
    before = table.detail().select("numFiles").first()["numFiles"]
    have = table.detail().select("properties").first()["properties"] or {}
    wanted = _properties(retention_hours)
    changed = {k: v for k, v in wanted.items() if have.get(k) != v}
    if changed:
        sets = ", ".join(f"'{k}' = '{v}'" for k, v in changed.items())
        delta_io.with_conflict_retry(
            lambda: spark.sql(f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES ({sets})"),
            f"{spec.name} properties")
    if optimize:
        opt = table.optimize()
        delta_io.with_conflict_retry(
            lambda: opt.executeZOrderBy(*spec.cluster_by) if spec.cluster_by
            else opt.executeCompaction(), f"{spec.name} optimize")
    table.vacuum(retention_hours)
    after = DeltaTable.forPath(spark, path).detail().select("numFiles").first()["numFiles"]
    return {"table": spec.name, "files_before": before, "files_after": after,
            "zorder": ",".join(spec.cluster_by) or "-", "properties_set": len(changed)}
