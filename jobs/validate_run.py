"""Check one scoring run before anyone reads it: every user of the histories has exactly top-k
distinct items ranked 1..k, none of them from the user's history window, one fresh rationale,
and all rows come from one model (the champion, unless --model says otherwise).

    bin/r2ec-submit jobs/validate_run.py --run-date 2026-11-26 --top-k 10

Exit status 0 when every check passes; otherwise each failed check is printed and the status
is 1, which fails the Airflow task (and its retries) loudly.
"""

from __future__ import annotations

import logging

from pyspark.sql import functions as F

from r2ec_batch import cli, delta_io, registry
from r2ec_batch.schemas import RATIONALES, RECOMMENDATIONS, USER_HISTORIES
from r2ec_batch.session import build_spark

log = logging.getLogger("validate_run")


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__.split("\n\n")[0])
    p.add_argument("--run-date", type=cli.iso_date, required=True)
    p.add_argument("--as-of", type=cli.iso_date, help="user_histories date (default: run date)")
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--model", default="champion", help="model the rows must come from")
    a = p.parse_args(argv)
    cli.setup_logging(a.verbose)
    spark = build_spark("r2ec-validate-run")
    as_of = a.as_of or a.run_date
    version = registry.resolve_verified(spark, a.warehouse, a.model).version
    recs = delta_io.read(spark, a.warehouse, RECOMMENDATIONS).filter(F.col("run_date") == F.lit(a.run_date))
    rats = delta_io.read(spark, a.warehouse, RATIONALES).filter(F.col("run_date") == F.lit(a.run_date))
    hist = delta_io.read(spark, a.warehouse, USER_HISTORIES).filter(F.col("as_of_date") == F.lit(as_of))

    per_user = recs.groupBy("user_id").agg(
        F.count("*").alias("n"), F.countDistinct("item_id").alias("distinct"),
        F.min("rank").alias("lo"), F.max("rank").alias("hi"))
    expected_users = hist.select("user_id").distinct()
    checks = {
        "users with recommendations == users with histories":
            per_user.select("user_id").subtract(expected_users).isEmpty()
            and expected_users.subtract(per_user.select("user_id")).isEmpty(),
        f"every user has exactly {a.top_k} distinct items ranked 1..{a.top_k}":
            per_user.filter((F.col("n") != a.top_k) | (F.col("distinct") != a.top_k)
                            | (F.col("lo") != 1) | (F.col("hi") != a.top_k)).count() == 0,
        "no recommended item is in the user's history window":
            recs.join(hist.select("user_id", F.explode("history_item_ids").alias("item_id")),
                      ["user_id", "item_id"]).count() == 0,
        "one rationale per user":
            rats.count() == rats.select("user_id").distinct().count() == per_user.count(),
        f"all rows come from model {version}":
            recs.filter(F.col("model_version") != version).count() == 0
            and rats.filter(F.col("model_version") != version).count() == 0,
    }
    failed = [name for name, ok in checks.items() if not ok]
    for name, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
    print(f"run {a.run_date}: {per_user.count():,} users, {recs.count():,} recommendations, "
          f"{'all checks passed' if not failed else f'{len(failed)} check(s) failed'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    cli.run(main)
