"""One scoring run, as `jobs/score.py` asks for it: which users are scored (all, a list, or
with --incremental only those whose history changed), the business rules, the pandas UDF over
the engine, and the run's rows appended to `recommendations` and `rationales` (unpublished).

The rules, in the order they apply:
- incremental: a user whose `history_hash` equals the one of the latest earlier published run
  of the same variant and model keeps that run's list (copied into the new run); a copied list
  that holds an item blocked since is scored again;
- never recommended: the blocklist table, items whose attribute `available_attribute` is false,
  and (exclude_seen "all") everything the user interacted with up to the as-of day, all applied
  inside the index search so every list stays top_k long;
- a user the model cannot reason about gets the most popular items (the fallback).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from dataclasses import asdict, dataclass, replace
from datetime import date

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, FloatType, StringType, TimestampType

from r2ec.config import SamplingConfig
from r2ec_batch import delta_io, publishing, scoring_runs
from r2ec_batch.artifacts import ModelRef
from r2ec_batch.cli import JobError
from r2ec_batch.protocol import end_of_day
from r2ec_batch.schemas import (
    INTERACTIONS,
    ITEM_BLOCKLIST,
    ITEMS,
    RATIONALES,
    RECOMMENDATIONS,
    USER_HISTORIES,
)
from r2ec_batch.udfs.scoring import (
    RECOMMEND_SCHEMA,
    ScoringSettings,
    model_partitions,
    recommend_udf,
)

log = logging.getLogger(__name__)

# Popular items kept for the fallback beyond k: enough to fill a list after the user's own
# exclusions and the blocked items are taken out.
POPULAR_SPARE = 20


@dataclass(frozen=True)
class ScoreRequest:
    """What a scoring run is asked for (the flags of jobs/score.py)."""

    warehouse: str
    run_date: date
    as_of: date
    variant: str
    top_k: int
    sampling: SamplingConfig
    reasoning: bool = True
    samples: int = 1
    users: tuple[str, ...] | None = None
    incremental: bool = False
    backend: str = "transformers"
    device: str | None = None
    chunk_size: int = 64
    max_batch_tokens: int = 0
    commit_users: int = 100_000
    resume: str | None = None  # a run id, or "latest"
    exclude_seen: str = "window"
    blocklist: str = ITEM_BLOCKLIST.name
    available_attribute: str = ""


@dataclass(frozen=True)
class RunWritten:
    """What a run wrote: the job prints it and publishes the run."""

    run_id: str
    part: int  # 0: a new run; n: its n-th resume
    model_version: str
    users_scored: int
    seconds: float
    fallbacks: int  # popularity: no usable history
    errors: int  # scoring failed for the user alone: popular list, fallback 'error'
    carried_over: int
    recommendation_rows: int
    rationale_rows: int
    commits: int


def histories(spark: SparkSession, req: ScoreRequest, version: int | None = None) -> DataFrame:
    """user_histories as of the request's day (only `users`, when given: one unknown to the
    table gets an empty history and so the popularity fallback), with the reference time the
    prompts' "now" line uses (the end of that day)."""
    hist = delta_io.read(spark, req.warehouse, USER_HISTORIES, version=version).filter(
        F.col("as_of_date") == F.lit(req.as_of)).drop("as_of_date")
    if hist.isEmpty():
        raise JobError(f"user_histories has no rows as of {req.as_of}; run "
                       f"jobs/build_histories.py --as-of {req.as_of}")
    if req.users is not None:
        wanted = spark.createDataFrame([(u,) for u in req.users], "user_id string")
        hist = wanted.join(hist, "user_id", "left").select(
            "user_id",
            *[F.coalesce(c, F.array().cast(t)).alias(c) for c, t in (
                ("history_item_ids", ArrayType(StringType())),
                ("history_titles", ArrayType(StringType())),
                ("history_ratings", ArrayType(FloatType())),
                ("history_ts", ArrayType(TimestampType())))],
            F.coalesce("history_hash", F.sha2(F.lit(""), 256)).alias("history_hash"))
    return hist.withColumn("ref_ts", F.lit(end_of_day(req.as_of)).cast("timestamp"))


def previous_run(spark: SparkSession, req: ScoreRequest, version: str) -> DataFrame | None:
    """Rationales of the latest published run of this variant and model before run_date."""
    if not delta_io.exists(spark, req.warehouse, RATIONALES):
        return None
    r = publishing.published(spark, req.warehouse, RATIONALES, req.variant).filter(
        (F.col("run_date") < F.lit(req.run_date)) & (F.col("model_version") == version))
    last = r.agg(F.max("run_date")).first()[0]
    return None if last is None else r.filter(F.col("run_date") == F.lit(last))


def blocked_items(spark: SparkSession, req: ScoreRequest) -> set[str]:
    """Items no one may be recommended: the blocklist table and, with available_attribute,
    the items marked unavailable in `items`."""
    blocked: set[str] = set()
    if req.blocklist != "none":
        spec = replace(ITEM_BLOCKLIST, name=req.blocklist)
        if delta_io.exists(spark, req.warehouse, spec):
            blocked |= {r["item_id"] for r in delta_io.read(spark, req.warehouse, spec)
                        .select("item_id").collect()}
    if req.available_attribute:
        flag = F.lower(F.trim(F.col("attributes").getItem(req.available_attribute)))
        blocked |= {r["item_id"] for r in delta_io.read(spark, req.warehouse, ITEMS)
                    .filter(flag.isin("false", "0", "no", "unavailable")).collect()}
    if blocked:
        log.info("business rules: %d item(s) blocked or unavailable", len(blocked))
    return blocked


def carry_over(spark: SparkSession, req: ScoreRequest, hist: DataFrame, version: str,
               blocked: set[str]) -> tuple[DataFrame, DataFrame | None]:
    """(users to score, users whose earlier list is copied: user_id, prev_date, prev_run).
    Without --incremental, or without an earlier published run, everyone is scored."""
    prev = previous_run(spark, req, version) if req.incremental else None
    if prev is None:
        return hist, None
    same = prev.select("user_id", "history_hash", F.col("run_date").alias("prev_date"),
                       F.col("run_id").alias("prev_run"))
    carried = hist.join(same, ["user_id", "history_hash"], "inner").select(
        "user_id", "prev_date", "prev_run").cache()
    log.info("incremental: %d users unchanged since the last run", carried.count())
    todo = hist.join(carried, "user_id", "left_anti")
    if blocked:
        # a list carried over must not hold an item blocked since: re-score those users
        stale = (delta_io.read(spark, req.warehouse, RECOMMENDATIONS)
                 .filter(F.col("item_id").isin(list(blocked)))
                 .select("user_id", F.col("run_date").alias("prev_date"),
                         F.col("run_id").alias("prev_run")).distinct())
        again = carried.join(stale, ["user_id", "prev_date", "prev_run"], "inner").select("user_id")
        todo = todo.unionByName(hist.join(again, "user_id"), allowMissingColumns=True)
        carried = carried.join(again, "user_id", "left_anti").cache()
    return todo, carried


def list_settings(req: ScoreRequest, version: str, histories_version: int) -> dict:
    """What the lists depend on; a resumed run must be continued with the same. The
    user_histories snapshot is one of them: a retry within the same nightly run finds it
    unchanged, a later run of the date (histories rebuilt) starts a new run."""
    return {"model_version": version, "user_histories_version": histories_version,
            "as_of": req.as_of.isoformat(), "top_k": req.top_k,
            "reasoning": req.reasoning, "samples": req.samples, "sampling": asdict(req.sampling),
            "exclude_seen": req.exclude_seen, "blocklist": req.blocklist,
            "available_attribute": req.available_attribute, "incremental": req.incremental,
            "users": list(req.users) if req.users is not None else None}


def snapshot(spark: SparkSession, df: DataFrame) -> DataFrame:
    """`df` computed once and kept without its lineage, so that the run's own commits (its
    slices' rationales, which a resume reads) cannot change it between slices. On a cluster it
    is kept in two copies on two executors: a local checkpoint has no lineage to recompute a
    lost block from, so with one copy the loss of the executor that held it failed the run
    (a scoring stage retried after the loss reads the snapshot again: seen when a worker was
    killed mid-scoring). Local mode has one block manager, hence one copy."""
    local = spark.sparkContext.master.startswith("local")
    level = StorageLevel.MEMORY_AND_DISK if local else StorageLevel.MEMORY_AND_DISK_2
    return df.localCheckpoint(eager=True, storageLevel=level)


def score_run(spark: SparkSession, req: ScoreRequest, model: ModelRef,
              index_location: str) -> RunWritten:
    """Score the request's users with `model` and its index; append the run (unpublished), in
    slices of at most `commit_users` users, and record what it cost in `scoring_runs`."""
    t0 = time.time()
    hv = delta_io.version(spark, req.warehouse, USER_HISTORIES)
    lists = list_settings(req, model.version, hv)
    part = scoring_runs.start(spark, req.warehouse, req.run_date, req.variant, model.version,
                              req.as_of, req.top_k, lists, req.resume)
    first = {"run_date": req.run_date, "variant": req.variant, "model_version": model.version,
             "as_of_date": req.as_of, "top_k": req.top_k,
             "settings": json.dumps(lists, sort_keys=True)}
    hist = histories(spark, req, version=hv)
    if part.done_users is not None:
        hist = hist.join(part.done_users, "user_id", "left_anti")
    blocked = blocked_items(spark, req)
    hist, carried = carry_over(spark, req, hist, model.version, blocked)
    inter = delta_io.read(spark, req.warehouse, INTERACTIONS).filter(
        F.col("ts") < F.lit(end_of_day(req.as_of)))
    if req.exclude_seen == "all":
        seen = inter.groupBy("user_id").agg(F.collect_set("item_id").alias("seen_item_ids"))
        hist = hist.join(seen, "user_id", "left").withColumn(
            "seen_item_ids", F.coalesce("seen_item_ids", F.array().cast("array<string>")))
    popular = tuple(r["item_id"] for r in inter.groupBy("item_id").count()
                    .orderBy(F.desc("count"), "item_id")
                    .limit(req.top_k + POPULAR_SPARE + len(blocked)).collect())
    settings = ScoringSettings(
        model_location=model.location, model_version=model.version,
        index_location=index_location, top_k=req.top_k, reasoning=req.reasoning,
        samples=req.samples, sampling=req.sampling, backend=req.backend, device=req.device,
        chunk_size=req.chunk_size, max_batch_tokens=req.max_batch_tokens, popular=popular,
        blocked=tuple(sorted(blocked)),
        exclude_column="seen_item_ids" if req.exclude_seen == "all" else None)
    hist = snapshot(spark, hist)  # one snapshot of who is to be scored, for every slice
    n_users = hist.count()
    cost = scoring_runs.Cost(users_carried=carried.count() if carried is not None else 0,
                             wall_seconds_read=time.time() - t0)
    slices = max(1, -(-n_users // req.commit_users))
    rows = [0, 0]
    for s in range(slices):
        todo = hist if slices == 1 else hist.filter(
            F.pmod(F.xxhash64("user_id"), F.lit(slices)) == s)
        n = todo.count() if slices > 1 else n_users
        start = time.time()
        parts = model_partitions(n, spark.sparkContext.defaultParallelism, req.chunk_size)
        scored = todo.repartition(parts).mapInPandas(recommend_udf(settings),
                                                     RECOMMEND_SCHEMA).cache()
        scored.count()
        cost.wall_seconds_score += time.time() - start
        cost.add_slice(scored)
        start = time.time()
        recs, rats = _run_rows(spark, req, scored, carried if s == 0 else None, part.run_id,
                               model.version)
        # Two commits per slice; until the run is published neither is visible. A job stopped
        # between them leaves recommendations without rationales, which a resume deletes.
        m1 = delta_io.append(recs, RECOMMENDATIONS, req.warehouse)
        m2 = delta_io.append(rats, RATIONALES, req.warehouse)
        cost.commits += 2
        rows = [rows[0] + int(m1.get("numOutputRows", 0)), rows[1] + int(m2.get("numOutputRows", 0))]
        cost.wall_seconds_write += time.time() - start
        scored.unpersist()
        log.info("run %s: slice %d/%d written (%d users)", part.run_id, s + 1, slices, n)
        _fault_kill_after_slice(s + 1)
    scoring_runs.finish(spark, req.warehouse, part, first, cost)
    return RunWritten(
        run_id=part.run_id, part=part.part, model_version=model.version, users_scored=n_users,
        seconds=cost.wall_seconds_score, fallbacks=cost.popularity,
        errors=cost.errors, carried_over=cost.users_carried, recommendation_rows=rows[0],
        rationale_rows=rows[1], commits=cost.commits)


def _fault_kill_after_slice(done: int) -> None:
    """Test hook: R2EC_FAULT_KILL_AFTER_SLICES=N kills this process (SIGKILL, as a lost driver)
    once N slices are written."""
    n = os.environ.get("R2EC_FAULT_KILL_AFTER_SLICES")
    if n and done >= int(n):
        log.warning("R2EC_FAULT_KILL_AFTER_SLICES=%s: killing the driver now", n)
        os.kill(os.getpid(), signal.SIGKILL)


def _run_rows(spark: SparkSession, req: ScoreRequest, scored: DataFrame,
              carried: DataFrame | None, run_id: str, version: str) -> tuple[DataFrame, DataFrame]:
    """The run's recommendations and rationales: the scored users' lists plus the carried
    users' earlier rows, all under the new run id."""
    run = [F.lit(req.run_date).alias("run_date"), F.lit(req.variant).alias("variant"),
           F.lit(run_id).alias("run_id")]
    mv = F.lit(version)
    recs = scored.select(F.col("key").alias("user_id"),
                         F.posexplode(F.arrays_zip("item_ids", "scores")).alias("pos", "r")).select(
        *run, "user_id", (F.col("pos") + 1).cast("int").alias("rank"),
        F.col("r.item_ids").alias("item_id"), F.col("r.scores").alias("score"),
        mv.alias("model_version"))
    rats = scored.select(*run, F.col("key").alias("user_id"), "text", "tokens", "history_hash",
                         "fallback", mv.alias("model_version"))
    if carried is not None:
        def copied(spec):
            old = delta_io.read(spark, req.warehouse, spec).filter(F.col("variant") == req.variant)
            return old.join(carried.withColumnRenamed("prev_date", "run_date")
                            .withColumnRenamed("prev_run", "run_id"),
                            ["run_date", "run_id", "user_id"]).drop("run_date", "variant", "run_id")
        recs = recs.unionByName(copied(RECOMMENDATIONS).select(*run, "*"))
        rats = rats.unionByName(copied(RATIONALES).select(*run, "*"))
    return recs, rats
