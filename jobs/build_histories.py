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
gives the same table). Both are built by `r2ec_batch/protocol.py`.
"""

from __future__ import annotations

from datetime import date

from pyspark.sql import functions as F

from r2ec.config import HISTORY_WINDOW
from r2ec_batch import cli, delta_io
from r2ec_batch.protocol import events_up_to, training_samples, user_histories
from r2ec_batch.schemas import TRAINING_SAMPLES, USER_HISTORIES
from r2ec_batch.session import build_spark


def parse_args(argv: list[str] | None):
    p = cli.parser(__doc__.split("\n\n")[0])
    p.add_argument("--as-of", type=cli.iso_date, default=date.today(),
                   help="both tables use events up to the end of this UTC day only")
    p.add_argument("--window", type=int, default=HISTORY_WINDOW, help="history window (paper: 20)")
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


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    cli.setup_logging(a.verbose)
    spark = build_spark("r2ec-build-histories")
    events = events_up_to(spark, a.warehouse, a.as_of).cache()
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
