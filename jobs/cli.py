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


def add_dataclass_args(p: argparse.ArgumentParser, cls, prefix: str = "", group: str | None = None) -> None:
    """One --flag per dataclass field (nested dataclasses get a prefix), help from the field's
    metadata, defaults shown; `dataclass_from_args` reads them back."""
    import dataclasses

    g = p.add_argument_group(group or cls.__name__)
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if dataclasses.is_dataclass(default):
            add_dataclass_args(p, type(default), f"{prefix}{f.name}-", f"{cls.__name__}.{f.name}")
            continue
        flag = f"--{prefix}{f.name}".replace("_", "-")
        help_text = f.metadata.get("help", "")
        if isinstance(default, bool):
            g.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes", "on"),
                           default=default, metavar="BOOL", help=help_text)
        elif isinstance(default, list):
            g.add_argument(flag, type=lambda s: s.split(","), default=default, metavar="A,B",
                           help=help_text)
        else:
            g.add_argument(flag, type=type(default), default=default, help=help_text)


def dataclass_from_args(args: argparse.Namespace, cls, prefix: str = ""):
    import dataclasses

    kw = {}
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if dataclasses.is_dataclass(default):
            kw[f.name] = dataclass_from_args(args, type(default), f"{prefix}{f.name}_")
        else:
            kw[f.name] = getattr(args, f"{prefix}{f.name}")
    return cls(**kw)


def spark_to_pandas(df):
    """toPandas with Arrow; arrays of timestamps come back as numpy datetime64 values."""
    return df.toPandas()
