"""The Airflow DAGs: they import cleanly and fast, their graphs and settings are as documented,
the nightly DAG runs end to end with `dag.test()` on a slice of ML-100k, and a re-run of the
same logical date changes nothing. Airflow runs in subprocesses with a temporary AIRFLOW_HOME
(SQLite), so its configuration never leaks into the rest of the test session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from deltalake import DeltaTable

from r2ec_batch.jobs.report import published
from tests.conftest import REPO

pytestmark = pytest.mark.airflow
DAGS = REPO / "airflow_dags"


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("airflow_home")
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS), "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING"}
    airflow = Path(sys.executable).with_name("airflow")
    done = subprocess.run([str(airflow), "db", "migrate"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return env


def _py(code: str, env: dict[str, str], timeout: int = 120) -> dict:
    """Run Python in a subprocess; it prints one JSON object on its last stdout line."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-5000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_dagbag_imports_fast_without_heavy_modules(airflow_env):
    got = _py(f"""
        import json, sys
        from airflow.dag_processing.dagbag import BundleDagBag
        bag = BundleDagBag(dag_folder={str(DAGS)!r}, bundle_path={str(DAGS)!r})
        print(json.dumps({{
            "errors": {{k: str(v) for k, v in bag.import_errors.items()}},
            "dags": sorted(bag.dag_ids),
            "seconds": {{s.file: s.duration.total_seconds() for s in bag.dagbag_stats}},
            "heavy": [m for m in ("torch", "pyspark", "transformers", "faiss") if m in sys.modules],
        }}))""", airflow_env)
    assert got["errors"] == {}
    assert got["dags"] == ["r2ec_nightly_scoring", "r2ec_recpo_finetune", "r2ec_reembed_champion"]
    assert len(got["seconds"]) == 3 and all(s < 1.0 for s in got["seconds"].values())
    assert got["heavy"] == []


def test_graphs_schedules_retries_and_templates(airflow_env):
    got = _py(f"""
        import json
        from airflow.dag_processing.dagbag import BundleDagBag
        bag = BundleDagBag(dag_folder={str(DAGS)!r}, bundle_path={str(DAGS)!r})
        out = {{}}
        for dag_id in bag.dag_ids:
            d = bag.get_dag(dag_id)
            out[dag_id] = {{
                "cron": getattr(d.timetable, "expression", None), "catchup": d.catchup,
                "doc": bool(d.doc_md),
                "assets": [a.name for a in getattr(getattr(d.timetable, "asset_condition", None),
                                                   "objects", [])],
                "tasks": {{t.task_id: {{"up": sorted(t.upstream_task_ids), "retries": t.retries,
                                        "delay": t.retry_delay.total_seconds(),
                                        "cmd": t.bash_command, "doc": bool(t.doc_md) or None,
                                        "pool": t.pool, "skip": list(t.skip_on_exit_code or []),
                                        "outlets": [a.name for a in t.outlets],
                                        "on_failure": [f.__name__ for f in
                                                       t.on_failure_callback or []]}}
                          for t in d.tasks}},
            }}
        print(json.dumps(out))""", airflow_env)
    nightly, tune = got["r2ec_nightly_scoring"], got["r2ec_recpo_finetune"]
    reembed = got["r2ec_reembed_champion"]
    assert nightly["cron"] == "0 0 * * *" and nightly["catchup"] is False and nightly["doc"]
    assert tune["cron"] == "0 0 * * 0" and tune["catchup"] is False and tune["doc"]
    t = nightly["tasks"]
    assert t["build_histories"]["up"] == ["ingest"] and t["embed_items"]["up"] == ["build_histories"]
    assert t["score"]["up"] == ["embed_items"] and t["publish"]["up"] == ["score"]
    assert t["report"]["up"] == ["publish"] and "--html" in t["report"]["cmd"]
    assert "_reports/{{ ds }}-{{ params.variant }}.html" in t["report"]["cmd"]
    assert all(x["retries"] == 2 and x["delay"] == 300 for k, x in t.items() if k != "publish")
    assert t["publish"]["retries"] == 0  # a failed audit is not retried
    assert "--as-of {{ ds }}" in t["build_histories"]["cmd"]
    for task in ("score", "publish"):
        assert "--run-date {{ ds }} --as-of {{ ds }} --variant {{ params.variant }}" in t[task]["cmd"]
    assert "--model {{ params.model }}" in t["score"]["cmd"]
    assert "bin/r2ec-submit" in t["ingest"]["cmd"]
    u = tune["tasks"]
    assert u["promote"]["up"] == ["evaluate_candidate", "evaluate_champion"]
    assert u["embed_candidate"]["up"] == ["train_recpo"]
    assert "recpo-{{ ds_nodash }}" in u["train_recpo"]["cmd"] and "--resume" in u["train_recpo"]["cmd"]
    assert "--margin {{ params.margin }}" in u["promote"]["cmd"]
    assert u["maintain_tables"]["up"] == [] and \
        "jobs/maintain_tables.py --retention-hours {{ params.retention_hours }}" in \
        u["maintain_tables"]["cmd"]
    assert u["register_tables"]["up"] == ["maintain_tables"]
    assert "--as-of {{ (data_interval_end - macros.timedelta(days=1)) | ds }}" in \
        u["training_samples"]["cmd"]

    # Airflow conventions: heavy tasks share one pool; every task reports failures through the
    # callback; only a real promotion emits the champion Asset, which schedules re-embedding.
    heavy = {"embed_items", "score", "train_recpo", "embed_candidate", "evaluate_candidate",
             "evaluate_champion", "embed_champion"}
    every = {**t, **u, **reembed["tasks"]}
    assert {k for k, x in every.items() if x["pool"] == "r2ec_gpu"} == heavy
    assert all(x["on_failure"] == ["on_failure"] for x in every.values())
    assert u["promote"]["outlets"] == ["r2ec_champion"] and u["promote"]["skip"] == [99]
    assert "--unchanged-exit-code 99" in u["promote"]["cmd"] and u["promote"]["retries"] == 0
    assert not any(x["outlets"] for k, x in every.items() if k != "promote")
    assert reembed["cron"] is None and reembed["assets"] == ["r2ec_champion"]
    assert "jobs/embed_items.py --model champion" in reembed["tasks"]["embed_champion"]["cmd"]


def test_a_run_scores_the_day_that_is_complete(airflow_env):
    """Data-interval timetables: the nightly run for day D starts at 00:00 UTC of D + 1 with
    ds = D; the weekly fine-tuning run for a week starts when it ends, and its as-of is the
    week's last day."""
    got = _py(f"""
        import json
        from datetime import datetime, timezone
        from airflow.dag_processing.dagbag import BundleDagBag
        from airflow.serialization.serialized_objects import decode_timetable, encode_timetable
        from airflow.timetables.base import DataInterval, TimeRestriction
        bag = BundleDagBag(dag_folder={str(DAGS)!r}, bundle_path={str(DAGS)!r})
        utc = timezone.utc
        out = {{}}
        for dag_id, last in (("r2ec_nightly_scoring", (datetime(2026, 1, 1, tzinfo=utc),
                                                       datetime(2026, 1, 2, tzinfo=utc))),
                             ("r2ec_recpo_finetune", (datetime(2025, 12, 28, tzinfo=utc),
                                                      datetime(2026, 1, 4, tzinfo=utc)))):
            t = decode_timetable(encode_timetable(bag.get_dag(dag_id).timetable))
            info = t.next_dagrun_info(last_automated_data_interval=DataInterval(*last),
                                      restriction=TimeRestriction(None, None, True))
            out[dag_id] = [info.data_interval.start.isoformat(), info.data_interval.end.isoformat(),
                           info.run_after.isoformat()]
        print(json.dumps(out))""", airflow_env)
    start, end, fires = got["r2ec_nightly_scoring"]
    assert start.startswith("2026-01-02T00:00") and fires.startswith("2026-01-03T00:00")
    start, end, fires = got["r2ec_recpo_finetune"]
    assert start.startswith("2026-01-04T00:00") and end.startswith("2026-01-11T00:00")
    assert fires == end  # the week [Jan 4, Jan 11) is trained on once it is over; as-of Jan 10


@pytest.fixture(scope="module")
def slice_warehouse(spark, ml100k_dir, tmp_path_factory):
    """200 ML-100k users, ingested, with a small champion model (what `make run` sets up)."""
    from r2ec_batch.jobs import build_histories, build_model, ingest

    data = tmp_path_factory.mktemp("slice")
    lines = (ml100k_dir / "ml-100k.inter").read_text().splitlines()
    keep = {str(u) for u in range(1, 201)}
    (data / "ml-100k.inter").write_text(
        "\n".join([lines[0]] + [x for x in lines[1:] if x.split("\t")[0] in keep]) + "\n")
    (data / "ml-100k.item").write_bytes((ml100k_dir / "ml-100k.item").read_bytes())
    wh = tmp_path_factory.mktemp("slice_wh")
    assert ingest.main(["--source", "ml-100k", "--path", str(data), "--warehouse", str(wh)]) == 0
    assert build_histories.main(["--as-of", "1998-04-22", "--warehouse", str(wh)]) == 0
    assert build_model.main(["--out", str(wh.parent / "slice_model"), "--register", "champion",
                             "--warehouse", str(wh), "--hidden-size", "64", "--head-dim", "32",
                             "--intermediate-size", "128", "--vocab-size", "1500"]) == 0
    return data, wh


def record_failure(context) -> None:
    """A user failure callback, named by the Variable r2ec_failure_callback in the test below."""
    ti = context["ti"]
    with open(os.environ["R2EC_TEST_FAILURES"], "a") as f:
        f.write(json.dumps({"task_id": ti.task_id, "try_number": ti.try_number}) + "\n")


def _run_nightly(env, data: Path, wh: Path, top_k: int = 5, only: str | None = None) -> dict:
    """dag.test() for 2026-01-02; `only`: run just that task (the others marked success)."""
    skip = None if only is None else f"(?!{only}$).*"
    return _py(f"""
        import json
        from datetime import datetime, timezone
        from airflow.dag_processing.dagbag import BundleDagBag
        bag = BundleDagBag(dag_folder={str(DAGS)!r}, bundle_path={str(DAGS)!r})
        dag = bag.get_dag("r2ec_nightly_scoring")
        run = dag.test(logical_date=datetime(2026, 1, 2, tzinfo=timezone.utc),
                       run_conf={{"warehouse": {str(wh)!r}, "data_path": {str(data)!r},
                                  "max_new_tokens": 4, "top_k": {top_k}}},
                       mark_success_pattern={skip!r})
        states = {{ti.task_id: str(ti.state) for ti in run.get_task_instances()}}
        print(json.dumps({{"state": str(run.state), "tasks": states}}))""", env, timeout=1500)


@pytest.mark.slow
def test_nightly_dag_runs_end_to_end_and_rerun_changes_nothing(airflow_env, slice_warehouse):
    data, wh = slice_warehouse
    first = _run_nightly(airflow_env, data, wh)
    assert first["state"].endswith("success"), first
    assert all(s.endswith("success") for s in first["tasks"].values()), first

    # the dates every job got: histories and the published run are for ds = 2026-01-02
    hist = DeltaTable(str(wh / "user_histories")).to_pandas()
    assert "2026-01-02" in set(hist["as_of_date"].astype(str))
    runs = DeltaTable(str(wh / "published_runs")).to_pandas()
    assert runs[["run_date", "as_of_date"]].astype(str).drop_duplicates().values.tolist() == \
        [["2026-01-02", "2026-01-02"]]
    assert runs["published_by"].str.startswith("airflow r2ec_nightly_scoring manual__").all()
    recs = published(str(wh), "recommendations")
    assert set(recs["run_date"].astype(str)) == {"2026-01-02"}
    assert recs["user_id"].nunique() == 200 and len(recs) == 200 * 5
    rats = published(str(wh), "rationales")
    assert len(rats) == 200 and (rats["tokens"] <= 4).all()
    report = (wh / "_reports" / "2026-01-02-champion.html").read_text(encoding="utf-8")
    assert runs["run_id"].iloc[0] in report and "Three users" in report  # the run just published
    key = ["run_date", "user_id", "rank"]
    cols = key + ["item_id", "model_version"]
    before = recs.sort_values(key).reset_index(drop=True)

    inter_version = DeltaTable(str(wh / "interactions")).version()
    second = _run_nightly(airflow_env, data, wh)
    assert second["state"].endswith("success"), second
    after = published(str(wh), "recommendations").sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(before[cols], after[cols])
    assert DeltaTable(str(wh / "interactions")).version() == inter_version  # re-ingest: no commit
    assert len(published(str(wh), "rationales")) == 200

    # A run whose audit fails (5 items per user where 7 are expected): publish fails once, is
    # not retried, calls the configured failure callback, and analysts' view does not change.
    failures = wh.parent / "failures.jsonl"
    env = {**airflow_env, "R2EC_TEST_FAILURES": str(failures), "PYTHONPATH": str(REPO),
           "AIRFLOW_VAR_R2EC_FAILURE_CALLBACK": "tests.test_dags:record_failure"}
    third = _run_nightly(env, data, wh, top_k=7, only="publish")
    assert third["state"].endswith("failed") and third["tasks"]["publish"].endswith("failed"), third
    assert [json.loads(x) for x in failures.read_text().splitlines()] == \
        [{"task_id": "publish", "try_number": 1}]
    view = published(str(wh), "recommendations").sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(before[cols], view[cols])
