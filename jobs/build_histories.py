"""Build `training_samples` (the paper's protocol) and `user_histories` (for scoring) from
`interactions` and `items`.

    spark-submit jobs/build_histories.py --as-of 2026-11-26
    spark-submit jobs/build_histories.py --as-of 1998-03-01 --window 20 --split 0.8,0.1,0.1

training_samples, exactly as the reference preprocessing (RRec's `save_data`) numbers them:
each user's events in time order, events of the same second in source order (file, line: a
stable sort of the input); users in order of their first event in the input; one sample per
position >= 1 with the previous <= window items; all samples stably sorted by target time;
`sample_id` = the index in that order (the reference's `interaction_id`); the first int(.8 N)
are train, up to int(.9 N) valid, the rest test. Every train target is no later than every
valid target, and so on. Only events up to the end of --as-of are used, so a backfill for an
earlier date trains on what was known then. The whole table is rewritten in one commit.

user_histories: each user's latest <= window events up to the end of --as-of (UTC), oldest
first in the same order, in partition as_of_date = --as-of, replaced in one commit (a re-run
gives the same table).
"""

from __future__ import annotations

import logging
from datetime import date, datetime, time, timedelta

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from r2ec_batch import cli, delta_io
from r2ec_batch.schemas import INTERACTIONS, ITEMS, TRAINING_SAMPLES, USER_HISTORIES
from r2ec_batch.session import build_spark

log = logging.getLogger("build_histories")


def _args(argv: list[str] | None):
    p = cli.parser(__doc__.split("\n\n")[0])
    p.add_argument("--as-of", type=cli.iso_date, default=date.today(),
                   help="both tables use events up to the end of this UTC day only")
    p.add_argument("--window", type=int, default=20, help="history window (paper: 20)")
    p.add_argument("--split", default="0.8,0.1,0.1", help="train,valid,test fractions by target time")
    p.add_argument("--skip-samples", action="store_true", help="only build user_histories")
    p.add_argument("--skip-histories", action="store_true", help="only build training_samples")
    a = p.parse_args(argv)
    fr = [float(x) for x in a.split.split(",")]
    if len(fr) != 3 or any(f < 0 for f in fr) or abs(sum(fr) - 1) > 1e-9:
        p.error(f"--split must be three non-negative fractions summing to 1, got {a.split!r}")
    if a.window < 1:
        p.error("--window must be >= 1")
    a.fractions = fr
    return a


def _events(spark, warehouse) -> DataFrame:
    inter = delta_io.read(spark, warehouse, INTERACTIONS)
    unordered = inter.filter(F.col("source_line").isNull() | F.col("source_file").isNull()).count()
    if unordered:
        raise cli.JobError(
            f"{unordered:,} interaction(s) have no source order (ingested before it was recorded); "
            "re-run jobs/ingest.py on their files to fill it in, then run this job again")
    items = delta_io.read(spark, warehouse, ITEMS).select("item_id", "title")
    return inter.join(items, "item_id", "left").select(
        "user_id", "item_id", "title", "rating", "ts", "source_file", "source_line")


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


def split_bounds(n: int, fractions: list[float]) -> tuple[int, int]:
    """(end of train, end of valid) as the reference computes them: int(.8 N), int(.9 N).
    The cumulative fraction is rounded so that 0.8 + 0.1 is 0.9, not 0.9000000000000001."""
    return int(n * fractions[0]), int(n * round(fractions[0] + fractions[1], 12))


def training_samples(events: DataFrame, window: int, fractions: list[float]) -> DataFrame:
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
    end = datetime.combine(as_of + timedelta(days=1), time())
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


def main(argv: list[str] | None = None) -> int:
    a = _args(argv)
    cli.setup_logging(a.verbose)
    spark = build_spark("r2ec-build-histories")
    end = datetime.combine(a.as_of + timedelta(days=1), time())
    events = _events(spark, a.warehouse).filter(F.col("ts") < F.lit(end)).cache()
    if not a.skip_samples:
        samples = training_samples(events, a.window, a.fractions)
        m = delta_io.overwrite(samples, TRAINING_SAMPLES, a.warehouse)
        counts = {r["split"]: r["count"] for r in
                  delta_io.read(spark, a.warehouse, TRAINING_SAMPLES).groupBy("split").count().collect()}
        print(f"training_samples: {sum(counts.values()):,} samples (train {counts.get('train', 0):,}, "
              f"valid {counts.get('valid', 0):,}, test {counts.get('test', 0):,}) from events "
              f"up to the end of {a.as_of}; table version {m['version']}", flush=True)
    if not a.skip_histories:
        hist = user_histories(events, a.as_of, a.window)
        m = delta_io.replace_partition(hist, USER_HISTORIES, a.warehouse, "as_of_date",
                                       a.as_of.isoformat())
        users = delta_io.read(spark, a.warehouse, USER_HISTORIES).filter(
            F.col("as_of_date") == F.lit(a.as_of)).count()
        print(f"user_histories: {users:,} users as of {a.as_of} (window {a.window}); "
              f"table version {m['version']}", flush=True)
    return 0


if __name__ == "__main__":
    cli.run(main)
