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
from r2ec_batch.schemas import MODEL_REGISTRY


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


def resolve(spark: SparkSession, warehouse, model: str) -> str:
    """`champion` -> the champion's location; anything else is a checkpoint location (a folder
    or a URI)."""
    if model != "champion":
        return storage.resolve(model)
    row = champion(spark, warehouse)
    if row is None:
        raise JobError("no champion in model_registry; run `make run` or jobs/build_model.py "
                       "--register champion, or pass --model DIR")
    return row["path"]


def resolve_verified(spark: SparkSession, warehouse, model: str) -> ModelRef:
    """`resolve`, then a local copy (remote checkpoints are cached by version) whose files are
    checked against the manifest. A missing or corrupted checkpoint is a one-line job error,
    before any work starts."""
    location = resolve(spark, warehouse, model)
    try:
        return open_model(location)
    except (checkpoint.CheckpointError, FileNotFoundError) as e:
        raise JobError(str(e)) from e


def register(spark: SparkSession, warehouse, manifest: dict, path: str | Path, status: str,
             valid_ndcg10: float | None = None, metrics: dict | None = None,
             config: dict | None = None) -> None:
    """Add or update one model's row. status 'champion' also retires the current champion."""
    if status not in ("candidate", "champion", "rejected", "retired"):
        raise ValueError(f"bad status {status!r}")
    now = _now()
    existing = {r["model_version"]: r for r in rows(spark, warehouse)}
    version = manifest["model_version"]
    old = existing.get(version)
    new = Row(
        model_version=version, path=storage.resolve(path), status=status,
        parent_version=manifest.get("parent_version"), stage=manifest.get("stage", "unknown"),
        valid_ndcg10=valid_ndcg10 if valid_ndcg10 is not None else (old["valid_ndcg10"] if old else None),
        metrics_json=json.dumps(metrics) if metrics else (old["metrics_json"] if old else None),
        config_json=json.dumps(config) if config else (old["config_json"] if old else None),
        created_at=old["created_at"] if old else now, updated_at=now,
    )
    batch = [new]
    if status == "champion":
        batch += [r.asDict() | {"status": "retired", "updated_at": now}
                  for v, r in existing.items() if r["status"] == "champion" and v != version]
        batch = [Row(**(b if isinstance(b, dict) else b.asDict())) for b in batch]
    df = spark.createDataFrame(batch, schema=MODEL_REGISTRY.schema)
    delta_io.merge_into(df, MODEL_REGISTRY, warehouse, update_columns=[
        "path", "status", "valid_ndcg10", "metrics_json", "config_json", "updated_at"])


def set_status(spark: SparkSession, warehouse, version: str, status: str) -> None:
    current = {r["model_version"]: r for r in rows(spark, warehouse)}
    if version not in current:
        raise JobError(f"model {version} is not in model_registry")
    r = current[version]
    register(spark, warehouse, {"model_version": version, "parent_version": r["parent_version"],
                                "stage": r["stage"]}, r["path"], status)


def latest_valid_metric(spark: SparkSession, warehouse, version: str) -> float | None:
    if not delta_io.exists(spark, warehouse, MODEL_REGISTRY):
        return None
    r = (delta_io.read(spark, warehouse, MODEL_REGISTRY)
         .filter(F.col("model_version") == version).select("valid_ndcg10").first())
    return r["valid_ndcg10"] if r else None
