"""Audit one scoring run without publishing it: every user of the histories has exactly top-k
distinct items ranked 1..k, none of them from the user's history window, one rationale, the
row counts match `user_histories`, and all rows come from one model (--model, if given).

    bin/r2ec-submit jobs/validate_run.py --run-date 2026-11-26 --top-k 10
    bin/r2ec-submit jobs/validate_run.py --run-date 2026-11-26 --variant challenger --run-id ...

Checks the newest run of (run date, variant) unless --run-id names one; `jobs/publish.py` runs
the same checks and publishes the run when they pass. Exit status 0 when every check passes;
otherwise each failed check is printed and the status is 1.
"""

from __future__ import annotations

from r2ec_batch import cli, publishing
from r2ec_batch.session import build_spark


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__.split("\n\n")[0])
    publishing.add_run_arguments(p)
    a = p.parse_args(argv)
    cli.setup_logging(a.verbose)
    spark = build_spark("r2ec-validate-run")
    run_id, version = publishing.find_run(spark, a)
    checks, counts = publishing.audit(spark, a.warehouse, a.run_date, a.variant, run_id,
                                      a.as_of or a.run_date, a.top_k, version, a.max_error_rate)
    ok = publishing.print_checks(checks)
    print(f"run {run_id} ({a.run_date}, {a.variant}): {counts['users']:,} users, "
          f"{counts['recommendations']:,} recommendations, "
          f"{'all checks passed' if ok else 'check(s) failed'}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    cli.run(main)
