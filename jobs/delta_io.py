"""Reading and writing the product's Delta tables, always through `schemas/`.

Each write is one Delta commit, so a killed job leaves the previous table version readable and
intact (Delta only exposes a version once its log entry is committed; files of an unfinished
write are orphans that no reader sees). The three write modes match DESIGN.md's "how" column:

- `merge_into`: upsert on the table key (idempotent re-ingest, registry, evaluations);
- `replace_partition`: `replaceWhere` on a partition value (re-running a date replaces that date);
- `overwrite`: the whole table (training samples for a dataset version).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import MapType

from schemas import TableSpec, conform

log = logging.getLogger(__name__)


class TableMissing(RuntimeError):
    """A job needs a table that no earlier job has written."""


def table_path(warehouse: str | Path, spec: TableSpec) -> str:
    return str(Path(warehouse).resolve() / spec.name)


def exists(spark: SparkSession, warehouse: str | Path, spec: TableSpec) -> bool:
    return DeltaTable.isDeltaTable(spark, table_path(warehouse, spec))


def read(spark: SparkSession, warehouse: str | Path, spec: TableSpec) -> DataFrame:
    path = table_path(warehouse, spec)
    if not DeltaTable.isDeltaTable(spark, path):
        raise TableMissing(f"table {spec.name!r} does not exist at {path}; run the job that writes it")
    return spark.read.format("delta").load(path)


def ensure_table(spark: SparkSession, warehouse: str | Path, spec: TableSpec) -> DeltaTable:
    """Create the (empty) table with its schema and partitioning if it is not there yet."""
    builder = (
        DeltaTable.createIfNotExists(spark)
        .location(table_path(warehouse, spec))
        .addColumns(spec.schema)
    )
    if spec.partition_by:
        builder = builder.partitionedBy(*spec.partition_by)
    return builder.execute()


def _slow_identity(seconds: float):
    def fn(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for b in batches:
            time.sleep(seconds)
            yield b

    return fn


def _maybe_slowed(df: DataFrame) -> DataFrame:
    """Test hook: R2EC_FAULT_SLOW_WRITE_S stretches the data-writing stage so that a test can
    SIGKILL a job while its files are being written (before the Delta commit)."""
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
    df = _maybe_slowed(df)
    on = " AND ".join(f"t.`{k}` = s.`{k}`" for k in spec.key)
    m = dt.alias("t").merge(df.alias("s"), on)
    if update_columns:
        m = m.whenMatchedUpdate(set={c: f"s.`{c}`" for c in update_columns})
    m.whenNotMatchedInsertAll().execute()
    metrics = _last_commit_metrics(dt)
    log.info("%s: MERGE -> version %s %s", spec.name, metrics["version"], _short(metrics))
    return metrics


def replace_partition(
    df: DataFrame, spec: TableSpec, warehouse: str | Path, column: str, value: str
) -> dict[str, str]:
    """Atomically replace the rows where `column = value` (one commit, `replaceWhere`)."""
    if column not in spec.partition_by:
        raise ValueError(f"{spec.name}: {column!r} is not a partition column")
    return replace_where(df, spec, warehouse, {column: value})


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
    predicate = " AND ".join(f"`{c}` = '{v}'" for c, v in where.items())
    (
        _maybe_slowed(df)
        .write.format("delta")
        .mode("overwrite")
        .option("replaceWhere", predicate)
        .save(table_path(warehouse, spec))
    )
    metrics = _last_commit_metrics(DeltaTable.forPath(spark, table_path(warehouse, spec)))
    log.info("%s: replaced %s -> version %s %s", spec.name, predicate, metrics["version"],
             _short(metrics))
    return metrics


def overwrite(df: DataFrame, spec: TableSpec, warehouse: str | Path) -> dict[str, str]:
    """Atomically replace the whole table (one commit)."""
    df = conform(df, spec)
    spark = df.sparkSession
    ensure_table(spark, warehouse, spec)
    (
        _maybe_slowed(df)
        .write.format("delta")
        .mode("overwrite")
        .save(table_path(warehouse, spec))
    )
    metrics = _last_commit_metrics(DeltaTable.forPath(spark, table_path(warehouse, spec)))
    log.info("%s: overwritten -> version %s %s", spec.name, metrics["version"], _short(metrics))
    return metrics


def _short(metrics: dict[str, str]) -> str:
    keep = ("numOutputRows", "numTargetRowsInserted", "numTargetRowsUpdated",
            "numTargetRowsDeleted", "numRemovedFiles", "numAddedFiles")
    return "(" + ", ".join(f"{k}={metrics[k]}" for k in keep if k in metrics) + ")"
