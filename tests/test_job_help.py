"""Every job's --help prints its usage and exits 0 (a '%' in a help string taken from a
dataclass once made argparse crash on --help instead)."""

from __future__ import annotations

import importlib

import pytest

from tests.conftest import REPO

JOBS = sorted(p.stem for p in (REPO / "jobs").glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("job", JOBS)
def test_help_prints_usage(job, capsys):
    module = importlib.import_module(f"r2ec_batch.jobs.{job}")
    with pytest.raises(SystemExit) as e:
        module.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage:") and len(out.splitlines()) > 3
