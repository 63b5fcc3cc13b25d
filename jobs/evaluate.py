"""Evaluate a model on a split of `training_samples` through the same scoring path as
jobs/score.py (pandas UDF -> reasoning -> h_T -> FAISS top-20, history masked), the paper's
protocol: Hit@K and NDCG@K, K = 5, 10, 20, full catalogue, greedy reasoning.

    bin/r2ec-submit jobs/evaluate.py --split test
    bin/r2ec-submit jobs/evaluate.py --model models/ws/best --split valid --no-reasoning
    bin/r2ec-submit jobs/evaluate.py --split test --samples 8 --temperature 1.0   # test-time scaling

Writes the ranked lists to `eval_rankings` (replacing that model's rows for the split) and the
metrics to `evaluations` (appended, with the evaluation's time and the training_samples
version), then prints the table. Metrics up to K = 20 only need each target's position in the
top 20, so they are exact. Beside hit/NDCG: coverage, popularity percentile and bias, novelty
and intra-list diversity at each K (`r2ec.beyond`, the benchmarks' evaluator too).
With reasoning, the rationales' quality (distinct lines, grounded items and genres, agreement
with what was recommended; `r2ec.reasoning.rationale_metrics`) is stored next to them as
metrics named `rationale_*`.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from pyspark.sql import functions as F

from r2ec_batch import artifacts, cli, delta_io, registry
from r2ec_batch.schemas import EVAL_RANKINGS, EVALUATIONS, ITEMS, TRAINING_SAMPLES
from r2ec_batch.session import build_spark
from r2ec_batch.udfs.scoring import RECOMMEND_SCHEMA, ScoringSettings, recommend_udf

log = logging.getLogger("evaluate")
KS = (5, 10, 20)


def eval_mode(reasoning: bool, samples: int = 1, temperature: float = 0.0) -> str:
    """How h_T was computed, as recorded in `evaluations.mode`."""
    if not reasoning:
        return "no_reasoning"
    if samples == 1 and temperature <= 0:
        return "greedy_reasoning"
    return f"reasoning_x{samples}_t{temperature:g}"


def _catalog_and_tags(spark, warehouse):
    from r2ec.data import Catalog
    from r2ec.reasoning import item_tags

    items = delta_io.read(spark, warehouse, ITEMS).select("item_id", "title", "attributes").toPandas()
    catalog = Catalog.from_frame(items)
    return catalog, {i: item_tags(a) for i, a in zip(catalog.ids, catalog.attributes, strict=True)}


def _beyond_accuracy(spark, warehouse, ranked, samples, data_version: int) -> dict[str, float]:
    """Coverage, popularity, novelty and diversity of the lists (`r2ec.beyond`); popularity
    counts from the train split of the same training_samples version."""
    from r2ec.beyond import beyond_accuracy

    catalog, tags = _catalog_and_tags(spark, warehouse)
    counts = (spark.read.format("delta").option("versionAsOf", data_version)
              .load(delta_io.table_path(warehouse, TRAINING_SAMPLES))
              .filter(F.col("split") == "train").groupBy("target_item_id").count().toPandas())
    df = (ranked.select("sample_id", "item_ids")
          .join(samples.select("sample_id", "history_item_ids"), "sample_id").toPandas())
    return beyond_accuracy([list(x) for x in df["item_ids"]],
                           [list(h) for h in df["history_item_ids"]],
                           dict(zip(counts["target_item_id"], counts["count"], strict=True)),
                           catalog.ids, tags, KS)


def _rationale_quality(spark, warehouse, ranked, samples) -> dict[str, float]:
    from r2ec.reasoning import rationale_metrics

    catalog, tags = _catalog_and_tags(spark, warehouse)
    df = (ranked.select("sample_id", "text", "item_ids")
          .join(samples.select("sample_id", "history_titles"), "sample_id").toPandas())
    return rationale_metrics(
        list(df["text"]), [list(h) for h in df["history_titles"]],
        [[tags.get(i, []) for i in ids] for ids in df["item_ids"]],
        set(catalog.titles), {t for ts in tags.values() for t in ts})


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__.split("\n\n")[0])
    p.add_argument("--model", default="champion", help="'champion' or a checkpoint folder / URI")
    p.add_argument("--split", default="test", choices=["train", "valid", "test"])
    p.add_argument("--dataset", default="ml-100k", help="dataset name recorded with the metrics")
    p.add_argument("--no-reasoning", action="store_true", help="the paper's w/o-reasoning ablation")
    p.add_argument("--max-new-tokens", type=int, default=32, help="reasoning budget")
    p.add_argument("--samples", type=int, default=1,
                   help="reasonings per sample; > 1 averages their normalised h_T (needs "
                        "--temperature > 0): test-time scaling")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--sampling-top-k", type=int, default=0, help="top-k of sampling (0 = off)")
    p.add_argument("--limit", type=int, default=0, help="evaluate the first N samples only")
    p.add_argument("--backend", default="transformers", choices=["transformers", "vllm"])
    p.add_argument("--device", default=None)
    p.add_argument("--only-if-missing", action="store_true",
                   help="do nothing when evaluations already hold this model/split/mode")
    a = p.parse_args(argv)
    if a.samples < 1 or (a.samples > 1 and a.temperature <= 0):
        p.error("--samples must be >= 1, and > 1 needs --temperature > 0")
    cli.setup_logging(a.verbose)
    spark = build_spark("r2ec-evaluate")
    delta_io.add_missing_columns(spark, a.warehouse, EVALUATIONS)  # data_version (older tables)
    model = registry.resolve_verified(spark, a.warehouse, a.model)
    version = model.version
    mode = eval_mode(not a.no_reasoning, a.samples, a.temperature)
    if a.only_if_missing and delta_io.exists(spark, a.warehouse, EVALUATIONS):
        done = delta_io.read(spark, a.warehouse, EVALUATIONS).filter(
            (F.col("model_version") == version) & (F.col("split") == a.split)
            & (F.col("mode") == mode) & (F.col("dataset") == a.dataset)).count()
        if done:
            print(f"{version} already evaluated on {a.dataset}/{a.split} ({mode}); skipping")
            return 0
    idx = artifacts.index_location(a.warehouse, version)
    n_items = delta_io.read(spark, a.warehouse, ITEMS).count()
    if not artifacts.index_is_current(idx, version, n_items):
        log.info("no current index for %s yet: building it", version)
        log.info(artifacts.build_index(spark, a.warehouse, model, backend=a.backend, device=a.device))

    data_version = delta_io.version(spark, a.warehouse, TRAINING_SAMPLES)
    samples = (spark.read.format("delta").option("versionAsOf", data_version)
               .load(delta_io.table_path(a.warehouse, TRAINING_SAMPLES))
               .filter(F.col("split") == a.split).orderBy("sample_id"))
    if a.limit:
        samples = samples.limit(a.limit)
    samples = samples.withColumn("ref_ts", F.col("target_ts")).withColumn(
        "history_hash", F.lit(None).cast("string")).cache()
    n = samples.count()
    settings = ScoringSettings(
        model_location=model.location, model_version=version, index_location=idx, top_k=max(KS),
        reasoning=not a.no_reasoning, max_new_tokens=a.max_new_tokens, samples=a.samples,
        temperature=a.temperature, sampling_top_k=a.sampling_top_k, backend=a.backend,
        device=a.device, key_column="sample_id")
    parts = max(spark.sparkContext.defaultParallelism, n // 2000)
    ranked = (samples.repartition(parts).mapInPandas(recommend_udf(settings), RECOMMEND_SCHEMA)
              .withColumn("sample_id", F.col("key").cast("long")).drop("key").cache())
    rankings = ranked.select(
        F.lit(version).alias("model_version"), F.lit(a.split).alias("split"), "sample_id",
        F.posexplode(F.arrays_zip("item_ids", "scores")).alias("pos", "r")).select(
        "model_version", "split", "sample_id", (F.col("pos") + 1).cast("int").alias("rank"),
        F.col("r.item_ids").alias("item_id"), F.col("r.scores").alias("score"))
    delta_io.replace_where(rankings, EVAL_RANKINGS, a.warehouse,
                           {"model_version": version, "split": a.split})

    pos = ranked.join(samples.select("sample_id", "target_item_id"), "sample_id").select(
        F.array_position("item_ids", F.col("target_item_id")).alias("rank"))
    aggs = []
    for k in KS:
        hit = (F.col("rank") > 0) & (F.col("rank") <= k)
        aggs.append(F.avg(hit.cast("double")).alias(f"hit@{k}"))
        aggs.append(F.avg(F.when(hit, 1.0 / F.log2(F.col("rank") + 1)).otherwise(0.0)).alias(f"ndcg@{k}"))
    m = pos.agg(*aggs).first().asDict()
    beyond = _beyond_accuracy(spark, a.warehouse, ranked, samples, data_version)
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    rows = [(version, a.dataset, a.split, name.split("@")[0], int(name.split("@")[1]), float(v), n,
             mode, now, data_version) for name, v in {**m, **beyond}.items() if v == v]
    if not a.no_reasoning:
        quality = _rationale_quality(spark, a.warehouse, ranked, samples)
        rows += [(version, a.dataset, a.split, f"rationale_{name.split('@')[0]}",
                  int(name.split("@")[1]) if "@" in name else 0, float(v), n, mode, now,
                  data_version)
                 for name, v in quality.items() if v == v]  # NaN: nothing of that kind named
        print("rationales: " + ", ".join(f"{k} {v:.3f}" for k, v in quality.items()), flush=True)
    df = spark.createDataFrame(rows, EVALUATIONS.schema)
    # Appended, never merged: the history stays, and evaluations running at the same time (the
    # fine-tuning DAG evaluates candidate and champion in parallel) never conflict.
    delta_io.append(df, EVALUATIONS, a.warehouse)
    print(f"{version} on {a.dataset}/{a.split} ({n:,} samples of training_samples version "
          f"{data_version}, {mode.replace('_', ' ')}):")
    print("  " + "  ".join(f"{k:>8}" for k in m))
    print("  " + "  ".join(f"{v:8.4f}" for v in m.values()))
    print("beyond accuracy @10: " + ", ".join(
        f"{k.split('@')[0]} {v:.3f}" for k, v in beyond.items() if k.endswith("@10")), flush=True)
    return 0


if __name__ == "__main__":
    cli.run(main)
