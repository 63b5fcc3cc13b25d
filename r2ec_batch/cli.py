"""What every job shares: logging, common arguments, and one exit-code contract.

Exit status of every job: 0 done (or nothing to do); 1 a check found a problem in data that
was written (jobs/validate_run.py; jobs/publish.py and score.py --publish, which then publish
nothing); 2 the job refused to start or stopped on bad input, a bad
flag value, a missing table, an older table layout, a missing or corrupted checkpoint or index,
printed as one line beginning "error:", with nothing written. Anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
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
    for noisy in ("py4j", "urllib3", "filelock", "httpx", "accelerate", "faiss"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # accelerate warns on every save that tied embeddings were de-duplicated; that is expected.
    logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--warehouse", default=DEFAULT_WAREHOUSE,
                   help="where the Delta tables live: a folder or a URI such as s3a://bucket/wh "
                        "(env R2EC_WAREHOUSE)")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    return p


def iso_date(text: str) -> date:
    try:
        return datetime.strptime(text, "%Y-%m-%d").date()
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not a YYYY-MM-DD date: {text!r}") from e


# Upper bounds of the knobs a run may be given (CLI flags; the DAGs' Params use the same numbers,
# which tests/test_dags.py checks): beyond them a run is a mistake, not a setting. top_k 1e9
# asked for ~256 GB per worker; a huge reasoning budget holds the GPU pool for hours.
MAX_TOP_K = 1000
MAX_NEW_TOKENS = 1024
MAX_SAMPLES = 64
MAX_CHUNK = 4096


def _bounded(kind: type, what: str, lo, hi):
    """An argparse type: a `kind` value in [lo, hi], or a one-line error naming the bounds."""
    show = (lambda v: f"{v:g}") if kind is float else str

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from e
        if not lo <= value <= hi:  # also refuses a float nan
            raise argparse.ArgumentTypeError(f"{show(value)} is outside [{show(lo)}, {show(hi)}]")
        return value
    parse.__name__ = f"{what.split()[-1]} in [{show(lo)}, {show(hi)}]"
    return parse


def bounded_int(lo: int, hi: int):
    """An argparse type: an integer in [lo, hi]."""
    return _bounded(int, "an integer", lo, hi)


def bounded_float(lo: float, hi: float):
    """An argparse type: a number in [lo, hi]."""
    return _bounded(float, "a number", lo, hi)


def variant(text: str) -> str:
    """An output variant's name (a partition value): 1-64 letters, digits, '_' or '-'."""
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", text):
        raise argparse.ArgumentTypeError(f"not a variant name: {text!r} (use 1-64 letters, "
                                         "digits, '_' or '-', e.g. champion, challenger)")
    return text


def boolean(text: str) -> bool:
    """A flag's boolean value: true/false, yes/no, on/off, 1/0; anything else is an error
    (a typo such as `ture` must not silently mean False)."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {text!r} (use true or false)")


def run(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> None:
    """Run a job's main; turn expected errors into one line on stderr and exit status 2."""
    from r2ec.checkpoint import CheckpointError
    from r2ec.index import IndexMismatch
    from r2ec_batch.delta_io import TableMissing, TableOutdated
    from r2ec_batch.schemas import SchemaMismatch

    try:
        code = main(argv)
    except (JobError, TableMissing, TableOutdated, SchemaMismatch, CheckpointError, IndexMismatch,
            FileNotFoundError) as e:
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
        help_text = argparse_help(f.metadata.get("help", ""))
        if isinstance(default, bool):
            g.add_argument(flag, type=boolean, default=default, metavar="BOOL", help=help_text)
        elif isinstance(default, list):
            # the element type from the annotation (`list[float]`, `list[str]`, ...)
            elem = next((t for t in (float, int) if f"[{t.__name__}]" in str(f.type)), str)
            g.add_argument(flag, type=lambda s, elem=elem: [elem(x) for x in s.split(",") if x],
                           default=default, metavar="A,B", help=help_text)
        else:
            g.add_argument(flag, type=type(default), default=default, help=help_text)


def argparse_help(text: str) -> str:
    """A dataclass field's help as argparse takes it: '%' is argparse's format character."""
    return text.replace("%", "%%")


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


# Flags of the reasoning sampler (r2ec.config.SamplingConfig) in the scoring jobs: flag, field,
# argparse type. Defaults and help come from the dataclass, so they are written once.
SAMPLING_FLAGS = (("--temperature", "temperature", float),
                  ("--sampling-top-k", "top_k", bounded_int(0, 1_000_000)),
                  ("--top-p", "top_p", float),
                  ("--max-new-tokens", "max_new_tokens", bounded_int(1, MAX_NEW_TOKENS)),
                  ("--min-new-tokens", "min_new_tokens", bounded_int(0, MAX_NEW_TOKENS)),
                  ("--sampling-seed", "seed", int))


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    """The reasoning sampler's flags (`SAMPLING_FLAGS`), one group; `sampling_from_args` reads
    them back as a SamplingConfig."""
    import dataclasses

    from r2ec.config import SamplingConfig

    fields = {f.name: f for f in dataclasses.fields(SamplingConfig)}
    g = p.add_argument_group("reasoning sampler (r2ec.config.SamplingConfig)")
    for flag, name, kind in SAMPLING_FLAGS:
        g.add_argument(flag, dest=f"sampling_{name}", type=kind, default=fields[name].default,
                       help=argparse_help(fields[name].metadata["help"]))


def sampling_from_args(a: argparse.Namespace):
    from r2ec.config import SamplingConfig

    return SamplingConfig(**{name: getattr(a, f"sampling_{name}") for _, name, _ in SAMPLING_FLAGS})


CONFIG_SECTIONS = {"model": "", "warmstart": "ws_", "recpo": "rl_"}


def parse_with_config(p: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse argv, letting `--config FILE.json` (a frozen, dated config) set the defaults first;
    flags on the command line still win. Sections "model", "warmstart" and "recpo" map to the
    flags without prefix, with --ws- and with --rl-; keys are field names. Unknown keys fail."""
    import json

    p.add_argument("--config", help="JSON file of frozen settings (configs/*.json)")
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    if known.config:
        try:
            with open(known.config) as f:
                data = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            p.error(f"--config {known.config}: {e}")
        dests = {a.dest for a in p._actions}
        flat = {}
        for section, values in data.items():
            if section.startswith("_"):
                continue  # comments, provenance
            if section not in CONFIG_SECTIONS:
                p.error(f"{known.config}: unknown section {section!r}")
            prefix = CONFIG_SECTIONS[section]

            def walk(d: dict, pre: str) -> None:
                for k, v in d.items():
                    if isinstance(v, dict):
                        walk(v, f"{pre}{k}_")
                    else:
                        flat[f"{pre}{k}"] = v

            before = set(flat)
            walk(values, prefix)
            mine = set(flat) - before
            if not mine & dests:  # a section for another job (build_model has no --ws- flags)
                for k in mine:
                    del flat[k]
        unknown = sorted(k for k in flat if k not in dests)
        if unknown:
            p.error(f"{known.config}: unknown setting(s) {unknown}")
        p.set_defaults(**flat)
    return p.parse_args(argv)
