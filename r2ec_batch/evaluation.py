"""One evaluation, as `jobs/evaluate.py` asks for it: a split of `training_samples` scored
through the same pandas UDF as a scoring run (reasoning -> h_T -> FAISS top-20, history
masked), its ranked lists written to `eval_rankings`, and its metrics appended to
`evaluations`.

Metrics up to K = 20 only need each target's position in the top 20, so they are exact; they
come from the engine's own definition (`r2ec.metrics`), as every benchmark computes them.
Beside hit/NDCG: coverage, popularity, novelty and diversity (`r2ec.beyond`) and, with
reasoning, the rationales' quality (`r2ec.reasoning.rationale_metrics`) as `rationale_*`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from r2ec.config import SamplingConfig
from r2ec.metrics import KS, metrics_from_ranks
from r2ec_batch import artifacts, delta_io
from r2ec_batch.artifacts import ModelRef
from r2ec_batch.schemas import EVAL_RANKINGS, EVALUATIONS, ITEMS, TRAINING_SAMPLES
from r2ec_batch.udfs.scoring import (
    RECOMMEND_SCHEMA,
    ScoringSettings,
    model_partitions,
    recommend_udf,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalRequest:
    """What an evaluation is asked for (the flags of jobs/evaluate.py)."""

    warehouse: str
    split: str
    sampling: SamplingConfig
    dataset: str = "ml-100k"
    reasoning: bool = True
    samples: int = 1
    limit: int = 0
    backend: str = "transformers"
    device: str | None = None

    @property
    def mode(self) -> str:
        return eval_mode(self.reasoning, self.samples, self.sampling.temperature)


@dataclass(frozen=True)
class EvalResult:
    """What an evaluation measured and on which data."""

    samples: int
    data_version: int
    metrics: dict[str, float]
    beyond: dict[str, float]
    rationale_quality: dict[str, float] = field(default_factory=dict)


def eval_mode(reasoning: bool, samples: int = 1, temperature: float = 0.0) -> str:
    """How h_T was computed, as recorded in `evaluations.mode`."""
    if not reasoning:
        return "no_reasoning"
    if samples == 1 and temperature <= 0:
        return "greedy_reasoning"
    return f"reasoning_x{samples}_t{temperature:g}"


def already_evaluated(spark: SparkSession, req: EvalRequest, version: str) -> bool:
    """Whether `evaluations` already holds this model, dataset, split and mode."""
    if not delta_io.exists(spark, req.warehouse, EVALUATIONS):
        return False
    return delta_io.read(spark, req.warehouse, EVALUATIONS).filter(
        (F.col("model_version") == version) & (F.col("split") == req.split)
        & (F.col("mode") == req.mode) & (F.col("dataset") == req.dataset)).count() > 0


def ensure_index(spark: SparkSession, warehouse: str, model: ModelRef, backend: str,
                 device: str | None) -> str:
    """The model's index location, built first when missing or stale."""
    idx = artifacts.index_location(warehouse, model.version)
    n_items = delta_io.read(spark, warehouse, ITEMS).count()
    if not artifacts.index_is_current(idx, model.version, n_items):
        log.info("no current index for %s yet: building it", model.version)
        log.info(artifacts.build_index(spark, warehouse, model, backend=backend, device=device))
    return idx


def evaluate(spark: SparkSession, req: EvalRequest, model: ModelRef) -> EvalResult:
    """Score the split with `model`, write its rankings and append its metrics."""
    version = model.version
    idx = ensure_index(spark, req.warehouse, model, req.backend, req.device)
    data_version = delta_io.version(spark, req.warehouse, TRAINING_SAMPLES)
    samples = (delta_io.read(spark, req.warehouse, TRAINING_SAMPLES, version=data_version)
               .filter(F.col("split") == req.split).orderBy("sample_id"))
    if req.limit:
        samples = samples.limit(req.limit)
    samples = samples.withColumn("ref_ts", F.col("target_ts")).withColumn(
        "history_hash", F.lit(None).cast("string")).cache()
    n = samples.count()
    settings = ScoringSettings(
        model_location=model.location, model_version=version, index_location=idx, top_k=max(KS),
        reasoning=req.reasoning, samples=req.samples, sampling=req.sampling,
        backend=req.backend, device=req.device, key_column="sample_id")
    parts = model_partitions(n, spark.sparkContext.defaultParallelism, settings.chunk_size)
    ranked = (samples.repartition(parts).mapInPandas(recommend_udf(settings), RECOMMEND_SCHEMA)
              .withColumn("sample_id", F.col("key").cast("long")).drop("key").cache())
    rankings = ranked.select(
        F.lit(version).alias("model_version"), F.lit(req.split).alias("split"), "sample_id",
        F.posexplode(F.arrays_zip("item_ids", "scores")).alias("pos", "r")).select(
        "model_version", "split", "sample_id", (F.col("pos") + 1).cast("int").alias("rank"),
        F.col("r.item_ids").alias("item_id"), F.col("r.scores").alias("score"))
    delta_io.replace_where(rankings, EVAL_RANKINGS, req.warehouse,
                           {"model_version": version, "split": req.split})

    # The target's rank in each list: one number per sample reaches the driver.
    ranks = (ranked.join(samples.select("sample_id", "target_item_id"), "sample_id")
             .select(F.array_position("item_ids", F.col("target_item_id")).alias("rank"))
             .toPandas()["rank"].to_numpy(dtype=np.float64))
    ranks[ranks == 0] = np.inf  # not in the top max(KS): a miss at every cut-off
    result = EvalResult(
        samples=n, data_version=data_version, metrics=metrics_from_ranks(ranks, KS),
        beyond=_beyond_accuracy(spark, req.warehouse, ranked, samples, data_version),
        rationale_quality=(_rationale_quality(spark, req.warehouse, ranked, samples)
                           if req.reasoning else {}))
    # Appended, never merged: the history stays, and evaluations running at the same time (the
    # fine-tuning DAG evaluates candidate and champion in parallel) never conflict.
    delta_io.append(spark.createDataFrame(_metric_rows(req, version, result), EVALUATIONS.schema),
                    EVALUATIONS, req.warehouse)
    return result


def _metric_rows(req: EvalRequest, version: str, result: EvalResult) -> list[tuple]:
    """`evaluations` rows: one per metric and cut-off ("ndcg@10" -> ("ndcg", 10)); a NaN (a
    rationale metric with nothing of its kind named) is left out."""
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    named = {**result.metrics, **result.beyond,
             **{f"rationale_{k}": v for k, v in result.rationale_quality.items()}}
    rows = []
    for name, value in named.items():
        if value != value:
            continue
        metric, _, k = name.partition("@")
        rows.append((version, req.dataset, req.split, metric, int(k) if k else 0, float(value),
                     result.samples, req.mode, now, result.data_version))
    return rows


def _catalog_and_tags(spark: SparkSession, warehouse: str):
    from r2ec.data import Catalog
    from r2ec.reasoning import item_tags

    items = delta_io.read(spark, warehouse, ITEMS).select("item_id", "title", "attributes").toPandas()
    catalog = Catalog.from_frame(items)
    return catalog, {i: item_tags(a) for i, a in zip(catalog.ids, catalog.attributes, strict=True)}


def _beyond_accuracy(spark: SparkSession, warehouse: str, ranked: DataFrame, samples: DataFrame,
                     data_version: int) -> dict[str, float]:
    """Coverage, popularity, novelty and diversity of the lists (`r2ec.beyond`); popularity
    counts from the train split of the same training_samples version."""
    from r2ec.beyond import beyond_accuracy

    catalog, tags = _catalog_and_tags(spark, warehouse)
    counts = (delta_io.read(spark, warehouse, TRAINING_SAMPLES, version=data_version)
              .filter(F.col("split") == "train").groupBy("target_item_id").count().toPandas())
    df = (ranked.select("sample_id", "item_ids")
          .join(samples.select("sample_id", "history_item_ids"), "sample_id").toPandas())
    return beyond_accuracy([list(x) for x in df["item_ids"]],
                           [list(h) for h in df["history_item_ids"]],
                           dict(zip(counts["target_item_id"], counts["count"], strict=True)),
                           catalog.ids, tags, KS)


def _rationale_quality(spark: SparkSession, warehouse: str, ranked: DataFrame,
                       samples: DataFrame) -> dict[str, float]:
    from r2ec.reasoning import rationale_metrics

    catalog, tags = _catalog_and_tags(spark, warehouse)
    df = (ranked.select("sample_id", "text", "item_ids")
          .join(samples.select("sample_id", "history_titles"), "sample_id").toPandas())
    return rationale_metrics(
        list(df["text"]), [list(h) for h in df["history_titles"]],
        [[tags.get(i, []) for i in ids] for ids in df["item_ids"]],
        set(catalog.titles), {t for ts in tags.values() for t in ts})
