"""A job killed (SIGKILL) while writing leaves the previous table version readable and intact;
the re-run completes. And every table a job writes is readable without Spark (delta-rs)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from datetime import date
from pathlib import Path

import pytest
from deltalake import DeltaTable

from r2ec_batch.schemas import ALL_TABLES
from tests.conftest import ML100K_AS_OF, REPO

pytestmark = [pytest.mark.spark, pytest.mark.slow]


def _submit(args: list[str], env: dict | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [str(REPO / "bin" / "r2ec-submit"), *args], cwd=REPO, env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, **kw)


def _wait_for(proc: subprocess.Popen, needle: str, timeout: float) -> list[str]:
    seen, deadline = [], time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        if needle in line:
            return seen
    pytest.fail(f"{needle!r} never appeared; output:\n{''.join(seen[-40:])}")


def _snapshot(path: Path):
    df = DeltaTable(str(path)).to_pandas()
    return df.sort_values("sample_id").reset_index(drop=True)[["sample_id", "split",
                                                                "target_item_id"]]


def test_sigkill_mid_write_keeps_previous_version(ml_warehouse, tmp_path):
    wh = tmp_path / "wh"
    shutil.copytree(ml_warehouse, wh)
    table = wh / "training_samples"
    version, before = DeltaTable(str(table)).version(), _snapshot(table)
    files_before = set(p.name for p in table.rglob("*.parquet"))

    args = ["jobs/build_histories.py", "--warehouse", str(wh), "--skip-histories",
            "--as-of", ML100K_AS_OF]
    proc = _submit(args, env={"R2EC_FAULT_SLOW_WRITE_S": "3"})
    try:
        _wait_for(proc, "slowing this write down on purpose", timeout=300)
        # Kill as soon as the first new data file appears: tasks are writing, no commit yet.
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if set(p.name for p in table.rglob("*.parquet")) - files_before:
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the job finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)

    dt = DeltaTable(str(table))
    assert dt.version() == version, "no commit may appear from a killed write"
    assert _snapshot(table).equals(before)
    orphans = set(p.name for p in table.rglob("*.parquet")) - files_before
    assert orphans, "the kill should have landed while data files were being written"

    # the re-run in this process (the kill needed a process of its own; the re-run does not)
    from r2ec_batch.jobs import build_histories

    assert build_histories.main(args[1:]) == 0
    assert DeltaTable(str(table)).version() == version + 1
    assert _snapshot(table).equals(before)


def test_tables_read_without_spark(ml_warehouse):
    for name in ("interactions", "items", "training_samples", "user_histories"):
        dt = DeltaTable(str(ml_warehouse / name))
        cols = [f.name for f in dt.schema().fields]
        assert cols == ALL_TABLES[name].column_names, name
        assert list(dt.metadata().partition_columns) == list(ALL_TABLES[name].partition_by)
    hist = DeltaTable(str(ml_warehouse / "user_histories")).to_pyarrow_table(
        filters=[("as_of_date", "=", date.fromisoformat(ML100K_AS_OF))])
    assert hist.num_rows == 943
