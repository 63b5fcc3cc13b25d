"""jobs/register_tables.py + jobs/sql.py: every table gets a name with the comments of
`schemas/`, the README's analyst SQL runs as it is by table name, and a re-run commits nothing.

The catalog needs a Hive-enabled session, which is fixed when a JVM starts (the suite's shared
session has none), so the jobs run in one child process of their own."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from deltalake import DeltaTable

from r2ec_batch.jobs.sql import statements
from r2ec_batch.schemas.comments import missing_comments

REPO = Path(__file__).resolve().parents[1]

_CHILD = """
import json, pathlib, sys
sys.stderr = sys.stdout  # the jobs' log lines in order with the markers below
from deltalake import DeltaTable
from r2ec_batch.jobs import register_tables, sql
wh, meta, script = sys.argv[1:4]
common = ["--warehouse", wh, "--metastore", meta]
def versions():
    return {p.name: DeltaTable(str(p)).version() for p in pathlib.Path(wh).iterdir()
            if (p / "_delta_log").is_dir()}
assert register_tables.main(common) == 0
print("=== SQL", flush=True)
assert sql.main(["-f", script, "--max-rows", "30", *common]) == 0
before = versions()
print("=== AGAIN", flush=True)
assert register_tables.main(common) == 0
print("=== VERSIONS", json.dumps([before, versions()]), flush=True)
"""


def readme_sql() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- tests/test_catalog.py[^\n]*\n```sql\n(.*?)```", text, re.S)
    assert block, "the README lost its analyst SQL block (marked for tests/test_catalog.py)"
    return block.group(1)


def test_every_column_of_every_table_has_a_comment():
    assert missing_comments() == []


def test_sql_script_splitting():
    script = "-- a comment; not a statement\nSELECT 1;\nSELECT 'a--b'\n  FROM t; -- tail\n\nSHOW TABLES"
    assert statements(script) == ["SELECT 1", "SELECT 'a--b'\n  FROM t", "SHOW TABLES"]


@pytest.mark.slow
@pytest.mark.spark
def test_register_tables_then_the_readme_sql_runs_by_name(evaluated, tmp_path):
    wh = evaluated  # a copy: the comments are Delta commits, the shared `scored` stays as it is
    script = tmp_path / "readme.sql"
    script.write_text(readme_sql(), encoding="utf-8")
    env = {**os.environ, "R2EC_SPARK_LOG_LEVEL": "ERROR"}
    run = subprocess.run([sys.executable, "-c", _CHILD, str(wh), str(tmp_path / "meta"), str(script)],
                         cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, timeout=900)
    out = run.stdout
    if run.returncode != 0:
        pytest.fail(f"the catalog jobs failed:\n{out[-6000:]}")
    first, rest = out.split("=== SQL", 1)
    queries, again = rest.split("=== AGAIN", 1)
    before, after = json.loads(again.split("=== VERSIONS", 1)[1].splitlines()[0])
    assert "`r2ec`.`recommendations`: registered, table comment" in first
    assert "published_recommendations" in first and "view (re)created" in first
    # every statement of the README block ran and printed its result
    assert queries.count("\n> ") + queries.startswith("> ") >= len(statements(readme_sql())) - 1
    assert "|the user" in queries                       # DESCRIBE shows the column comments
    # the first query: user 196's list in the latest published champion run, ranks 1, 2, 3, ...
    top = re.findall(r"^\|\d{4}-\d\d-\d\d\|(\d+)\s*\|", re.split(r"^> ", queries, flags=re.M)[1], re.M)
    assert top[:3] == ["1", "2", "3"], queries[:3000]
    # comments are in the Delta tables themselves, so any reader sees them
    field = DeltaTable(str(wh / "recommendations")).schema().fields[0]
    assert field.metadata.get("comment", "").startswith("the day the lists are for")
    # a re-run changes nothing: every table "already up to date", no new Delta commit
    assert again.count("already up to date") == len(before) and "column comment" not in again
    assert after == before and len(before) >= 10
    assert not (tmp_path / "derby.log").exists()  # Derby's log stays in the metastore folder
