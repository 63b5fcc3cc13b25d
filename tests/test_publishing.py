"""Write-audit-publish on the real ML-100k warehouse (`scored`, conftest): readers see only
published runs; a run that fails its audit, or a job killed between its recommendations and
rationales commits, changes nothing for them; champion and challenger rows for one date
coexist; an older run can be published again (roll-back); tables of the layout before runs and
variants are migrated with their rows still visible."""

from __future__ import annotations

import subprocess
from datetime import date

import pandas as pd
import pytest
from deltalake import DeltaTable

from r2ec_batch.jobs import build_model, embed_items, publish, score, validate_run
from r2ec_batch.jobs.report import published
from tests.conftest import REPO, RUN, SMALL, sigkill_when

pytestmark = [pytest.mark.spark, pytest.mark.slow]
KEY = ["user_id", "rank"]


def _view(wh, name="recommendations", variant="champion", run_date=RUN) -> pd.DataFrame:
    rows = published(str(wh), name, variant)
    rows = rows[rows["run_date"].astype(str) == run_date]
    return rows.sort_values(KEY if name == "recommendations" else ["user_id"]).reset_index(drop=True)


def _runs(wh, run_date=RUN, variant="champion") -> list[str]:
    raw = DeltaTable(str(wh / "recommendations")).to_pandas()
    raw = raw[(raw["run_date"].astype(str) == run_date) & (raw["variant"] == variant)]
    return sorted(raw["run_id"].unique())


def test_failed_audit_publishes_nothing_and_an_older_run_can_come_back(scored, capsys):
    wh, _ = scored
    before = _view(wh)
    # A run whose rows are fine but do not have the k the audit expects (scored with k = 5).
    assert score.main(["--run-date", RUN, "--top-k", "5", "--warehouse", str(wh),
                       "--max-new-tokens", "6"]) == 0
    staged = _runs(wh)[-1]
    assert staged not in set(before["run_id"])
    assert _view(wh).equals(before)  # written, not visible
    assert validate_run.main(["--run-date", RUN, "--warehouse", str(wh)]) == 1
    assert publish.main(["--run-date", RUN, "--top-k", "10", "--warehouse", str(wh)]) == 1
    out = capsys.readouterr().out
    assert "FAIL recommendation rows == users x 10" in out and "nothing was published" in out
    assert _view(wh).equals(before) and _view(wh, "rationales")["run_id"].nunique() == 1
    # Published with the k it was scored with, it passes: both tables switch together.
    assert publish.main(["--run-date", RUN, "--top-k", "5", "--warehouse", str(wh)]) == 0
    assert set(_view(wh)["run_id"]) == set(_view(wh, "rationales")["run_id"]) == {staged}
    assert (_view(wh).groupby("user_id").size() == 5).all()
    # Roll back: the earlier run is still there until the next scoring of this date.
    old = before["run_id"][0]
    assert publish.main(["--run-date", RUN, "--run-id", old, "--warehouse", str(wh)]) == 0
    assert _view(wh).equals(before)


def test_sigkill_between_the_two_table_writes_leaves_readers_consistent(scored):
    wh, _ = scored
    before_recs, before_rats = _view(wh), _view(wh, "rationales")
    runs_before = set(_runs(wh))
    rats_dir = wh / "rationales"
    files = {p.name for p in rats_dir.rglob("*.parquet")}
    args = ["jobs/score.py", "--run-date", RUN, "--warehouse", str(wh), "--max-new-tokens", "6"]
    # killed once the new run's recommendations are committed and rationales are being written
    sigkill_when(args, lambda: bool(set(_runs(wh)) - runs_before
                                    and {p.name for p in rats_dir.rglob("*.parquet")} - files), 2)
    half = _runs(wh)[-1]
    rats = DeltaTable(str(rats_dir)).to_pandas()
    assert half not in set(before_recs["run_id"]) and half not in set(rats["run_id"])
    assert _view(wh).equals(before_recs) and _view(wh, "rationales").equals(before_rats)
    # The half-written run cannot be published: its rationales are missing.
    assert publish.main(["--run-date", RUN, "--warehouse", str(wh)]) == 1
    assert _view(wh).equals(before_recs)


def test_champion_and_challenger_side_by_side(scored, tmp_path, capsys):
    wh, _ = scored
    champion = _view(wh)
    other = tmp_path / "challenger"
    assert build_model.main(["--out", str(other), "--register", "candidate", "--warehouse",
                             str(wh), "--seed", "7", *SMALL]) == 0
    assert embed_items.main(["--model", str(other), "--warehouse", str(wh)]) == 0
    assert score.main(["--run-date", RUN, "--variant", "challenger", "--model", str(other),
                       "--publish", "--warehouse", str(wh), "--max-new-tokens", "6"]) == 0
    challenger = _view(wh, variant="challenger")
    assert _view(wh).equals(champion)  # the champion's rows are untouched
    assert challenger["user_id"].nunique() == 943 and len(challenger) == 9430
    assert challenger["model_version"].nunique() == 1
    assert challenger["model_version"][0] != champion["model_version"][0]
    # The README's A/B export: one list per user and variant, users split by a hash.
    both = published(str(wh), "recommendations", None)
    both = both[both["run_date"].astype(str) == RUN]
    assert set(both["variant"]) == {"champion", "challenger"} and len(both) == 2 * 9430
    with pytest.raises(SystemExit) as e:
        score.cli.run(score.main, ["--run-date", RUN, "--variant", "bad name!",
                                   "--warehouse", str(wh)])
    assert e.value.code == 2 and "not a variant name" in capsys.readouterr().err


def test_tables_of_the_older_layout_are_migrated_and_stay_visible(spark, tmp_path):
    from pyspark.sql import functions as F

    from r2ec_batch import publishing

    wh = tmp_path / "wh"
    old_recs = spark.createDataFrame(
        [(date(2026, 1, 1), "u1", r, f"i{r}", 1.0 / r, "mv") for r in (1, 2)],
        "run_date date, user_id string, rank int, item_id string, score float, "
        "model_version string")
    old_rats = spark.createDataFrame([(date(2026, 1, 1), "u1", "why", 3, "h", None, "mv")],
                                     "run_date date, user_id string, text string, tokens int, "
                                     "history_hash string, fallback string, model_version string")
    old_recs.write.format("delta").partitionBy("run_date").save(str(wh / "recommendations"))
    old_rats.write.format("delta").partitionBy("run_date").save(str(wh / "rationales"))
    publishing.migrate(spark, wh)
    publishing.migrate(spark, wh)  # a second call changes nothing
    view = published(str(wh), "recommendations")
    assert list(view.sort_values("rank")["item_id"]) == ["i1", "i2"]
    assert set(view["run_id"]) == {"legacy-2026-01-01"} and set(view["variant"]) == {"champion"}
    assert len(published(str(wh), "rationales")) == 1
    runs = spark.read.format("delta").load(str(wh / "published_runs"))
    assert runs.count() == 1 and runs.filter(F.col("top_k") == 2).count() == 1
    parts = DeltaTable(str(wh / "recommendations")).metadata().partition_columns
    assert parts == ["run_date", "variant"]


def test_two_evaluations_in_parallel_both_land(scored):
    """The fine-tuning DAG evaluates candidate and champion at the same time: evaluations are
    appended (no MERGE to conflict), and every evaluation keeps its own rows."""
    wh, _ = scored
    before = DeltaTable(str(wh / "evaluations")).to_pandas() \
        if (wh / "evaluations").is_dir() else pd.DataFrame(columns=["evaluated_at"])
    procs = [subprocess.Popen([str(REPO / "bin" / "r2ec-submit"), "jobs/evaluate.py", "--split",
                               split, "--limit", "40", "--max-new-tokens", "4", "--warehouse",
                               str(wh)], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
             for split in ("valid", "test")]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    for split, p, out in zip(("valid", "test"), procs, outs, strict=True):
        if p.returncode:  # pytest.fail: the whole tail, where an assert message is cut short
            pytest.fail(f"evaluate --split {split} exited {p.returncode}:\n{out[-6000:]}")
    ev = DeltaTable(str(wh / "evaluations")).to_pandas()
    new = ev[~ev["evaluated_at"].isin(set(before["evaluated_at"]))]
    assert set(new["split"]) == {"valid", "test"} and (new["n_samples"] == 40).all()
    assert new["data_version"].notna().all()
    assert len(ev) == len(before) + len(new)  # nothing overwritten
