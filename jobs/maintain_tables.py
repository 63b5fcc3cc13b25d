"""Delta upkeep of every table in the warehouse: compact small files (Z-ordered by the columns
readers filter on, `cluster_by` in schemas/), then VACUUM files that no version within the
retention needs, with table properties that keep the promised time travel.

    bin/r2ec-submit jobs/maintain_tables.py                          # all tables, 7 days kept
    bin/r2ec-submit jobs/maintain_tables.py --tables recommendations,rationales
    bin/r2ec-submit jobs/maintain_tables.py --retention-hours 720    # time travel for 30 days

Time travel (`VERSION AS OF`, deltalake's `version=`) works for every version newer than
--retention-hours: VACUUM deletes only files that were removed from the table longer ago than
that. The default, 168 hours, is Delta's own default and what the README promises. Shorter
retention is refused (a reader or a long job still on an older version would lose its files)
unless --allow-short-retention. Table properties are set only when they differ, so a re-run
commits nothing new to them; the weekly fine-tuning DAG runs this job.
"""

from __future__ import annotations

import logging

from delta.tables import DeltaTable

from r2ec_batch import cli, delta_io
from r2ec_batch.schemas import ALL_TABLES
from r2ec_batch.session import build_spark

log = logging.getLogger("maintain_tables")
DELTA_DEFAULT_HOURS = 168


def _properties(retention_hours: float) -> dict[str, str]:
    # The log must outlive the data files, or time travel loses its versions first (Delta's
    # log retention default is 30 days).
    log_hours = max(retention_hours, 30 * 24)
    return {"delta.deletedFileRetentionDuration": f"interval {retention_hours:g} hours",
            "delta.logRetentionDuration": f"interval {log_hours:g} hours"}


def maintain(spark, warehouse: str, spec, retention_hours: float, optimize: bool) -> dict:
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


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__.split("\n\n")[0])
    p.add_argument("--tables", default="", help="comma-separated table names (default: all)")
    p.add_argument("--retention-hours", type=float, default=DELTA_DEFAULT_HOURS,
                   help="time travel is kept for at least this long; VACUUM deletes older files")
    p.add_argument("--allow-short-retention", action="store_true",
                   help=f"accept --retention-hours below {DELTA_DEFAULT_HOURS} (no reader or job "
                        "may then use an older version)")
    p.add_argument("--no-optimize", action="store_true", help="VACUUM and properties only")
    a = p.parse_args(argv)
    names = [t for t in a.tables.split(",") if t] or sorted(ALL_TABLES)
    unknown = sorted(set(names) - set(ALL_TABLES))
    if unknown:
        p.error(f"unknown table(s) {', '.join(unknown)}; known: {', '.join(sorted(ALL_TABLES))}")
    if a.retention_hours < DELTA_DEFAULT_HOURS and not a.allow_short_retention:
        p.error(f"--retention-hours {a.retention_hours:g} is below {DELTA_DEFAULT_HOURS}: add "
                "--allow-short-retention if no reader uses older versions")
    cli.setup_logging(a.verbose)
    spark = build_spark("r2ec-maintain-tables")
    check = "spark.databricks.delta.retentionDurationCheck.enabled"
    spark.conf.set(check, str(not a.allow_short_retention).lower())
    rows = []
    try:
        for name in names:
            spec = ALL_TABLES[name]
            if not delta_io.exists(spark, a.warehouse, spec):
                log.info("%s: not in the warehouse; skipped", name)
                continue
            rows.append(maintain(spark, a.warehouse, spec, a.retention_hours, not a.no_optimize))
            log.info("%s", rows[-1])
    finally:
        spark.conf.unset(check)
    print(f"{'table':<18} {'files before':>12} {'after':>8}  z-order")
    for r in rows:
        print(f"{r['table']:<18} {r['files_before']:>12,} {r['files_after']:>8,}  {r['zorder']}")
    print(f"{len(rows)} table(s) maintained; time travel kept for {a.retention_hours:g} hours",
          flush=True)
    return 0


if __name__ == "__main__":
    cli.run(main)
