"""The `model_registry` table: every trained model, and which one is the champion.

Scoring resolves `--model champion` here. Promotion is one MERGE that sets the new champion and
retires the old one in the same commit, so readers never see zero or two champions.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from pyspark.sql import Row, SparkSession
from pyspark.sql import functions as F

from r2ec import checkpoint
from r2ec_batch import delta_io, storage
from r2ec_batch.artifacts import ModelRef, open_model
from r2ec_batch.cli import JobError
from r2ec_batch.schemas import MODEL_REGISTRY, conform


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def rows(spark: SparkSession, warehouse) -> list[Row]:
    if not delta_io.exists(spark, warehouse, MODEL_REGISTRY):
        return []
    return delta_io.read(spark, warehouse, MODEL_REGISTRY).collect()


def champion(spark: SparkSession, warehouse) -> Row | None:
    champs = [r for r in rows(spark, warehouse) if r["status"] == "champion"]
    if len(champs) > 1:
        raise JobError(f"model_registry has {len(champs)} champions; fix it before scoring")
    return champs[0] if champs else None


def resolve(spark: SparkSession, warehouse, model: str) -> tuple[str, str | None]:
    """(location, registered version): `champion` -> the champion's folder and the version the
    registry promoted; anything else is a checkpoint location (a folder or a URI), whose
    version is whatever it holds (None here)."""
    if model != "champion":
        return storage.resolve(model), None
    row = champion(spark, warehouse)
    if row is None:
        raise JobError("no champion in model_registry; run `make run` or jobs/build_model.py "
                       "--register champion, or pass --model DIR")
    return row["path"], checkpoint.check_version(row["model_version"], "model_registry")


def resolve_verified(spark: SparkSession, warehouse, model: str) -> ModelRef:
    """`resolve`, then a local copy (remote checkpoints are cached by version) whose files are
    checked against the manifest. The champion is a version, not a folder: a folder that now
    holds another version (rebuilt, or a fine-tune rewrote it) is refused, naming both. A
    missing or corrupted checkpoint is a one-line job error, before any work starts."""
    location, version = resolve(spark, warehouse, model)
    try:
        return open_model(location, expect_version=version)
    except (checkpoint.CheckpointError, FileNotFoundError) as e:
        raise JobError(f"champion: {e}" if version else str(e)) from e


UPDATED = ["path", "status", "valid_ndcg10", "metrics_json", "config_json", "updated_at"]


def register(spark: SparkSession, warehouse, manifest: dict, path: str | Path, status: str,
             valid_ndcg10: float | None = None, metrics: dict | None = None,
             config: dict | None = None) -> None:
    """Add or update one model's row. status 'champion' also retires the current champion in
    the same commit: one MERGE whose `not matched by source` clause retires every other row
    that is champion *in the snapshot the MERGE itself reads*. Delta refuses to commit it when
    another promotion committed after that read (the MERGE reads the whole table), and the
    retry runs against the new snapshot, so exactly one champion remains under concurrent
    promotions: the last to commit. (Computing the retirements from an earlier read let two
    concurrent promotions each retire only the old champion, and both stayed champion.)"""
    if status not in ("candidate", "champion", "rejected", "retired"):
        raise ValueError(f"bad status {status!r}")
    version = checkpoint.check_version(manifest["model_version"], "register")
    now = _now()
    old = next((r for r in rows(spark, warehouse) if r["model_version"] == version), None)
    new = Row(
        model_version=version, path=storage.resolve(path), status=status,
        parent_version=manifest.get("parent_version"), stage=manifest.get("stage", "unknown"),
        valid_ndcg10=valid_ndcg10 if valid_ndcg10 is not None else (old["valid_ndcg10"] if old else None),
        metrics_json=json.dumps(metrics) if metrics else (old["metrics_json"] if old else None),
        config_json=json.dumps(config) if config else (old["config_json"] if old else None),
        created_at=old["created_at"] if old else now, updated_at=now,
    )
    df = spark.createDataFrame([new], schema=MODEL_REGISTRY.schema)
    if status != "champion":
        delta_io.merge_into(df, MODEL_REGISTRY, warehouse, update_columns=UPDATED)
        return
    dt = delta_io.ensure_table(spark, warehouse, MODEL_REGISTRY)
    source = delta_io.slowed(conform(df, MODEL_REGISTRY))

    def merge() -> None:
        (dt.alias("t").merge(source.alias("s"), "t.model_version = s.model_version")
         .whenMatchedUpdate(set={c: f"s.`{c}`" for c in UPDATED})
         .whenNotMatchedInsertAll()
         .whenNotMatchedBySourceUpdate(condition="t.status = 'champion'", set={
             "status": F.lit("retired"), "updated_at": F.lit(now)})
         .execute())

    delta_io.with_conflict_retry(merge, "model_registry promotion", attempts=6)
