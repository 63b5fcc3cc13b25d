"""Reading and writing the product's Delta tables, always through `schemas/`.

Each write is one Delta commit, so a killed job leaves the previous table version readable and
intact (Delta only exposes a version once its log entry is committed; files of an unfinished
write are orphans that no reader sees). The three write modes, one per kind of table:

- `merge_into`: upsert on the table key (idempotent re-ingest, registry, evaluations);
- `replace_partition`: `replaceWhere` on a partition value (re-running a date replaces that date);
- `overwrite`: the whole table (training samples for a dataset version).
"""

from __future__ import annotations

import logging
import os
import random
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import MapType

from r2ec_batch import storage
from r2ec_batch.schemas import SchemaMismatch, TableSpec, conform

log = logging.getLogger(__name__)


class TableMissing(RuntimeError):
    """A job needs a table that no earlier job has written."""


class TableOutdated(RuntimeError):
    """A table on disk has an older layout than `schemas/` declares (written by an earlier
    version); the message says what to run. Nothing is written to it until then."""


# What to do when a table has an older layout. Derived tables are rebuilt by the job that
# writes them; `interactions` is migrated in place by ingest (see `add_missing_columns`).
_UPGRADE_HINTS = {
    "interactions": "re-run jobs/ingest.py on the same files: it adds the source-order columns "
                    "and fills them, nothing else changes",
    "quarantine": "re-run jobs/ingest.py: it adds the repair columns (action, raw_bytes_hex) "
                  "and nothing else changes",
    "recommendations": "run jobs/score.py or jobs/publish.py once: they add run_id/variant "
                       "and publish the old rows as run legacy-<run_date>",
    "rationales": "run jobs/score.py or jobs/publish.py once: they add run_id/variant and "
                  "publish the old rows as run legacy-<run_date>",
    "evaluations": "run jobs/evaluate.py once: it adds the data_version column, nothing else "
                   "changes",
    "published_runs": "run jobs/publish.py or jobs/score.py once: they add the error_users "
                      "column, nothing else changes",
    "eval_rankings": "its sample ids belong to an older sample numbering: move the folder aside "
                     "and re-run jobs/evaluate.py for the models you need",
}


def table_path(warehouse: str | Path, spec: TableSpec) -> str:
    """The table's location: WAREHOUSE/<name>, where the warehouse is a folder or any URI that
    Spark's Hadoop filesystems read (s3a://, abfss://, gs://, hdfs://)."""
    return storage.join(warehouse, spec.name)


def exists(spark: SparkSession, warehouse: str | Path, spec: TableSpec) -> bool:
    return DeltaTable.isDeltaTable(spark, table_path(warehouse, spec))


def read(spark: SparkSession, warehouse: str | Path, spec: TableSpec,
         version: int | None = None) -> DataFrame:
    """The table as a DataFrame, its layout checked against `spec`; `version`: that snapshot
    (Delta time travel), so a job reads one version however the table moves meanwhile."""
    path = table_path(warehouse, spec)
    if not DeltaTable.isDeltaTable(spark, path):
        raise TableMissing(f"table {spec.name!r} does not exist at {path}; run the job that writes it")
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    table = reader.load(path)
    check_layout(spark, warehouse, spec, table)
    return table


def version(spark: SparkSession, warehouse: str | Path, spec: TableSpec) -> int:
    """The table's current Delta version (read it with versionAsOf to stay on that snapshot)."""
    read(spark, warehouse, spec)  # exists and has this version's layout
    return int(DeltaTable.forPath(spark, table_path(warehouse, spec)).history(1).first()["version"])


def layout_differences(spark: SparkSession, warehouse: str | Path, spec: TableSpec) -> list[str]:
    """How the table on disk differs from `spec` (missing columns, other types); [] if it is
    the same or does not exist. Extra columns on disk are not a difference a reader minds."""
    if not exists(spark, warehouse, spec):
        return []
    return _differences(spark.read.format("delta").load(table_path(warehouse, spec)), spec)


def _differences(table: DataFrame, spec: TableSpec) -> list[str]:
    have = {f.name: f.dataType for f in table.schema.fields}
    out = []
    for f in spec.schema.fields:
        if f.name not in have:
            out.append(f"no column {f.name!r}")
        elif have[f.name].simpleString() != f.dataType.simpleString():
            out.append(f"{f.name!r} is {have[f.name].simpleString()}, "
                       f"this version has {f.dataType.simpleString()}")
    return out


def check_layout(spark: SparkSession, warehouse: str | Path, spec: TableSpec,
                 table: DataFrame | None = None) -> None:
    """Raise TableOutdated (one line, with what to run) when the table has an older layout."""
    diff = _differences(table, spec) if table is not None else \
        layout_differences(spark, warehouse, spec)
    if diff:
        hint = _UPGRADE_HINTS.get(spec.name, f"rebuild it with the job that writes {spec.name}")
        raise TableOutdated(f"table {spec.name!r} at {table_path(warehouse, spec)} has an older "
                            f"layout ({'; '.join(diff)}): {hint}")


def add_missing_columns(spark: SparkSession, warehouse: str | Path, spec: TableSpec) -> list[str]:
    """Additive migration: add the nullable columns `spec` has and the table lacks (one Delta
    commit, no data rewritten). Returns the added names; a type change is not migrated here."""
    if not exists(spark, warehouse, spec):
        return []
    have = set(spark.read.format("delta").load(table_path(warehouse, spec)).columns)
    new = [f for f in spec.schema.fields if f.name not in have]
    if not new:
        return []
    if any(not f.nullable for f in new):
        raise TableOutdated(f"table {spec.name!r}: cannot add non-nullable column(s) in place")
    cols = ", ".join(f"`{f.name}` {f.dataType.simpleString()}" for f in new)
    spark.sql(f"ALTER TABLE delta.`{table_path(warehouse, spec)}` ADD COLUMNS ({cols})")
    log.warning("%s: migrated, added column(s) %s", spec.name, ", ".join(f.name for f in new))
    return [f.name for f in new]


def ensure_table(spark: SparkSession, warehouse: str | Path, spec: TableSpec) -> DeltaTable:
    """Create the (empty) table with its schema and partitioning if it is not there yet; refuse
    (TableOutdated) to write into a table of an older layout."""
    check_layout(spark, warehouse, spec)
    builder = (
        DeltaTable.createIfNotExists(spark)
        .location(table_path(warehouse, spec))
        .addColumns(spec.schema)
    )
    if spec.partition_by:
        builder = builder.partitionedBy(*spec.partition_by)
    try:
        return builder.execute()
    except Exception:  # noqa: BLE001 - decided by what is on disk now
        # Two jobs creating the same new table at once (the fine-tuning DAG's parallel
        # evaluations): both see no table, both try to commit version 0, and the loser fails
        # with ProtocolChanged or FileAlreadyExists depending on timing. The winner created the
        # same table, so the loser carries on with it. The winner's folder can exist before its
        # first commit does ("location is not empty and not a Delta table"), so wait a while for
        # that commit; a location that never becomes a table is a real error.
        for _ in range(40):
            # this JVM cached the table's log as empty when its own create began: drop that
            spark._jvm.org.apache.spark.sql.delta.DeltaLog.clearCache()
            if DeltaTable.isDeltaTable(spark, table_path(warehouse, spec)):
                log.info("%s: created by a concurrent job; using it", spec.name)
                return DeltaTable.forPath(spark, table_path(warehouse, spec))
            time.sleep(0.5)
        raise


def _is_conflict(e: Exception) -> bool:
    text = f"{type(e).__name__} {e}"
    return "ConcurrentAppend" in text or "ConcurrentDelete" in text or "DELTA_CONCURRENT" in text \
        or "ConcurrentTransaction" in text or "MetadataChanged" in text


def with_conflict_retry(write, what: str, attempts: int = 4):
    """Run a Delta write again when another writer's commit conflicted with it (optimistic
    concurrency: the loser must re-read and retry). Our writes are idempotent replacements, so
    a retry gives the same table; backoff 2, 4, 8 s with jitter."""
    for attempt in range(1, attempts + 1):
        try:
            return write()
        except Exception as e:  # noqa: BLE001 - only Delta's conflicts are retried
            if attempt == attempts or not _is_conflict(e):
                raise
            wait = 2 ** attempt * (0.5 + random.random())
            log.warning("%s: concurrent Delta commit conflicted (attempt %d of %d); retrying in "
                        "%.1f s", what, attempt, attempts, wait)
            time.sleep(wait)


def _slow_identity(seconds: float):
    def fn(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for b in batches:
            time.sleep(seconds)
            yield b

    return fn


def _held_identity(path: str):
    def fn(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        while os.path.exists(path):
            time.sleep(0.2)
        yield from batches

    return fn


def slowed(df: DataFrame, table: str | None = None) -> DataFrame:
    """Test hooks, inside a write's transaction (after it read its snapshot, before its
    commit). R2EC_FAULT_SLOW_WRITE_S stretches the data-writing stage so that a test can
    SIGKILL a job while its files are being written. R2EC_FAULT_HOLD_WRITE=TABLE:FILE holds
    the writes of TABLE while FILE exists, so that a test can hold two jobs' transactions open
    at once and then let both commit."""
    hold = os.environ.get("R2EC_FAULT_HOLD_WRITE", "")
    if hold and table is not None and hold.split(":", 1)[0] == table:
        path = hold.split(":", 1)[1]
        log.warning("R2EC_FAULT_HOLD_WRITE: holding the write of %s while %s exists", table, path)
        df = df.mapInPandas(_held_identity(path), df.schema)
    seconds = float(os.environ.get("R2EC_FAULT_SLOW_WRITE_S", "0") or 0)
    if seconds <= 0:
        return df
    log.warning("R2EC_FAULT_SLOW_WRITE_S=%s: slowing this write down on purpose", seconds)
    return df.repartition(4).mapInPandas(_slow_identity(seconds), df.schema)


def _last_commit_metrics(dt: DeltaTable) -> dict[str, str]:
    row = dt.history(1).select("version", "operation", "operationMetrics").first()
    metrics = dict(row["operationMetrics"] or {})
    metrics["version"] = str(row["version"])
    metrics["operation"] = row["operation"]
    return metrics


def merge_into(
    df: DataFrame,
    spec: TableSpec,
    warehouse: str | Path,
    update_columns: list[str] | None = None,
) -> dict[str, str]:
    """Upsert on `spec.key`. Rows whose key is new are inserted; when `update_columns` is given,
    an existing row is updated if one of those columns differs. Rows already present unchanged
    are dropped before the MERGE, so an identical re-run commits nothing at all (no new table
    version, no rewritten files). Returns the commit's metrics (numTargetRowsInserted, ...)."""
    df = conform(df, spec)
    spark = df.sparkSession
    dt = ensure_table(spark, warehouse, spec)

    def val(frame: DataFrame, c: str):  # maps cannot be compared in Spark SQL; their JSON can
        is_map = isinstance(spec.schema[c].dataType, MapType)
        return F.to_json(frame[c]) if is_map else frame[c]

    compared = list(spec.key) + list(update_columns or [])
    target = dt.toDF().select(*compared)
    same = [val(df, c).eqNullSafe(val(target, c)) for c in compared]
    df = df.join(target, same, "left_anti")
    if df.isEmpty():
        version = str(dt.history(1).first()["version"])
        log.info("%s: nothing new or changed, no commit (version %s)", spec.name, version)
        return {"version": version, "numTargetRowsInserted": "0", "numTargetRowsUpdated": "0"}
    df = slowed(df, spec.name)
    on = " AND ".join(f"t.`{k}` = s.`{k}`" for k in spec.key)

    def run_merge() -> None:
        m = dt.alias("t").merge(df.alias("s"), on)
        if update_columns:
            m = m.whenMatchedUpdate(set={c: f"s.`{c}`" for c in update_columns})
        m.whenNotMatchedInsertAll().execute()

    with_conflict_retry(run_merge, f"{spec.name} MERGE")
    metrics = _last_commit_metrics(dt)
    log.info("%s: MERGE -> version %s %s", spec.name, metrics["version"], _short(metrics))
    return metrics


def update_row(spark: SparkSession, spec: TableSpec, warehouse: str | Path, key: dict,
               values: dict) -> dict[str, str]:
    """Set `values` on the one row whose key is `key`, in one commit (a Delta UPDATE: a scan
    for the file that holds the row, one rewrite). For a row the job itself appended earlier,
    such as a ledger row completed at its end: `merge_into` would first anti-join and count to
    skip an unchanged row, which cannot happen here (measured: 2.2 s -> ~1 s on a small ledger).
    A row that is not there (the table was rewritten since) is written whole by `merge_into`."""
    fields = {f.name: f for f in spec.schema.fields}
    if set(key) != set(spec.key):
        raise ValueError(f"{spec.name}: key {sorted(key)} is not the table's key {spec.key}")
    problems = [f"unknown column {c!r}" for c in values if c not in fields or c in key]
    problems += [f"null value in non-nullable column {c!r}" for c, v in values.items()
                 if v is None and c in fields and not fields[c].nullable]
    if problems:
        raise SchemaMismatch(f"{spec.name}: " + "; ".join(problems))
    dt = ensure_table(spark, warehouse, spec)
    before = int(dt.history(1).first()["version"])  # an UPDATE that matches nothing commits nothing
    condition = None
    for k, v in key.items():
        term = F.col(f"`{k}`") == F.lit(v).cast(fields[k].dataType)
        condition = term if condition is None else condition & term
    assignments = {f"`{c}`": F.lit(v).cast(fields[c].dataType) for c, v in values.items()}
    with_conflict_retry(lambda: dt.update(condition, assignments), f"{spec.name} update")
    metrics = _last_commit_metrics(dt)
    if int(metrics["version"]) > before and metrics.get("numUpdatedRows") == "1":
        log.info("%s: updated -> version %s (1 row)", spec.name, metrics["version"])
        return metrics
    log.warning("%s: no row %s to update; writing it whole", spec.name, key)
    whole = {**{f: None for f in fields}, **key, **values}
    return merge_into(spark.createDataFrame([tuple(whole[f] for f in fields)], spec.schema), spec,
                      warehouse, update_columns=list(values))


def delete_matching(keys: DataFrame, spec: TableSpec, warehouse: str | Path,
                    on: list[str]) -> int:
    """Delete the rows of the table that match a row of `keys` on the columns `on` (one MERGE
    commit, none when nothing matches). Returns the number of rows deleted."""
    spark = keys.sparkSession
    if keys.isEmpty():
        return 0
    dt = ensure_table(spark, warehouse, spec)
    cond = " AND ".join(f"t.`{c}` = s.`{c}`" for c in on)
    with_conflict_retry(lambda: dt.alias("t").merge(keys.alias("s"), cond)
                        .whenMatchedDelete().execute(), f"{spec.name} delete")
    metrics = _last_commit_metrics(dt)
    log.info("%s: deleted -> version %s %s", spec.name, metrics["version"], _short(metrics))
    return int(metrics.get("numTargetRowsDeleted", 0))


def replace_partition(
    df: DataFrame, spec: TableSpec, warehouse: str | Path, column: str, value: str
) -> dict[str, str]:
    """Atomically replace the rows where `column = value` (one commit, `replaceWhere`)."""
    if column not in spec.partition_by:
        raise ValueError(f"{spec.name}: {column!r} is not a partition column")
    return replace_where(df, spec, warehouse, {column: value})


def sql_identifier(name: str) -> str:
    """A column name as a quoted SQL identifier; only the schemas' own names are accepted."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", name):
        raise ValueError(f"not a column name: {name!r}")
    return f"`{name}`"


def sql_string(value: object) -> str:
    """A value as a Spark SQL string literal: backslashes and quotes escaped, so that no value
    can end the literal and add to the predicate (callers validate values too; this does not
    rely on it)."""
    text = str(value)
    if "\x00" in text:
        raise ValueError("a NUL character in a predicate value")
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def replace_where(
    df: DataFrame, spec: TableSpec, warehouse: str | Path, where: dict[str, str]
) -> dict[str, str]:
    """Atomically replace the rows matching every `column = value` of `where` (one commit)."""
    df = conform(df, spec)
    cond = F.lit(True)
    for column, value in where.items():
        cond = cond & (F.col(column) == F.lit(value).cast(spec.schema[column].dataType))
    if df.filter(~cond).limit(1).count():
        raise ValueError(f"{spec.name}: rows outside {where} in a replaceWhere write")
    spark = df.sparkSession
    ensure_table(spark, warehouse, spec)
    predicate = " AND ".join(f"{sql_identifier(c)} = {sql_string(v)}" for c, v in where.items())
    with_conflict_retry(lambda: (
        slowed(df, spec.name)
        .write.format("delta")
        .mode("overwrite")
        .option("replaceWhere", predicate)
        .save(table_path(warehouse, spec))
    ), f"{spec.name} ({predicate})")
    metrics = _last_commit_metrics(DeltaTable.forPath(spark, table_path(warehouse, spec)))
    log.info("%s: replaced %s -> version %s %s", spec.name, predicate, metrics["version"],
             _short(metrics))
    return metrics


def append(df: DataFrame, spec: TableSpec, warehouse: str | Path) -> dict[str, str]:
    """Add rows in one commit. Blind appends never conflict with other writers, which is why
    the tables that several jobs write at once (published_runs, evaluations) are append-only."""
    df = conform(df, spec)
    spark = df.sparkSession
    ensure_table(spark, warehouse, spec)
    with_conflict_retry(lambda: slowed(df, spec.name).write.format("delta").mode("append")
                        .save(table_path(warehouse, spec)), f"{spec.name} append")
    metrics = _last_commit_metrics(DeltaTable.forPath(spark, table_path(warehouse, spec)))
    log.info("%s: appended -> version %s %s", spec.name, metrics["version"], _short(metrics))
    return metrics


def overwrite(df: DataFrame, spec: TableSpec, warehouse: str | Path) -> dict[str, str]:
    """Atomically replace the whole table (one commit). The table is derived and rewritten
    whole, so an older layout is simply replaced by the current one (overwriteSchema)."""
    df = conform(df, spec)
    spark = df.sparkSession
    writer = slowed(df, spec.name).write.format("delta").mode("overwrite")
    if layout_differences(spark, warehouse, spec):
        log.warning("%s: older layout on disk, replaced by this version's", spec.name)
        writer = writer.option("overwriteSchema", "true")
    if spec.partition_by:
        writer = writer.partitionBy(*spec.partition_by)
    writer.save(table_path(warehouse, spec))
    metrics = _last_commit_metrics(DeltaTable.forPath(spark, table_path(warehouse, spec)))
    log.info("%s: overwritten -> version %s %s", spec.name, metrics["version"], _short(metrics))
    return metrics


def _short(metrics: dict[str, str]) -> str:
    keep = ("numOutputRows", "numTargetRowsInserted", "numTargetRowsUpdated",
            "numTargetRowsDeleted", "numRemovedFiles", "numAddedFiles")
    return "(" + ", ".join(f"{k}={metrics[k]}" for k in keep if k in metrics) + ")"
