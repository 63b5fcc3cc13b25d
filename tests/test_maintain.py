"""jobs/maintain_tables.py: compaction Z-orders by the schema's columns and keeps the data,
VACUUM keeps time travel within the retention and deletes only beyond it, and a re-run
changes no table property."""

from __future__ import annotations

from datetime import date

import pytest
from deltalake import DeltaTable

from r2ec_batch import delta_io
from r2ec_batch.jobs import maintain_tables
from r2ec_batch.schemas import RECOMMENDATIONS
from r2ec_batch.session import LISTING_PARALLELISM

pytestmark = pytest.mark.spark


def _write(spark, wh, n_files: int, score: float) -> None:
    rows = [(date(2026, 1, 1), "champion", "r1", f"u{u}", 1, f"i{u}", score, "m")
            for u in range(40)]
    df = spark.createDataFrame(rows, RECOMMENDATIONS.schema).repartition(n_files)
    delta_io.overwrite(df, RECOMMENDATIONS, wh)


def _history(wh) -> list[str]:
    return [h["operation"] for h in DeltaTable(str(wh / "recommendations")).history()]


@pytest.mark.slow
def test_optimize_and_vacuum_keep_time_travel_within_the_retention(spark, tmp_path, capsys):
    wh = tmp_path / "wh"
    _write(spark, wh, 8, 1.0)   # version 1 (0 created the table)
    _write(spark, wh, 8, 2.0)   # version 2: version 1's files are now removed, still on disk
    v1 = DeltaTable(str(wh / "recommendations")).version() - 1
    args = ["--tables", "recommendations", "--warehouse", str(wh)]
    assert maintain_tables.main(args) == 0
    assert "8        1  user_id" in capsys.readouterr().out.replace(",", "")  # 8 files -> 1
    assert "OPTIMIZE" in _history(wh)
    now = DeltaTable(str(wh / "recommendations")).to_pandas()
    assert len(now) == 40 and (now["score"] == 2.0).all()  # compaction changed no row
    # within the 7-day retention: the older version still reads
    old = DeltaTable(str(wh / "recommendations"), version=v1).to_pandas()
    assert len(old) == 40 and (old["score"] == 1.0).all()
    props = DeltaTable(str(wh / "recommendations")).metadata().configuration
    assert props["delta.deletedFileRetentionDuration"] == "interval 168 hours"

    # a re-run sets no property again (no metadata commit that would conflict with writers)
    before = _history(wh).count("SET TBLPROPERTIES")
    assert maintain_tables.main(args) == 0
    assert _history(wh).count("SET TBLPROPERTIES") == before

    # shorter than Delta's safety minimum: refused unless asked for ...
    with pytest.raises(SystemExit) as refused:
        maintain_tables.main([*args, "--retention-hours", "0"])
    assert refused.value.code == 2 and "--allow-short-retention" in capsys.readouterr().err
    # ... and then the older version's files are gone, the current one intact
    assert maintain_tables.main([*args, "--retention-hours", "0", "--allow-short-retention",
                                 "--no-optimize"]) == 0
    # delta-rs reads the old version's log entry, then misses its data files
    with pytest.raises(FileNotFoundError, match="not found"):
        DeltaTable(str(wh / "recommendations"), version=v1).to_pandas()
    assert len(DeltaTable(str(wh / "recommendations")).to_pandas()) == 40
    assert spark.conf.get("spark.databricks.delta.retentionDurationCheck.enabled", "true") == "true"
    # VACUUM's file listing runs in a handful of tasks on a local master (Spark's default,
    # 10,000 tasks, made each VACUUM of a tiny table take ~25 s here)
    assert int(spark.conf.get(LISTING_PARALLELISM)) <= 8


def test_unknown_table_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as refused:
        maintain_tables.main(["--tables", "recomendations", "--warehouse", str(tmp_path)])
    assert refused.value.code == 2 and "recomendations" in capsys.readouterr().err
