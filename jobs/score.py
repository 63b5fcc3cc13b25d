"""Score users with the dual-head model: reasoning -> h_T -> top-k from the item index, into
`recommendations` and `rationales` as a new run of (run date, variant), not yet published.

    bin/r2ec-submit jobs/score.py --run-date 2026-11-26 --publish
    bin/r2ec-submit jobs/score.py --run-date 2026-11-26 --no-reasoning --top-k 20
    bin/r2ec-submit jobs/score.py --run-date 2026-11-27 --incremental
    bin/r2ec-submit jobs/score.py --run-date 2026-11-26 --variant challenger --model models/x/best

Reads user_histories as of --as-of (default: the run date). The run's rows get a new run_id;
readers see them only once `jobs/publish.py` (or `--publish` here) has audited and published
the run, recommendations and rationales together (`r2ec_batch/publishing.py`). Re-running a
date first drops that date's unpublished runs of the variant, so the published run stays
visible until a new one passes its audit. --incremental re-scores only users whose history
changed since the latest earlier published run of the same variant and model, and copies the
others. Refuses to run when the index was built for another model version (run embed_items.py).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from datetime import datetime, timedelta
from datetime import time as dtime

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, FloatType, StringType, TimestampType

from r2ec_batch import artifacts, cli, delta_io, publishing, registry
from r2ec_batch.schemas import (
    INTERACTIONS,
    ITEM_BLOCKLIST,
    ITEMS,
    RATIONALES,
    RECOMMENDATIONS,
    USER_HISTORIES,
)
from r2ec_batch.session import build_spark
from r2ec_batch.udfs.scoring import RECOMMEND_SCHEMA, ScoringSettings, recommend_udf

log = logging.getLogger("score")


def _args(argv):
    p = cli.parser(__doc__.split("\n\n")[0])
    p.add_argument("--run-date", type=cli.iso_date, required=True, help="partition to write")
    p.add_argument("--as-of", type=cli.iso_date, help="user_histories date (default: run date)")
    p.add_argument("--model", default="champion", help="'champion' or a checkpoint folder / URI")
    p.add_argument("--variant", default=publishing.CHAMPION, type=cli.variant,
                   help="output variant: champion, challenger, or any name ([A-Za-z0-9_-])")
    p.add_argument("--publish", action="store_true",
                   help="audit the run and publish it when every check passes (as jobs/publish.py)")
    p.add_argument("--top-k", type=int, default=10, help="items per user")
    p.add_argument("--samples", type=int, default=1,
                   help="reasonings per user; >1 averages their h_T (needs --temperature > 0)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (the paper's inference)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="reasoning budget")
    p.add_argument("--no-reasoning", action="store_true", help="h_T straight after the prompt")
    p.add_argument("--users", help="comma-separated user ids to score (default: all)")
    p.add_argument("--incremental", action="store_true",
                   help="re-score only users whose history changed since the last run")
    p.add_argument("--backend", default="transformers", choices=["transformers", "vllm"])
    p.add_argument("--device", default=None, help="cpu / cuda (default: the task's GPU or cpu)")
    p.add_argument("--chunk-size", type=int, default=64, help="users per model batch in a UDF")
    rules = p.add_argument_group("business rules (applied inside the index search: lists stay "
                                 "--top-k long)")
    rules.add_argument("--exclude-seen", choices=["window", "all"], default="window",
                       help="never recommend the items of the history window (the paper's "
                            "protocol), or everything the user interacted with up to --as-of")
    rules.add_argument("--blocklist", default=ITEM_BLOCKLIST.name,
                       help="items never recommended: this table of the warehouse when it "
                            "exists ('none': no blocklist)")
    rules.add_argument("--available-attribute", default="", metavar="NAME",
                       help="items whose attribute NAME is false/0/no/unavailable are never "
                            "recommended (e.g. 'available', kept up to date by ingest)")
    a = p.parse_args(argv)
    if a.top_k < 1:
        p.error("--top-k must be >= 1")
    if a.samples > 1 and a.temperature <= 0:
        p.error("--samples > 1 needs --temperature > 0")
    a.as_of = a.as_of or a.run_date
    return a


def _previous_run(spark, warehouse, run_date, variant, version) -> DataFrame | None:
    """Rationales of the latest published run of this variant and model before run_date."""
    if not delta_io.exists(spark, warehouse, RATIONALES):
        return None
    r = publishing.published(spark, warehouse, RATIONALES, variant).filter(
        (F.col("run_date") < F.lit(run_date)) & (F.col("model_version") == version))
    last = r.agg(F.max("run_date")).first()[0]
    return None if last is None else r.filter(F.col("run_date") == F.lit(last))


def _blocked_items(spark, a) -> set[str]:
    """Items no one may be recommended: the blocklist table and, with --available-attribute,
    the items marked unavailable in `items`."""
    blocked: set[str] = set()
    if a.blocklist != "none":
        spec = replace(ITEM_BLOCKLIST, name=a.blocklist)
        if delta_io.exists(spark, a.warehouse, spec):
            blocked |= {r["item_id"] for r in delta_io.read(spark, a.warehouse, spec)
                        .select("item_id").collect()}
    if a.available_attribute:
        flag = F.lower(F.trim(F.col("attributes").getItem(a.available_attribute)))
        blocked |= {r["item_id"] for r in delta_io.read(spark, a.warehouse, ITEMS)
                    .filter(flag.isin("false", "0", "no", "unavailable")).collect()}
    if blocked:
        log.info("business rules: %d item(s) blocked or unavailable", len(blocked))
    return blocked


def main(argv: list[str] | None = None) -> int:
    a = _args(argv)
    cli.setup_logging(a.verbose)
    spark = build_spark("r2ec-score")
    publishing.migrate(spark, a.warehouse)
    model = registry.resolve_verified(spark, a.warehouse, a.model)
    version = model.version
    idx_location = artifacts.index_location(a.warehouse, version)
    from r2ec.index import IndexMismatch

    try:
        artifacts.load_index(idx_location, version)
    except (IndexMismatch, FileNotFoundError) as e:
        raise cli.JobError(f"no usable index for model {version} ({e}); run jobs/embed_items.py "
                           f"--model {a.model}") from e

    hist = delta_io.read(spark, a.warehouse, USER_HISTORIES).filter(
        F.col("as_of_date") == F.lit(a.as_of)).drop("as_of_date")
    if hist.isEmpty():
        raise cli.JobError(f"user_histories has no rows as of {a.as_of}; run jobs/build_histories.py "
                           f"--as-of {a.as_of}")
    if a.users:
        wanted = spark.createDataFrame([(u.strip(),) for u in a.users.split(",") if u.strip()],
                                       "user_id string")
        hist = wanted.join(hist, "user_id", "left").select(
            "user_id",
            *[F.coalesce(c, F.array().cast(t)).alias(c) for c, t in (
                ("history_item_ids", ArrayType(StringType())), ("history_titles", ArrayType(StringType())),
                ("history_ratings", ArrayType(FloatType())), ("history_ts", ArrayType(TimestampType())))],
            F.coalesce("history_hash", F.sha2(F.lit(""), 256)).alias("history_hash"))
    end_of_day = datetime.combine(a.as_of + timedelta(days=1), dtime())
    hist = hist.withColumn("ref_ts", F.lit(end_of_day).cast("timestamp"))

    carried, base_hist = None, hist
    if a.incremental:
        prev = _previous_run(spark, a.warehouse, a.run_date, a.variant, version)
        if prev is not None:
            same = prev.select("user_id", "history_hash", F.col("run_date").alias("prev_date"),
                               F.col("run_id").alias("prev_run"))
            unchanged = hist.join(same, ["user_id", "history_hash"], "inner").select(
                "user_id", "prev_date", "prev_run")
            carried = unchanged.cache()
            hist = hist.join(unchanged, "user_id", "left_anti")
            log.info("incremental: %d users unchanged since the last run", carried.count())

    inter = delta_io.read(spark, a.warehouse, INTERACTIONS).filter(F.col("ts") < F.lit(end_of_day))
    blocked = _blocked_items(spark, a)
    if carried is not None and blocked:
        # a list carried over must not hold an item blocked since: re-score those users
        stale = (delta_io.read(spark, a.warehouse, RECOMMENDATIONS)
                 .filter(F.col("item_id").isin(list(blocked)))
                 .select("user_id", F.col("run_date").alias("prev_date"),
                         F.col("run_id").alias("prev_run")).distinct())
        again = carried.join(stale, ["user_id", "prev_date", "prev_run"], "inner").select("user_id")
        hist = hist.unionByName(base_hist.join(again, "user_id"), allowMissingColumns=True)
        carried = carried.join(again, "user_id", "left_anti").cache()
    if a.exclude_seen == "all":
        seen = inter.groupBy("user_id").agg(F.collect_set("item_id").alias("seen_item_ids"))
        hist = hist.join(seen, "user_id", "left").withColumn(
            "seen_item_ids", F.coalesce("seen_item_ids", F.array().cast("array<string>")))
    popular = tuple(r["item_id"] for r in inter.groupBy("item_id").count()
                    .orderBy(F.desc("count"), "item_id").limit(a.top_k + 20 + len(blocked))
                    .collect())
    settings = ScoringSettings(
        model_location=model.location, model_version=version, index_location=idx_location,
        top_k=a.top_k,
        reasoning=not a.no_reasoning, samples=a.samples, temperature=a.temperature,
        max_new_tokens=a.max_new_tokens, backend=a.backend, device=a.device,
        chunk_size=a.chunk_size, popular=popular, blocked=tuple(sorted(blocked)),
        exclude_column="seen_item_ids" if a.exclude_seen == "all" else None)
    n_users = hist.count()
    parts = max(spark.sparkContext.defaultParallelism, n_users // 2000)
    start = time.time()
    scored = hist.repartition(parts).mapInPandas(recommend_udf(settings), RECOMMEND_SCHEMA).cache()
    scored.count()
    seconds = time.time() - start

    run_id = publishing.new_run_id()
    run = [F.lit(a.run_date).alias("run_date"), F.lit(a.variant).alias("variant"),
           F.lit(run_id).alias("run_id")]
    mv = F.lit(version)
    recs = scored.select(F.col("key").alias("user_id"),
                         F.posexplode(F.arrays_zip("item_ids", "scores")).alias("pos", "r")).select(
        *run, "user_id", (F.col("pos") + 1).cast("int").alias("rank"),
        F.col("r.item_ids").alias("item_id"), F.col("r.scores").alias("score"), mv.alias("model_version"))
    rats = scored.select(*run, F.col("key").alias("user_id"), "text", "tokens", "history_hash",
                         "fallback", mv.alias("model_version"))
    if carried is not None:
        def copied(spec):
            old = delta_io.read(spark, a.warehouse, spec).filter(F.col("variant") == a.variant)
            return old.join(carried.withColumnRenamed("prev_date", "run_date")
                            .withColumnRenamed("prev_run", "run_id"),
                            ["run_date", "run_id", "user_id"]).drop("run_date", "variant", "run_id")
        recs = recs.unionByName(copied(RECOMMENDATIONS).select(*run, "*"))
        rats = rats.unionByName(copied(RATIONALES).select(*run, "*"))
    publishing.drop_unpublished(spark, a.warehouse, a.run_date, a.variant)
    # Two commits; until the run is published neither is visible, so a job stopped between
    # them leaves readers' view as it was (and the half-written run fails its audit).
    m1 = delta_io.append(recs, RECOMMENDATIONS, a.warehouse)
    m2 = delta_io.append(rats, RATIONALES, a.warehouse)
    fallbacks = scored.filter(F.col("fallback").isNotNull()).count()
    print(f"scored {n_users:,} users in {seconds:.1f}s ({n_users / max(seconds, 1e-9):.1f} users/s) "
          f"with {version}{' (no reasoning)' if a.no_reasoning else ''}; "
          f"{fallbacks:,} popularity fallbacks; "
          f"{(carried.count() if carried is not None else 0):,} carried over; "
          f"recommendations: {int(m1.get('numOutputRows', 0)):,} rows, "
          f"rationales: {int(m2.get('numOutputRows', 0)):,} rows; run {run_id} "
          f"({a.run_date}, {a.variant})", flush=True)
    if not a.publish:
        print(f"not published yet: jobs/publish.py --run-date {a.run_date} --variant {a.variant} "
              f"--as-of {a.as_of} --top-k {a.top_k}", flush=True)
        return 0
    return publishing.publish_if_sound(spark, a.warehouse, a.run_date, a.variant, run_id,
                                       a.as_of, a.top_k, version, job="jobs/score.py --publish")

if __name__ == "__main__":
    cli.run(main)
