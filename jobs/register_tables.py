"""Register every Delta table of the warehouse in a catalog, with the table and column comments
of `schemas/`, plus views of what analysts read (published runs only), so SQL uses names:

    bin/r2ec-submit jobs/register_tables.py                  # local Hive metastore, schema r2ec
    bin/r2ec-submit jobs/sql.py -e "SELECT * FROM r2ec.published_recommendations LIMIT 10"

By default the catalog is an embedded Hive metastore in `<warehouse>/_metastore` (Derby, one
process at a time). On a platform with its own catalog pass `--metastore none` and, where the
catalog has three levels, `--catalog`: Unity Catalog (`--catalog main`), or Glue / a shared Hive
metastore configured in the Spark settings (`spark.sql.catalogImplementation=hive` plus the
platform's client factory). Tables stay where they are (external tables over the Delta folders);
only names, comments and views are written. Re-running changes nothing that is already right:
a comment is set only when it differs, so no Delta commit is made for nothing.
"""

from __future__ import annotations

import logging

from r2ec_batch import cli, delta_io, storage
from r2ec_batch.schemas import ALL_TABLES, TableSpec
from r2ec_batch.schemas.comments import column_comment
from r2ec_batch.session import build_spark, metastore_arguments, resolve_metastore

log = logging.getLogger("register_tables")

# What analysts read, as views: the live run of each (run_date, variant) is the newest row of
# published_runs (write-audit-publish), so runs that failed their audit never show.
VIEWS = {
    "live_runs": (
        "The published run of each (run_date, variant): the newest publication.",
        "SELECT run_date, variant, max_by(run_id, published_at) AS run_id, "
        "max_by(model_version, published_at) AS model_version, max(published_at) AS published_at "
        "FROM {published_runs} GROUP BY run_date, variant"),
    "published_recommendations": (
        "Recommendations of published runs only, every variant (filter variant = 'champion' "
        "for what users see).",
        "SELECT r.* FROM {recommendations} r JOIN {live_runs} l "
        "USING (run_date, variant, run_id)"),
    "published_rationales": (
        "Rationales of published runs only, every variant.",
        "SELECT r.* FROM {rationales} r JOIN {live_runs} l USING (run_date, variant, run_id)"),
}


def _sql_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _same_location(a: str, b: str) -> bool:
    def norm(u: str) -> str:
        u = u.rstrip("/")
        return u[len("file:"):].lstrip("/") if u.startswith("file:") else u.lstrip("/")
    return norm(a) == norm(b)


def register(spark, warehouse: str, spec: TableSpec, name: str, relocate: bool) -> list[str]:
    """Create or check the external table `name` over the spec's folder; set comments that
    differ. Returns what was changed."""
    path = delta_io.table_path(warehouse, spec)
    done = []
    if spark.catalog.tableExists(name):
        where = spark.sql(f"DESCRIBE DETAIL {name}").first()["location"]
        if not _same_location(where, path):
            if not relocate:
                raise cli.JobError(f"{name} is registered at {where}, not {path}: pass "
                                   "--relocate to point the name at this warehouse")
            spark.sql(f"DROP TABLE {name}")  # external: the data stays where it is
            done.append(f"moved from {where}")
    if not spark.catalog.tableExists(name):
        spark.sql(f"CREATE TABLE {name} USING DELTA LOCATION {_sql_string(path)}")
        done.append("registered")
    if (spark.catalog.getTable(name).description or "") != spec.description:
        spark.sql(f"ALTER TABLE {name} SET TBLPROPERTIES ('comment' = "
                  f"{_sql_string(spec.description)})")
        done.append("table comment")
    changed = []
    for col in spark.catalog.listColumns(name):
        want = column_comment(spec, col.name) if col.name in spec.column_names else None
        if want is not None and (col.description or "") != want:
            changed.append(f"`{col.name}` COMMENT {_sql_string(want)}")
    if changed:
        # all of them in one statement: one Delta commit, where one per column was ~0.5 s each
        spark.sql(f"ALTER TABLE {name} ALTER COLUMN " + ", ".join(changed))
        done.append(f"{len(changed)} column comment(s)")
    return done


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__.split("\n\n")[0])
    metastore_arguments(p)
    p.add_argument("--relocate", action="store_true",
                   help="re-point names registered at another location to this warehouse")
    a = p.parse_args(argv)
    cli.setup_logging(a.verbose)
    warehouse = storage.resolve(a.warehouse)
    metastore = resolve_metastore(a.metastore, warehouse)
    spark = build_spark("r2ec-register-tables", metastore=metastore)
    ns = f"`{a.catalog}`.`{a.schema}`" if a.catalog else f"`{a.schema}`"
    spark.sql(f"CREATE SCHEMA IF NOT EXISTS {ns} COMMENT "
              f"{_sql_string('r2ec-batch tables of ' + warehouse)}")
    names = {}
    for spec in ALL_TABLES.values():
        if not delta_io.exists(spark, warehouse, spec):
            log.info("%s: not written yet, not registered", spec.name)
            continue
        names[spec.name] = f"{ns}.`{spec.name}`"
        done = register(spark, warehouse, spec, names[spec.name], a.relocate)
        log.info("%s: %s", names[spec.name], ", ".join(done) or "already up to date")
    for view, (comment, query) in VIEWS.items():
        needs = {t for t in ALL_TABLES if "{" + t + "}" in query}
        if not needs <= names.keys():
            continue
        names[view] = f"{ns}.`{view}`"
        spark.sql(f"CREATE OR REPLACE VIEW {names[view]} COMMENT {_sql_string(comment)} AS "
                  + query.format(**names))
        log.info("%s: view (re)created", names[view])
    print(f"{len(names)} names in {ns}" + (f" (metastore {metastore})" if metastore else "")
          + ": " + ", ".join(sorted(names)))
    return 0


if __name__ == "__main__":
    cli.run(main)
