"""Write-audit-publish for scoring output.

- **Write**: a scoring run appends its rows to `recommendations` and `rationales` under a new
  `run_id`, in the partition (run_date, variant). Nothing a reader uses changes: readers see
  only published runs.
- **Audit**: `audit` checks that run (the checks of `jobs/validate_run.py`: k distinct unseen
  items per user, one rationale each, one model; and row counts against `user_histories`).
- **Publish**: one append to `published_runs` names the run for its (run_date, variant). That
  single commit makes the run's recommendations and rationales visible together; a run that
  fails its audit, or a job killed between its two table writes, publishes nothing, and the
  previously published run stays what readers see. Appends never conflict, so a champion and
  a challenger can be published in parallel.

Readers take the newest publication per (run_date, variant) (`live_runs`) and join on it
(`published`); the README gives the same query in SQL and for deltalake.

Clean-up without a race: a run that was never published can be published only within
`PUBLISH_WINDOW` of being written, and `drop_unpublished` (run by jobs/maintain_tables.py)
deletes only never-published runs older than `UNPUBLISHED_RETENTION`, which is longer. So a
run is either publishable or deletable, never both, and no clean-up can delete a run between
its audit and its publication. (Scoring used to delete the date's unpublished runs before
writing its own; a `publish` running at that moment published a run whose rows were gone, and
readers saw none.) Runs that were published once are kept: a roll-back can always return to
one.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from r2ec.config import FALLBACK_ERROR
from r2ec_batch import cli, delta_io, registry
from r2ec_batch import live_runs as live_rule
from r2ec_batch.schemas import PUBLISHED_RUNS, RATIONALES, RECOMMENDATIONS, USER_HISTORIES, TableSpec

log = logging.getLogger(__name__)
CHAMPION = "champion"
RUN_TABLES = (RECOMMENDATIONS, RATIONALES)
PUBLISH_WINDOW = timedelta(days=3)
UNPUBLISHED_RETENTION = timedelta(days=7)
# The audit's default budget of users scored with an error: 0.1%, a few users of a million-user
# night (a strange title, one prompt too long), never a systemic fault.
MAX_ERROR_RATE = 0.001


def new_run_id(now: datetime | None = None) -> str:
    """UTC time to the microsecond and a random suffix: unique, and newer runs sort later."""
    now = now or datetime.now(timezone.utc)
    return f"{now:%Y%m%dT%H%M%S%f}Z-{secrets.token_hex(3)}"


def run_time(run_id: str) -> datetime | None:
    """When a run was written (UTC, naive), from its id; None for 'legacy-<date>' runs."""
    try:
        return datetime.strptime(run_id.split("Z-", 1)[0], "%Y%m%dT%H%M%S%f")
    except ValueError:
        return None


def live_runs(spark: SparkSession, warehouse: str | Path) -> DataFrame:
    """The newest publication of each (run_date, variant): what readers see (the rule of
    r2ec_batch.live_runs, as a Spark window)."""
    if not delta_io.exists(spark, warehouse, PUBLISHED_RUNS):
        return spark.createDataFrame([], PUBLISHED_RUNS.schema)
    newest = Window.partitionBy(*live_rule.KEY).orderBy(F.desc(live_rule.ORDER))
    return (delta_io.read(spark, warehouse, PUBLISHED_RUNS)
            .withColumn("_n", F.row_number().over(newest)).filter("_n = 1").drop("_n"))


def published(spark: SparkSession, warehouse: str | Path, spec: TableSpec,
              variant: str | None = CHAMPION) -> DataFrame:
    """Rows of `recommendations` or `rationales` from published runs (of one variant, or all)."""
    live = live_runs(spark, warehouse).select("run_date", "variant", "run_id")
    rows = delta_io.read(spark, warehouse, spec)
    if variant is not None:
        live, rows = (x.filter(F.col("variant") == variant) for x in (live, rows))
    return rows.join(live, ["run_date", "variant", "run_id"], "left_semi")


def was_published(spark, warehouse, run_id: str) -> bool:
    return delta_io.exists(spark, warehouse, PUBLISHED_RUNS) and not delta_io.read(
        spark, warehouse, PUBLISHED_RUNS).filter(F.col("run_id") == run_id).isEmpty()


def live_run_id(spark, warehouse, run_date: date, variant: str) -> str | None:
    row = live_runs(spark, warehouse).filter(
        (F.col("run_date") == F.lit(run_date)) & (F.col("variant") == variant)).first()
    return row["run_id"] if row else None


def run_age_order(run_id):
    """A sort key of run ids by age, as a Spark column: 'legacy-<date>' runs (migrated from the
    layout before runs existed) are older than every run of the '<UTC time>Z-<hex>' form, whose
    text sorts by time. (As plain strings 'legacy-' sorted after '2026...', so the newest run of
    a migrated date was taken to be the legacy one.)"""
    col = F.col(run_id) if isinstance(run_id, str) else run_id
    return F.when(col.startswith("legacy-"), F.concat(F.lit("0"), col)).otherwise(
        F.concat(F.lit("1"), col))


def newest_run_id(spark, warehouse, run_date: date, variant: str) -> str | None:
    """The latest run written for (run_date, variant), published or not."""
    if not delta_io.exists(spark, warehouse, RECOMMENDATIONS):
        return None
    row = (delta_io.read(spark, warehouse, RECOMMENDATIONS)
           .filter((F.col("run_date") == F.lit(run_date)) & (F.col("variant") == variant))
           .select("run_id").distinct().orderBy(run_age_order("run_id").desc()).first())
    return row[0] if row else None


def drop_unpublished(spark, warehouse, older_than: timedelta = UNPUBLISHED_RETENTION,
                     now: datetime | None = None) -> int:
    """Delete the runs that were never published and were written more than `older_than` ago
    (failed audits, runs killed half-way, re-runs that were not published); returns how many
    runs went. Refuses a retention shorter than the publish window (see the module notes)."""
    if older_than <= PUBLISH_WINDOW:
        raise ValueError(f"unpublished runs must be kept longer than the publish window "
                         f"({PUBLISH_WINDOW}); got {older_than}")
    cutoff = (now or datetime.now(timezone.utc).replace(tzinfo=None)) - older_than
    ever = set()
    if delta_io.exists(spark, warehouse, PUBLISHED_RUNS):
        ever = {r[0] for r in delta_io.read(spark, warehouse, PUBLISHED_RUNS).select("run_id")
                .distinct().collect()}
    dropped = set()
    for spec in RUN_TABLES:
        if not delta_io.exists(spark, warehouse, spec):
            continue
        ids = [r[0] for r in delta_io.read(spark, warehouse, spec).select("run_id").distinct()
               .collect()]
        stale = sorted(i for i in ids if i not in ever and (run_time(i) or cutoff) < cutoff)
        if stale:  # no DELETE (and no empty commit) when there is nothing to drop
            DeltaTable.forPath(spark, delta_io.table_path(warehouse, spec)).delete(
                F.col("run_id").isin(stale))
            dropped.update(stale)
    if dropped:
        log.info("dropped %d run(s) never published and older than %s: %s", len(dropped),
                 older_than, ", ".join(sorted(dropped)[:10]))
    return len(dropped)


def audit(spark, warehouse, run_date: date, variant: str, run_id: str, as_of: date,
          top_k: int, model_version: str | None = None,
          max_error_rate: float = MAX_ERROR_RATE) -> tuple[dict[str, bool], dict]:
    """({check: passed}, counts) for one run against user_histories as of `as_of`; at most
    `max_error_rate` of the users may have been scored with an error (fallback 'error').

    Every count comes from one query: per user, what the history, the recommendations and the
    rationales hold side by side (full outer joins), then one aggregation over users. One scan
    of each table instead of one per check (a dozen Spark jobs: ~2.2 s of a small run's 9 s)."""
    def rows(spec):
        return delta_io.read(spark, warehouse, spec).filter(
            (F.col("run_date") == F.lit(run_date)) & (F.col("variant") == variant)
            & (F.col("run_id") == run_id))

    recs, rats = rows(RECOMMENDATIONS), rows(RATIONALES)
    hist = delta_io.read(spark, warehouse, USER_HISTORIES).filter(F.col("as_of_date") == F.lit(as_of))
    window = hist.select("user_id", F.explode("history_item_ids").alias("item_id")).distinct()
    per_user = (
        hist.select("user_id").distinct().withColumn("has_history", F.lit(True))
        .join(recs.groupBy("user_id").agg(
            F.count("*").alias("n"), F.countDistinct("item_id").alias("distinct"),
            F.min("rank").alias("lo"), F.max("rank").alias("hi"),
            F.collect_set("model_version").alias("rec_versions")), "user_id", "full")
        .join(rats.groupBy("user_id").agg(
            F.count("*").alias("n_rat"),
            F.sum((F.col("fallback") == FALLBACK_ERROR).cast("long")).alias("errors"),
            F.collect_set("model_version").alias("rat_versions")), "user_id", "full")
        .join(recs.join(window, ["user_id", "item_id"]).groupBy("user_id")
              .agg(F.count("*").alias("seen")), "user_id", "left"))
    has_history, has_recs, has_rat = (F.col("has_history").isNotNull(), F.col("n").isNotNull(),
                                      F.col("n_rat").isNotNull())
    bad_list = ((F.col("n") != top_k) | (F.col("distinct") != top_k) | (F.col("lo") != 1)
                | (F.col("hi") != top_k))
    t = per_user.agg(
        F.count_if(has_history).alias("users"),
        F.coalesce(F.sum("n"), F.lit(0)).alias("recs"),
        F.coalesce(F.sum("n_rat"), F.lit(0)).alias("rats"),
        F.count_if(has_history & ~has_recs).alias("users_without_recs"),
        F.count_if(has_recs & ~has_history).alias("recs_without_history"),
        F.count_if(has_recs & bad_list).alias("bad_lists"),
        F.coalesce(F.sum("seen"), F.lit(0)).alias("seen"),
        F.count_if(has_rat).alias("rat_users"),
        F.count_if(has_rat & ~has_history).alias("rats_without_history"),
        F.coalesce(F.sum("errors"), F.lit(0)).alias("errors"),
        F.array_distinct(F.flatten(F.collect_list(F.concat(
            F.coalesce("rec_versions", F.array().cast("array<string>")),
            F.coalesce("rat_versions", F.array().cast("array<string>")))))).alias("versions"),
    ).first()
    n_users, n_recs, n_rats, n_errors = t["users"], t["recs"], t["rats"], t["errors"]
    versions = set(t["versions"])
    checks = {
        f"users with recommendations == users with histories as of {as_of} ({n_users:,})":
            t["users_without_recs"] == 0 and t["recs_without_history"] == 0,
        f"recommendation rows == users x {top_k} ({n_recs:,})": n_recs == n_users * top_k,
        f"every user has exactly {top_k} distinct items ranked 1..{top_k}": t["bad_lists"] == 0,
        "no recommended item is in the user's history window": t["seen"] == 0,
        f"one rationale per user ({n_rats:,})":
            n_rats == t["rat_users"] == n_users and t["rats_without_history"] == 0,
        "all rows come from one model" + (f" ({model_version})" if model_version else ""):
            len(versions) == 1 and (model_version is None or versions == {model_version}),
        f"users scored with an error <= {max_error_rate:.2%} of users ({n_errors:,})":
            n_errors <= max_error_rate * n_users,
    }
    counts = {"users": n_users, "recommendations": n_recs, "rationales": n_rats,
              "errors": n_errors,
              "model_version": next(iter(versions)) if len(versions) == 1 else None}
    return checks, counts


def print_checks(checks: dict[str, bool]) -> bool:
    """One line per check, as the jobs print them; True when all passed."""
    for name, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {name}", flush=True)
    return all(checks.values())


def publish_if_sound(spark, warehouse, run_date: date, variant: str, run_id: str, as_of: date,
                     top_k: int, model_version: str | None, job: str,
                     max_error_rate: float = MAX_ERROR_RATE) -> int:
    """Audit the run and publish it if every check passes. Returns the job's exit status: 0
    published, 1 a check failed (printed; nothing published, readers keep the previous run).
    Under Airflow the publication records the DAG run that made it, else `job`. A run never
    published before is refused once it is older than PUBLISH_WINDOW: clean-up may delete it."""
    written = run_time(run_id)
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    if written is not None and now - written > PUBLISH_WINDOW and not was_published(
            spark, warehouse, run_id):
        raise cli.JobError(f"run {run_id} was written {now - written} ago and never published; "
                           f"runs are publishable for {PUBLISH_WINDOW} (clean-up deletes "
                           "never-published runs after that): score the date again")
    checks, counts = audit(spark, warehouse, run_date, variant, run_id, as_of, top_k, model_version,
                           max_error_rate)
    if not print_checks(checks):
        failed = sum(not ok for ok in checks.values())
        print(f"error: run {run_id} ({run_date}, {variant}) failed {failed} check(s); nothing "
              "was published, readers still see the previous run", flush=True)
        return 1
    hold = os.environ.get("R2EC_FAULT_HOLD_PUBLISH")
    if hold:  # test hook: keep the audited run unpublished while this file exists (<= 10 min)
        log.warning("R2EC_FAULT_HOLD_PUBLISH=%s: audited, holding before publishing", hold)
        print(f"audited run {run_id}; holding while {hold} exists", flush=True)
        deadline = time.time() + 600
        while os.path.exists(hold) and time.time() < deadline:
            time.sleep(0.2)
    dag_run = os.environ.get("AIRFLOW_CTX_DAG_RUN_ID")  # set by Airflow for the tasks it runs
    by = f"airflow {os.environ.get('AIRFLOW_CTX_DAG_ID', '?')} {dag_run}" if dag_run else job
    publish(spark, warehouse, run_date, variant, run_id, as_of, top_k, counts, by)
    print(f"published run {run_id} for {run_date} / {variant}: {counts['users']:,} users, "
          f"{counts['recommendations']:,} recommendations, {counts['errors']:,} scored with an "
          f"error, model {counts['model_version']}", flush=True)
    return 0


def publish(spark, warehouse, run_date: date, variant: str, run_id: str, as_of: date, top_k: int,
            counts: dict, by: str) -> dict[str, str]:
    """Make an audited run the one readers see for (run_date, variant): one append."""
    row = [(run_date, variant, run_id, counts["model_version"], as_of, top_k, counts["users"],
            counts["recommendations"], datetime.now(timezone.utc).replace(tzinfo=None), by,
            counts.get("errors"))]
    return delta_io.append(spark.createDataFrame(row, PUBLISHED_RUNS.schema), PUBLISHED_RUNS,
                           warehouse)


def migrate(spark: SparkSession, warehouse: str | Path) -> None:
    """Tables written before variants and runs existed: their rows become the published
    'champion' run 'legacy-<run_date>' of their date (rewritten once, new partitioning).
    published_runs from before error counts gets its error_users column (null for old rows)."""
    delta_io.add_missing_columns(spark, warehouse, PUBLISHED_RUNS)
    for spec in RUN_TABLES:
        if not delta_io.exists(spark, warehouse, spec):
            continue
        old = spark.read.format("delta").load(delta_io.table_path(warehouse, spec))
        if "variant" in old.columns:
            continue
        new = (old.withColumn("variant", F.lit(CHAMPION))
               .withColumn("run_id", F.concat(F.lit("legacy-"), F.col("run_date").cast("string"))))
        delta_io.overwrite(new.localCheckpoint(), spec, warehouse)  # read whole before rewriting
        log.warning("%s: migrated to runs and variants (old rows = run legacy-<date>)", spec.name)
    if not delta_io.exists(spark, warehouse, RATIONALES):
        return
    # Checked every time, not only right after the rewrite: a job stopped between the rewrite
    # and these appends publishes the rest on its next run.
    legacy = delta_io.read(spark, warehouse, RATIONALES).filter(F.col("run_id").startswith("legacy-"))
    if legacy.isEmpty():
        return
    published_ids = {r["run_id"] for r in live_runs(spark, warehouse).collect()}
    for r in legacy.groupBy("run_date", "variant", "run_id").agg(
            F.count("*").alias("users"), F.first("model_version").alias("model_version")).collect():
        if r["run_id"] in published_ids:
            continue
        n_recs = delta_io.read(spark, warehouse, RECOMMENDATIONS).filter(
            F.col("run_id") == r["run_id"]).count()
        counts = {"model_version": r["model_version"], "users": r["users"], "recommendations": n_recs}
        publish(spark, warehouse, r["run_date"], r["variant"], r["run_id"], r["run_date"],
                max(1, n_recs // max(1, r["users"])), counts, "migration")


def add_run_arguments(p) -> None:
    """The arguments that name a run, shared by jobs/validate_run.py and jobs/publish.py."""
    p.add_argument("--run-date", type=cli.iso_date, required=True)
    p.add_argument("--variant", type=cli.variant, default=CHAMPION)
    p.add_argument("--run-id", help="the run to check (default: the newest of the date/variant)")
    p.add_argument("--as-of", type=cli.iso_date, help="user_histories date (default: run date)")
    p.add_argument("--top-k", type=cli.bounded_int(1, cli.MAX_TOP_K), default=10)
    p.add_argument("--model", default=None,
                   help="model the rows must come from ('champion' or a checkpoint); default: "
                        "any one model")
    add_error_rate_argument(p)


def add_error_rate_argument(p) -> None:
    p.add_argument("--max-error-rate", type=cli.bounded_float(0.0, 1.0), default=MAX_ERROR_RATE,
                   help="the audit refuses a run in which more than this share of users was "
                        "scored with an error (popular list, fallback 'error')")


def find_run(spark, a) -> tuple[str, str | None]:
    """(run_id, required model version) from the arguments."""
    migrate(spark, a.warehouse)
    run_id = a.run_id or newest_run_id(spark, a.warehouse, a.run_date, a.variant)
    if run_id is None:
        raise cli.JobError(f"no scoring run for {a.run_date} / {a.variant}; run jobs/score.py "
                           f"--run-date {a.run_date} --variant {a.variant}")
    version = registry.resolve_verified(spark, a.warehouse, a.model).version if a.model else None
    return run_id, version
