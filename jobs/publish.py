"""Publish a scoring run: audit it (the checks of jobs/validate_run.py) and, only if every
check passes, make it the run that readers see for its (run date, variant), recommendations
and rationales together, in one commit to `published_runs`.

    bin/r2ec-submit jobs/publish.py --run-date 2026-11-26 --top-k 10
    bin/r2ec-submit jobs/publish.py --run-date 2026-11-26 --variant challenger
    bin/r2ec-submit jobs/publish.py --run-date 2026-11-26 --run-id 20261126T...  # roll back

Publishes the newest run of (run date, variant) unless --run-id names one (an older run that
is still there: publishing it again is a roll-back). Exit status 0 when published; 1 when a
check failed, in which case nothing changes for readers.
"""

from __future__ import annotations

from r2ec_batch import cli, publishing
from r2ec_batch.session import build_spark


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__.split("\n\n")[0])
    publishing.add_run_arguments(p)
    a = p.parse_args(argv)
    cli.setup_logging(a.verbose)
    spark = build_spark("r2ec-publish")
    run_id, version = publishing.find_run(spark, a)
    return publishing.publish_if_sound(spark, a.warehouse, a.run_date, a.variant, run_id,
                                       a.as_of or a.run_date, a.top_k, version,
                                       job="jobs/publish.py", max_error_rate=a.max_error_rate)

if __name__ == "__main__":
    cli.run(main)
