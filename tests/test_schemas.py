"""schemas.conform: what it refuses, and that it fixes column order and safe widenings."""

from __future__ import annotations

from datetime import datetime

import pytest

from r2ec_batch.schemas import ALL_TABLES, EVALUATIONS, INTERACTIONS, SchemaMismatch, conform

pytestmark = pytest.mark.spark
NOW = datetime(2026, 1, 1)
COLS = ("user_id string, item_id string, ts timestamp, rating float, source string, "
        "ingested_at timestamp, source_file string, source_line long")


def test_every_table_key_and_partition_columns_exist():
    for spec in ALL_TABLES.values():
        assert set(spec.key) <= set(spec.column_names), spec.name
        assert set(spec.partition_by) <= set(spec.column_names), spec.name
        # Z-order columns are data columns (a partition column is already one value per folder)
        assert set(spec.cluster_by) <= set(spec.column_names) - set(spec.partition_by), spec.name
        assert spec.description


def _df(spark, rows, cols):
    return spark.createDataFrame(rows, cols)


def test_conform_reorders_and_accepts(spark):
    df = _df(spark, [(NOW, "u", "i", 4.0, "s", NOW, "f", 2)],
             "ingested_at timestamp, user_id string, item_id string, rating double, source string, "
             "ts timestamp, source_file string, source_line int")
    out = conform(df, INTERACTIONS)
    assert out.columns == INTERACTIONS.column_names
    assert dict(out.dtypes)["rating"] == "float" and dict(out.dtypes)["source_line"] == "bigint"


@pytest.mark.parametrize("mutate, message", [
    (lambda df: df.drop("source"), "missing column 'source'"),
    (lambda df: df.withColumn("extra", df.user_id), "unexpected column 'extra'"),
    (lambda df: df.withColumn("ts", df.user_id), "column 'ts' is string"),
])
def test_conform_refuses_shape(spark, mutate, message):
    df = _df(spark, [("u", "i", NOW, 4.0, "s", NOW, "f", 2)], COLS)
    with pytest.raises(SchemaMismatch, match=message):
        conform(mutate(df), INTERACTIONS)


def test_conform_refuses_nulls_and_duplicate_keys(spark):
    cols = COLS
    with pytest.raises(SchemaMismatch, match="null value.*'item_id'"):
        conform(_df(spark, [("u", None, NOW, 4.0, "s", NOW, "f", 2)], cols), INTERACTIONS)
    dup = _df(spark, [("u", "i", NOW, 4.0, "s", NOW, "f", 2), ("u", "i", NOW, 5.0, "s", NOW, "f", 3)],
              cols)
    with pytest.raises(SchemaMismatch, match="not unique"):
        conform(dup, INTERACTIONS)


def test_update_row_sets_one_row_and_writes_a_missing_one_whole(spark, tmp_path):
    """delta_io.update_row: one UPDATE commit that changes only the keyed row; a row that is not
    there is written whole; a key or a column the table lacks is refused before any commit."""
    from deltalake import DeltaTable

    from r2ec_batch import delta_io

    rows = [("u1", "i", NOW, 4.0, "s", NOW, "f", 1), ("u2", "i", NOW, 3.0, "s", NOW, "f", 2)]
    appended = int(delta_io.append(_df(spark, rows, COLS), INTERACTIONS, tmp_path)["version"])
    key = {"user_id": "u2", "item_id": "i", "ts": NOW}
    metrics = delta_io.update_row(spark, INTERACTIONS, tmp_path, key, {"rating": 5.0})
    assert metrics["operation"] == "UPDATE" and int(metrics["version"]) == appended + 1
    got = DeltaTable(str(tmp_path / "interactions")).to_pandas().set_index("user_id")
    assert got.loc["u2", "rating"] == 5.0 and got.loc["u1", "rating"] == 4.0
    assert got.loc["u2", "source_line"] == 2  # columns not named keep their values

    whole = {"rating": 2.0, "source": "s", "ingested_at": NOW, "source_file": "g",
             "source_line": 9}
    delta_io.update_row(spark, INTERACTIONS, tmp_path, {**key, "user_id": "u3"}, whole)
    got = DeltaTable(str(tmp_path / "interactions")).to_pandas().set_index("user_id")
    assert len(got) == 3 and got.loc["u3", "source_file"] == "g"

    with pytest.raises(SchemaMismatch, match="unknown column 'nope'"):
        delta_io.update_row(spark, INTERACTIONS, tmp_path, key, {"nope": 1})
    with pytest.raises(SchemaMismatch, match="null value.*'source'"):
        delta_io.update_row(spark, INTERACTIONS, tmp_path, key, {"source": None})
    with pytest.raises(ValueError, match="is not the table's key"):
        delta_io.update_row(spark, INTERACTIONS, tmp_path, {"user_id": "u2"}, {"rating": 1.0})
    assert DeltaTable(str(tmp_path / "interactions")).version() == appended + 2


@pytest.mark.slow
def test_jobs_creating_one_new_table_at_once_all_succeed(tmp_path):
    """The fine-tuning DAG's two evaluations may both be the first to write `evaluations`: two
    processes (two JVMs, as two Airflow tasks are) both try to create it at the same moment;
    one commit wins and the other must use the table rather than fail. The loser's log line
    proves the race happened."""
    import json
    import os
    import subprocess
    import sys
    import time

    from tests.conftest import REPO

    wh, go = tmp_path / "wh", tmp_path / "go"
    ready = [tmp_path / f"ready{i}" for i in range(2)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, str(REPO / "tests" / "create_table_child.py"),
                               str(wh), str(r), str(go)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in ready]
    deadline = time.time() + 300
    while not all(r.exists() for r in ready) and time.time() < deadline and \
            all(p.poll() is None for p in procs):
        time.sleep(0.05)
    go.touch()
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-3000:] for _, e in outs]
    columns = [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]
    assert columns == [EVALUATIONS.schema.fieldNames()] * 2
    assert sum("created by a concurrent job" in e for _, e in outs) == 1, \
        "no race: one process created the table before the other looked"
