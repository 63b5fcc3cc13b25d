"""How the suite's tests are ordered and shared out between pytest-xdist workers.

`make test` runs two workers (`-n 2 --dist loadscope --no-loadscope-reorder`), one per core, each
with a Spark session of its own. A worker takes one *unit* at a time: a module, or every module
that uses one of the costly shared warehouse fixtures (SHARED_FIXTURES, each an ingest by the
real jobs). A unit's modules run in one worker, so each such fixture is built once per run, not
once per worker. Units go out longest first (the cluster, then by number of slow tests), so the
long ones start at once instead of one of them ending the run on one worker while the other
waits. A serial run sees the same order, which no test may depend on.

pytest-xdist's own way to group (`--dist loadgroup` with `xdist_group` marks) does not group on
pytest 9.2, whose node ids no longer take the group suffix that it writes (pytest-xdist issue
1386). So the workers, which collect the tests, write each module's unit to a file
($R2EC_TEST_UNITS, a path the controller chooses before they start), and the controller's
scheduler, a LoadScopeScheduling whose scope of a test is its module's unit, reads it once every
worker has collected. Without the file (one process, or another --dist) nothing changes.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

SHARED_FIXTURES = ("slice_warehouse", "ml_warehouse")
UNITS_FILE = "R2EC_TEST_UNITS"


def module_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def unit_of(module_items) -> str:
    """The first shared fixture a module's tests use (directly or through another fixture),
    else the module itself."""
    used = set().union(*(item.fixturenames for item in module_items))
    return next((f for f in SHARED_FIXTURES if f in used), module_of(module_items[0].nodeid))


def weight(unit_items) -> tuple[int, int]:
    """How long a unit is likely to take, from its marks (smaller sorts first)."""
    names = [{m.name for m in item.iter_markers()} for item in unit_items]
    if any("cluster" in n for n in names):
        return (0, 0)
    return (1, -sum("slow" in n for n in names))


def order(items: list) -> dict[str, str]:
    """Reorder `items` in place, unit by unit, longest first; returns each module's unit."""
    modules: dict[str, list] = {}
    for item in items:
        modules.setdefault(module_of(item.nodeid), []).append(item)
    units: dict[str, list] = {}
    unit_by_module = {}
    for name, module_items in modules.items():
        unit_by_module[name] = unit = unit_of(module_items)
        units.setdefault(unit, []).extend(module_items)
    ordered = sorted(units.values(), key=weight)  # stable: equal weights keep file order
    items[:] = [item for unit_items in ordered for item in unit_items]
    return unit_by_module


def choose_units_file(config: pytest.Config) -> None:
    """In the controller of an xdist run, before the workers start: where they write units."""
    if getattr(config, "workerinput", None) is None and config.getoption("dist", "no") != "no":
        os.environ[UNITS_FILE] = str(Path(tempfile.mkdtemp(prefix="r2ec-units-")) / "units.json")


def forget_units_file(config: pytest.Config) -> None:
    """In the controller, at the end of the run: remove the folder (and a killed worker's part)."""
    path = os.environ.get(UNITS_FILE)
    if path and getattr(config, "workerinput", None) is None:
        shutil.rmtree(Path(path).parent, ignore_errors=True)


def write_units(config: pytest.Config, unit_by_module: dict[str, str]) -> None:
    """In a worker: write the units (every worker collects the same tests, so writes the same)."""
    path = os.environ.get(UNITS_FILE)
    if path and getattr(config, "workerinput", None) is not None:
        partial = f"{path}.{os.getpid()}"
        Path(partial).write_text(json.dumps(unit_by_module))
        os.replace(partial, path)  # whole or absent


class UnitScheduling:
    """A plugin, registered only when pytest-xdist is there: loadscope with units as scopes."""

    @pytest.hookimpl
    def pytest_xdist_make_scheduler(self, config, log):
        if config.getvalue("dist") != "loadscope" or not os.environ.get(UNITS_FILE):
            return None
        from xdist.scheduler import LoadScopeScheduling

        class Units(LoadScopeScheduling):
            units: dict[str, str] | None = None

            def _split_scope(self, nodeid: str) -> str:
                module = module_of(nodeid)
                if self.units is None:  # read once all workers have collected (and written)
                    path = Path(os.environ[UNITS_FILE])
                    self.units = json.loads(path.read_text()) if path.is_file() else {}
                return self.units.get(module, module)

        return Units(config, log)
