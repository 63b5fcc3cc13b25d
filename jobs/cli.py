"""What every job shares: logging, common arguments, and the one-line error on bad input."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from datetime import date, datetime

DEFAULT_WAREHOUSE = os.environ.get("R2EC_WAREHOUSE", "warehouse")


class JobError(RuntimeError):
    """An expected failure (bad input, missing table, model/index mismatch): printed as one
    line naming the problem, exit status 2, nothing written."""


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
    for noisy in ("py4j", "urllib3", "filelock", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--warehouse", default=DEFAULT_WAREHOUSE,
                   help="folder holding the Delta tables (env R2EC_WAREHOUSE)")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    return p


def iso_date(text: str) -> date:
    try:
        return datetime.strptime(text, "%Y-%m-%d").date()
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not a YYYY-MM-DD date: {text!r}") from e


def run(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> None:
    """Run a job's main; turn expected errors into one line on stderr and exit status 2."""
    from jobs.delta_io import TableMissing
    from schemas import SchemaMismatch

    try:
        code = main(argv)
    except (JobError, TableMissing, SchemaMismatch, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        code = 2
    sys.exit(code or 0)
