"""Write-audit-publish on a real ML-100k warehouse (`scored`, conftest: the slice's users):
readers see only published runs; a run that fails its audit, or a job killed between its recommendations and
rationales commits, changes nothing for them; champion and challenger rows for one date
coexist; an older run can be published again (roll-back); tables of the layout before runs and
variants are migrated with their rows still visible."""

from __future__ import annotations

import subprocess
import time
from datetime import date

import pandas as pd
import pytest
from deltalake import DeltaTable

from r2ec_batch.jobs import build_model, embed_items, publish, score, validate_run
from r2ec_batch.live_runs import published
from tests.conftest import REPO, RUN, SLICE_USERS, SMALL, sigkill_when

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


def test_failed_audit_publishes_nothing_and_an_older_run_can_come_back(scored_copy, capsys):
    wh, _ = scored_copy
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


def test_sigkill_between_the_two_table_writes_leaves_readers_consistent(scored_copy):
    wh, _ = scored_copy
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


def test_champion_and_challenger_side_by_side(scored_copy, tmp_path, capsys):
    wh, _ = scored_copy
    champion = _view(wh)
    other = tmp_path / "challenger"
    assert build_model.main(["--out", str(other), "--register", "candidate", "--warehouse",
                             str(wh), "--seed", "7", *SMALL]) == 0
    assert embed_items.main(["--model", str(other), "--warehouse", str(wh)]) == 0
    assert score.main(["--run-date", RUN, "--variant", "challenger", "--model", str(other),
                       "--publish", "--warehouse", str(wh), "--max-new-tokens", "6"]) == 0
    challenger = _view(wh, variant="challenger")
    assert _view(wh).equals(champion)  # the champion's rows are untouched
    assert challenger["user_id"].nunique() == SLICE_USERS and len(challenger) == 10 * SLICE_USERS
    assert challenger["model_version"].nunique() == 1
    assert challenger["model_version"][0] != champion["model_version"][0]
    # The README's A/B export: one list per user and variant, users split by a hash.
    both = published(str(wh), "recommendations", None)
    both = both[both["run_date"].astype(str) == RUN]
    assert set(both["variant"]) == {"champion", "challenger"} and len(both) == 2 * 10 * SLICE_USERS
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


def test_two_evaluations_in_parallel_both_land(scored, spark, tmp_path, monkeypatch):
    """The fine-tuning DAG evaluates candidate and champion at the same time: evaluations are
    appended (no MERGE to conflict), and every evaluation keeps its own rows. Two processes, each
    with its own JVM: a submitted job, and this test's session in a thread. Both `evaluations`
    writes are held open (R2EC_FAULT_HOLD_WRITE) until both have started, then released
    together; the table's log must show that the transactions overlapped: the second commit was
    made from the snapshot both started from. (A second submitted job would race the same way
    and cost one more JVM start.)"""
    import logging
    import os
    import shutil
    import threading

    from r2ec_batch import delta_io
    from r2ec_batch.jobs import evaluate
    from r2ec_batch.schemas import EVALUATIONS

    wh = tmp_path / "wh"
    shutil.copytree(scored[0], wh)  # this test's own copy: it adds evaluations
    delta_io.ensure_table(spark, wh, EVALUATIONS)
    table, hold = wh / "evaluations", tmp_path / "hold"
    before, start = DeltaTable(str(table)).to_pandas(), DeltaTable(str(table)).version()
    hold.touch()
    monkeypatch.setenv("R2EC_FAULT_HOLD_WRITE", f"evaluations:{hold}")

    def args(split: str) -> list[str]:
        return ["--split", split, "--limit", "40", "--max-new-tokens", "4", "--warehouse", str(wh)]

    child = subprocess.Popen([str(REPO / "bin" / "r2ec-submit"), "jobs/evaluate.py",
                              *args("valid")], cwd=REPO, env=dict(os.environ),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, held = [], [threading.Event(), threading.Event()]

    def read() -> None:
        for line in child.stdout:
            out.append(line)
            if "holding the write of evaluations" in line:
                held[0].set()

    class Held(logging.Handler):  # this process's evaluation says the same through logging
        def emit(self, record: logging.LogRecord) -> None:
            if "holding the write of" in record.getMessage():
                held[1].set()

    here: dict[str, object] = {}

    def evaluate_here() -> None:
        try:
            here["rc"] = evaluate.main(args("test"))
        except BaseException as e:  # noqa: BLE001 - reported by the assert below
            here["error"] = e

    handler = Held()
    logging.getLogger("r2ec_batch.delta_io").addHandler(handler)
    threads = [threading.Thread(target=read, daemon=True),
               threading.Thread(target=evaluate_here, daemon=True)]
    for t in threads:
        t.start()
    try:
        both = all(h.wait(timeout=600) for h in held)
        if both:
            time.sleep(3)  # each has read its snapshot and is writing its files
    finally:
        hold.unlink()
        logging.getLogger("r2ec_batch.delta_io").removeHandler(handler)
    child.wait(timeout=600)
    for t in threads:
        t.join(timeout=600)
    if child.returncode:  # pytest.fail: the whole tail, where an assert message is cut short
        pytest.fail(f"evaluate --split valid exited {child.returncode}:\n{''.join(out)[-6000:]}")
    assert here == {"rc": 0}, here
    assert both, "an evaluation never reached its evaluations write"
    ev = DeltaTable(str(table)).to_pandas()
    new = ev[~ev["evaluated_at"].isin(set(before["evaluated_at"]))]
    assert set(new["split"]) == {"valid", "test"} and (new["n_samples"] == 40).all()
    assert new["data_version"].notna().all()
    assert len(ev) == len(before) + len(new)  # nothing overwritten
    commits = sorted((h for h in DeltaTable(str(table)).history() if h["version"] > start),
                     key=lambda h: h["version"])
    assert [h["operation"] for h in commits] == ["WRITE", "WRITE"], commits
    assert commits[1]["readVersion"] == start, "no overlap: the evaluations ran one after the other"


def test_publish_racing_a_rescore_of_the_same_date_keeps_the_rows(scored, tmp_path):
    """`publish` audits a run and, before it appends the publication, a `score.py` of the same
    (date, variant) runs in another process (the publisher is held between the two steps,
    `R2EC_FAULT_HOLD_PUBLISH`). Scoring used to delete the date's unpublished runs
    first, so the audited run was published without rows and readers saw none. Now scoring
    deletes nothing: the published run is whole."""
    import os
    import shutil

    wh = tmp_path / "wh"
    shutil.copytree(scored[0], wh)  # this test's own copy: it adds runs
    assert score.main(["--run-date", RUN, "--warehouse", str(wh), "--max-new-tokens", "6"]) == 0
    audited = _runs(wh)[-1]
    hold = tmp_path / "hold"
    hold.touch()
    env = {**os.environ, "R2EC_FAULT_HOLD_PUBLISH": str(hold)}
    submit = [str(REPO / "bin" / "r2ec-submit"), "--conf", "spark.ui.showConsoleProgress=false"]
    publisher = subprocess.Popen([*submit, "jobs/publish.py", "--run-date", RUN, "--run-id", audited,
                                  "--warehouse", str(wh)], cwd=REPO, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in publisher.stdout:  # wait until it has audited and is holding the run
        lines.append(line)
        if "holding while" in line:
            break
    assert any("holding while" in x for x in lines), "".join(lines)[-3000:]
    # the re-score in this process: the race is between it and the publisher's process
    assert score.main(["--run-date", RUN, "--max-new-tokens", "6", "--warehouse", str(wh)]) == 0
    assert publisher.poll() is None, "no overlap: the publisher did not hold the audited run"
    hold.unlink()  # the re-score is done: let the publisher append its publication
    assert len(_runs(wh)) >= 3 and audited in _runs(wh)  # the re-score wrote a run, deleted none
    rest = publisher.communicate(timeout=600)[0]
    assert publisher.returncode == 0, rest[-3000:]
    view = _view(wh)
    assert set(view["run_id"]) == {audited} and len(view) == 10 * SLICE_USERS
    assert len(_view(wh, "rationales")) == SLICE_USERS


def test_clean_up_deletes_only_old_never_published_runs(spark, tmp_path, capsys):
    from datetime import datetime, timedelta

    from r2ec_batch import delta_io, publishing
    from r2ec_batch.jobs import maintain_tables
    from r2ec_batch.schemas import PUBLISHED_RUNS, RATIONALES, RECOMMENDATIONS

    wh = tmp_path / "wh"
    now = datetime(2026, 12, 1)
    ids = {"old_unpublished": publishing.new_run_id(now - timedelta(days=9)),
           "old_published": publishing.new_run_id(now - timedelta(days=9)),
           "young_unpublished": publishing.new_run_id(now - timedelta(days=2))}
    d = date(2026, 11, 20)
    recs = [(d, "champion", rid, "u1", 1, "i1", 1.0, "r2ec-000000000000") for rid in ids.values()]
    rats = [(d, "champion", rid, "u1", "why", 3, "h", None, "r2ec-000000000000")
            for rid in ids.values()]
    delta_io.append(spark.createDataFrame(recs, RECOMMENDATIONS.schema), RECOMMENDATIONS, wh)
    delta_io.append(spark.createDataFrame(rats, RATIONALES.schema), RATIONALES, wh)
    pub = [(d, "champion", ids["old_published"], "r2ec-000000000000", d, 1, 1, 1, now, "t", 0)]
    delta_io.append(spark.createDataFrame(pub, PUBLISHED_RUNS.schema), PUBLISHED_RUNS, wh)
    with pytest.raises(ValueError, match="longer than the publish window"):
        publishing.drop_unpublished(spark, wh, timedelta(days=2), now=now)
    assert publishing.drop_unpublished(spark, wh, now=now) == 1
    left = set(DeltaTable(str(wh / "recommendations")).to_pandas()["run_id"])
    assert left == {ids["old_published"], ids["young_unpublished"]}
    assert set(DeltaTable(str(wh / "rationales")).to_pandas()["run_id"]) == left
    # the job's own guard: a clean-up window inside the publish window is refused
    with pytest.raises(SystemExit):
        maintain_tables.main(["--unpublished-days", "3", "--warehouse", str(wh)])
    # and a never-published run past its window cannot be published any more
    from r2ec_batch.cli import JobError

    with pytest.raises(JobError, match="never published; runs are publishable for 3 days"):
        publishing.publish_if_sound(spark, wh, d, "champion", publishing.new_run_id(
            datetime.now() - timedelta(days=4)), d, 1, None, job="test")


def test_the_newest_run_of_a_migrated_date_is_the_new_one(spark, tmp_path):
    """'legacy-<date>' runs (from the layout before runs existed) sorted after '2026...Z-...'
    as strings, so publish took the legacy run for the newest one and never the new run."""
    from datetime import datetime

    from r2ec_batch import delta_io, publishing
    from r2ec_batch.schemas import RECOMMENDATIONS

    wh, d = tmp_path / "wh", date(2026, 1, 1)
    new = publishing.new_run_id(datetime(2026, 1, 2))
    rows = [(d, "champion", rid, "u1", 1, "i1", 1.0, "r2ec-0123456789ab")
            for rid in ("legacy-2026-01-01", new)]
    delta_io.append(spark.createDataFrame(rows, RECOMMENDATIONS.schema), RECOMMENDATIONS, wh)
    assert max(["legacy-2026-01-01", new]) == "legacy-2026-01-01"  # the old rule's answer
    assert publishing.newest_run_id(spark, wh, d, "champion") == new
    assert publishing.run_time(new) == datetime(2026, 1, 2)
    assert publishing.run_time("legacy-2026-01-01") is None
