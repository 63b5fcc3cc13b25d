"""The evaluation protocol in Spark, as the reference preprocessing (RRec's `save_data`)
defines it, and the scoring histories built the same way; `jobs/build_histories.py` writes
both. (`r2ec.protocol` is the same protocol in pandas, which the tests hold this one to.)

training_samples: each user's events in time order, events of the same second in source order
(file, line: a stable sort of the input); users in order of their first event in the input; one
sample per position >= 1 with the previous <= window items; all samples stably sorted by target
time; `sample_id` = the index in that order; the first int(.8 N) train, up to int(.9 N) valid,
the rest test.

user_histories: each user's latest <= window events up to the end of the as-of day, oldest
first in the same order, with a hash of (item, time) pairs that incremental scoring compares.
"""

from __future__ import annotations

import logging
from datetime import date, datetime, time, timedelta

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from r2ec.protocol import split_bounds
from r2ec_batch import delta_io
from r2ec_batch.cli import JobError
from r2ec_batch.schemas import INTERACTIONS, ITEMS

log = logging.getLogger(__name__)


def events_up_to(spark: SparkSession, warehouse: str, as_of: date) -> DataFrame:
    """Events up to the end of `as_of` (UTC) with their item titles and source order; refused
    when an event has no source order (ingested before it was recorded)."""
    inter = delta_io.read(spark, warehouse, INTERACTIONS)
    unordered = inter.filter(F.col("source_line").isNull() | F.col("source_file").isNull()).count()
    if unordered:
        raise JobError(
            f"{unordered:,} interaction(s) have no source order (ingested before it was recorded); "
            "re-run jobs/ingest.py on their files to fill it in, then run this job again")
    items = delta_io.read(spark, warehouse, ITEMS).select("item_id", "title")
    return inter.join(items, "item_id", "left").select(
        "user_id", "item_id", "title", "rating", "ts", "source_file", "source_line").filter(
        F.col("ts") < F.lit(end_of_day(as_of)))


def end_of_day(day: date) -> datetime:
    return datetime.combine(day + timedelta(days=1), time())


# Same-second events keep their input order: the protocol sorts each user's events with a
# stable sort on the timestamp alone. (Breaking ties by item id instead hands models an
# artificial, learnable order inside every same-second burst; about half of ML-100k's events
# share their second with the previous one.)
_EVENT_ORDER = ("ts", "source_file", "source_line")


def _history_columns(col: str) -> list:
    return [
        F.col(f"{col}.item_id").alias("history_item_ids"),
        F.col(f"{col}.title").alias("history_titles"),
        F.col(f"{col}.rating").alias("history_ratings"),
        F.col(f"{col}.ts").alias("history_ts"),
    ]


def training_samples(events: DataFrame, window: int, fractions: list[float]) -> DataFrame:
    """The protocol's samples of `events` (see the module docstring), numbered and split."""
    by_user = Window.partitionBy("user_id").orderBy(*_EVENT_ORDER)
    first_seen = F.min(F.struct("source_file", "source_line")).over(Window.partitionBy("user_id"))
    ev = (events.withColumn("position", (F.row_number().over(by_user) - 1).cast("int"))
          .withColumn("user_first", first_seen))
    hist = F.collect_list(F.struct("item_id", "title", "rating", "ts")).over(
        by_user.rowsBetween(-window, -1))
    samples = (
        ev.withColumn("h", hist).filter(F.col("position") >= 1)
        .select(
            "user_id", "user_first", "position", *_history_columns("h"),
            F.col("item_id").alias("target_item_id"), F.col("ts").alias("target_ts"),
            F.col("rating").alias("target_rating"),
        )
    ).cache()
    n = samples.count()
    train_end, valid_end = split_bounds(n, fractions)
    # The reference's stable sort by target time keeps its list order for equal times: users in
    # order of first appearance, each user's samples by position. One global, un-partitioned
    # window: fine for millions of samples (Spark warns that it runs in one partition).
    order = Window.orderBy("target_ts", "user_first", "position")
    sample_id = (F.row_number().over(order) - 1).cast("long")
    split = (F.when(F.col("sample_id") < train_end, "train")
              .when(F.col("sample_id") < valid_end, "valid").otherwise("test"))
    log.info("%d samples: train %d, valid %d, test %d", n, train_end, valid_end - train_end,
             n - valid_end)
    return (samples.withColumn("sample_id", sample_id).withColumn("split", split)
            .drop("user_first"))


def user_histories(events: DataFrame, as_of: date, window: int) -> DataFrame:
    """Each user's latest <= window events up to the end of `as_of`, oldest first, and the
    hash that incremental scoring compares."""
    end = end_of_day(as_of)
    recent = F.sort_array(F.collect_list(F.struct(*_EVENT_ORDER, "item_id", "title", "rating")))
    hist = (
        events.filter(F.col("ts") < F.lit(end))
        .groupBy("user_id").agg(recent.alias("all"))
        # slice() with a start before the array's beginning returns nothing, hence the when.
        .withColumn("h", F.when(F.size("all") <= window, F.col("all"))
                          .otherwise(F.slice("all", -window, window)))
    )
    key = F.concat_ws("|", F.transform("h", lambda e: F.concat_ws("@", e["item_id"],
                                                                  e["ts"].cast("string"))))
    return hist.select(
        F.lit(as_of).alias("as_of_date"), "user_id", *_history_columns("h"),
        F.size("h").cast("int").alias("history_len"),
        F.element_at(F.col("h.ts"), -1).alias("last_ts"),
        F.sha2(key, 256).alias("history_hash"),
    )
