"""Print where the pipeline's output is and what it says: the metrics table of the champion,
and one user's recommendations with titles and rationale; with --html, also write the HTML
report (plots of accuracy over time, list and input health, three example users; see
`r2ec_batch/report_html.py`; the text is `r2ec_batch/report_text.py`). Reads Delta with
deltalake (no Spark), the way an analyst's notebook would.

    bin/r2ec-python jobs/report.py --warehouse warehouse
    bin/r2ec-python jobs/report.py --warehouse warehouse --html warehouse/_reports/latest.html
"""

from __future__ import annotations

import argparse
import os
import sys

from r2ec_batch import storage
from r2ec_batch.report_text import summary


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--warehouse", default="warehouse", help="a folder or a URI (s3a://bucket/wh)")
    p.add_argument("--user", help="user to show (default: the first one)")
    p.add_argument("--html", help="also write the HTML report to this file / URI")
    p.add_argument("--variant", default="champion", help="variant the HTML report is about")
    p.add_argument("--run-date", help="HTML report: the latest published run up to this date "
                                      "(YYYY-MM-DD; default: the latest)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    wh = storage.resolve(a.warehouse)
    if a.html:
        from r2ec_batch.report_html import render

        html, shown = render(wh, variant=a.variant, run_date=a.run_date)
        where = storage.write_text(storage.resolve(a.html), html)
        print(f"HTML report ({len(shown['figures'])} plots, {len(html) / 1e6:.1f} MB): {where}")
    print(summary(wh, a.user))
    return 0


def exit_now(code: int) -> None:
    """Leave without the interpreter's clean-up. The Delta reads run on Arrow's own threads,
    which can still be releasing the table's file handler (Python objects) once the report is
    written; one that does so while the interpreter shuts down aborts the process ("terminate
    called without an active exception", exit 134): 1 run in 6 on 2 cores, none in 24 this way.
    Everything is written and closed by now; only the standard streams need flushing."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
