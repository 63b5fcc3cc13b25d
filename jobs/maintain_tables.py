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

Before compacting, scoring runs that were never published and are older than
--unpublished-days (default 7: failed audits, re-runs nobody published, runs killed half-way)
are deleted from `recommendations` and `rationales`; a never-published run can be published only
within 3 days of being written, so this never races a publication. The upkeep itself is
`r2ec_batch/upkeep.py`.
"""

from __future__ import annotations

from r2ec_batch import cli, publishing
from r2ec_batch.schemas import ALL_TABLES
from r2ec_batch.session import build_spark
from r2ec_batch.upkeep import DELTA_DEFAULT_HOURS, maintain_all


def parse_args(argv):
    p = cli.parser(__doc__.split("\n\n")[0])
    p.add_argument("--tables", default="", help="comma-separated table names (default: all)")
    p.add_argument("--retention-hours", type=float, default=DELTA_DEFAULT_HOURS,
                   help="time travel is kept for at least this long; VACUUM deletes older files")
    p.add_argument("--allow-short-retention", action="store_true",
                   help=f"accept --retention-hours below {DELTA_DEFAULT_HOURS} (no reader or job "
                        "may then use an older version)")
    p.add_argument("--no-optimize", action="store_true", help="VACUUM and properties only")
    p.add_argument("--unpublished-days", type=float,
                   default=publishing.UNPUBLISHED_RETENTION.total_seconds() / 86400,
                   help="delete scoring runs never published and older than this (must exceed "
                        f"the {publishing.PUBLISH_WINDOW.days}-day publish window)")
    a = p.parse_args(argv)
    a.names = [t for t in a.tables.split(",") if t] or sorted(ALL_TABLES)
    unknown = sorted(set(a.names) - set(ALL_TABLES))
    if unknown:
        p.error(f"unknown table(s) {', '.join(unknown)}; known: {', '.join(sorted(ALL_TABLES))}")
    if a.unpublished_days * 86400 <= publishing.PUBLISH_WINDOW.total_seconds():
        p.error(f"--unpublished-days must exceed the publish window "
                f"({publishing.PUBLISH_WINDOW.days} days)")
    if a.retention_hours < DELTA_DEFAULT_HOURS and not a.allow_short_retention:
        p.error(f"--retention-hours {a.retention_hours:g} is below {DELTA_DEFAULT_HOURS}: add "
                "--allow-short-retention if no reader uses older versions")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    cli.setup_logging(a.verbose)
    dropped, rows = maintain_all(build_spark("r2ec-maintain-tables"), a.warehouse, a.names,
                                 a.retention_hours, not a.no_optimize, a.allow_short_retention,
                                 a.unpublished_days)
    if dropped is not None:
        print(f"{dropped} scoring run(s) never published and older than "
              f"{a.unpublished_days:g} days deleted", flush=True)
    print(f"{'table':<18} {'files before':>12} {'after':>8}  z-order")
    for r in rows:
        print(f"{r['table']:<18} {r['files_before']:>12,} {r['files_after']:>8,}  {r['zorder']}")
    print(f"{len(rows)} table(s) maintained; time travel kept for {a.retention_hours:g} hours",
          flush=True)
    return 0


if __name__ == "__main__":
    cli.run(main)
