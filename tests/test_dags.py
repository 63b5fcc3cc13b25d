"""The Airflow DAGs: they import cleanly and fast, their graphs and settings are as documented,
the nightly DAG runs end to end with `dag.test()` on a slice of ML-100k, and a run whose audit
fails changes nothing readers see. Airflow runs in subprocesses with a temporary AIRFLOW_HOME
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

from r2ec_batch.live_runs import published
from tests.conftest import REPO, SLICE_USERS

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


def _py(code: str, env: dict[str, str], timeout: int = 120, log: Path | None = None) -> dict:
    """Run Python in a subprocess; it prints one JSON object on its last stdout line. `log`:
    keep everything it printed there (the task logs of a dag.test())."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    if log is not None:
        log.write_text(f"{done.stdout}\n--- stderr ---\n{done.stderr}")
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
                                        "cmd": t.bash_command, "env": t.env,
                                        "doc": bool(t.doc_md) or None,
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
    assert t["report"]["up"] == ["publish"] and '--html "$R2EC_HTML"' in t["report"]["cmd"]
    # the report reads Delta with deltalake: its task starts no JVM; every other task submits
    assert "exec bin/r2ec-python jobs/report.py" in t["report"]["cmd"]
    assert all("exec bin/r2ec-submit --conf" in x["cmd"] for k, x in t.items() if k != "report")
    assert t["report"]["env"]["R2EC_HTML"].endswith("/_reports/{{ ds }}-{{ params.variant }}.html")
    assert all(x["retries"] == 2 and x["delay"] == 300 for k, x in t.items() if k != "publish")
    assert t["publish"]["retries"] == 0  # a failed audit is not retried
    assert t["build_histories"]["env"]["R2EC_AS_OF"] == "{{ ds }}"
    for task in ("score", "publish"):
        assert '--run-date "$R2EC_RUN_DATE" --as-of "$R2EC_AS_OF" --variant "$R2EC_VARIANT"' \
            in t[task]["cmd"]
        assert t[task]["env"]["R2EC_VARIANT"] == "{{ params.variant }}"
    assert "params.model if params.model == 'champion' else var.value.get('r2ec_models'" in \
        t["score"]["env"]["R2EC_MODEL"]
    u = tune["tasks"]
    assert u["promote"]["up"] == ["evaluate_candidate", "evaluate_champion"]
    assert u["embed_candidate"]["up"] == ["train_recpo"]
    assert u["train_recpo"]["env"]["R2EC_OUT"].endswith("/recpo-{{ ds_nodash }}")
    assert "--resume" in u["train_recpo"]["cmd"]
    assert u["promote"]["env"]["R2EC_MARGIN"] == "{{ params.margin }}"
    assert u["maintain_tables"]["up"] == [] and "jobs/maintain_tables.py --retention-hours" in \
        u["maintain_tables"]["cmd"]
    assert u["register_tables"]["up"] == ["maintain_tables"]
    assert u["training_samples"]["env"]["R2EC_AS_OF"] == \
        "{{ (data_interval_end - macros.timedelta(days=1)) | ds }}"
    # No template in any command: every value reaches its job through one quoted variable.
    every = {**t, **u, **reembed["tasks"]}
    for k, x in every.items():
        assert "{{" not in x["cmd"] and x["cmd"].startswith('cd "$R2EC_REPO" && exec bin/r2ec-'), k
        assert x["cmd"].endswith('--warehouse "$R2EC_WAREHOUSE"'), k
        assert all(f'"${name}"' in x["cmd"] for name in x["env"]), k

    # Airflow conventions: heavy tasks share one pool; every task reports failures through the
    # callback; only a real promotion emits the champion Asset, which schedules re-embedding.
    heavy = {"embed_items", "score", "train_recpo", "embed_candidate", "evaluate_candidate",
             "evaluate_champion", "embed_champion"}
    assert {k for k, x in every.items() if x["pool"] == "r2ec_gpu"} == heavy
    assert all(x["on_failure"] == ["on_failure"] for x in every.values())
    assert u["promote"]["outlets"] == ["r2ec_champion"] and u["promote"]["skip"] == [99]
    assert u["promote"]["env"]["R2EC_UNCHANGED_EXIT_CODE"] == "99" and u["promote"]["retries"] == 0
    assert not any(x["outlets"] for k, x in every.items() if k != "promote")
    assert reembed["cron"] is None and reembed["assets"] == ["r2ec_champion"]
    assert 'jobs/embed_items.py --model "$R2EC_MODEL"' in reembed["tasks"]["embed_champion"]["cmd"]
    assert reembed["tasks"]["embed_champion"]["env"]["R2EC_MODEL"] == "champion"


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
def dag_warehouse(slice_warehouse, ml100k_slice, tmp_path_factory):
    """The slice's users ingested, with a small champion model (what `make run` sets up):
    a copy of the shared slice warehouse, which the DAG run below changes."""
    import shutil

    from r2ec_batch.jobs import build_model

    wh = tmp_path_factory.mktemp("dag") / "wh"
    shutil.copytree(slice_warehouse, wh)
    assert build_model.main(["--out", str(wh.parent / "slice_model"), "--register", "champion",
                             "--warehouse", str(wh), "--hidden-size", "64", "--head-dim", "32",
                             "--intermediate-size", "128", "--vocab-size", "1500"]) == 0
    return ml100k_slice, wh


def record_failure(context) -> None:
    """A user failure callback, named by the Variable r2ec_failure_callback in the test below."""
    ti = context["ti"]
    with open(os.environ["R2EC_TEST_FAILURES"], "a") as f:
        f.write(json.dumps({"task_id": ti.task_id, "try_number": ti.try_number}) + "\n")


def _run_nightly(env, data: Path, wh: Path, top_k: int = 5, only: str | None = None,
                 log: Path | None = None) -> dict:
    """dag.test() for 2026-01-02; `only`: run just that task (the others marked success). The
    warehouse and the input folder are deployment settings: Airflow Variables, here through
    the environment as a deployment would set them."""
    skip = None if only is None else f"(?!{only}$).*"
    env = {**env, "AIRFLOW_VAR_R2EC_WAREHOUSE": str(wh), "AIRFLOW_VAR_R2EC_DATA_PATH": str(data)}
    return _py(f"""
        import json
        from datetime import datetime, timezone
        from airflow.dag_processing.dagbag import BundleDagBag
        bag = BundleDagBag(dag_folder={str(DAGS)!r}, bundle_path={str(DAGS)!r})
        dag = bag.get_dag("r2ec_nightly_scoring")
        run = dag.test(logical_date=datetime(2026, 1, 2, tzinfo=timezone.utc),
                       run_conf={{"max_new_tokens": 4, "top_k": {top_k}}},
                       mark_success_pattern={skip!r})
        tis = run.get_task_instances()
        states = {{ti.task_id: str(ti.state) for ti in tis}}
        tries = {{ti.task_id: ti.try_number for ti in tis}}
        print(json.dumps({{"state": str(run.state), "tasks": states, "tries": tries}}))""",
               env, timeout=1500, log=log)


@pytest.mark.slow
def test_nightly_dag_runs_end_to_end_and_a_failed_audit_changes_nothing(airflow_env,
                                                                          dag_warehouse):
    """One run of the whole DAG (each task a real submit), then a run of its publish task alone
    that fails its audit. Re-running a date is each job's own promise and is tested with the
    job (test_ingest, test_scoring): here it would cost one more full DAG run for nothing new."""
    data, wh = dag_warehouse
    log = wh.parent / "nightly.log"
    first = _run_nightly(airflow_env, data, wh, log=log)
    assert first["state"].endswith("success"), first
    assert all(s.endswith("success") for s in first["tasks"].values()), first
    # each task at its first try: a retry (5 minutes later) would hide a failure
    assert set(first["tries"].values()) == {1}, (first, f"task logs: {log}")

    # the dates every job got: histories and the published run are for ds = 2026-01-02
    hist = DeltaTable(str(wh / "user_histories")).to_pandas()
    assert "2026-01-02" in set(hist["as_of_date"].astype(str))
    runs = DeltaTable(str(wh / "published_runs")).to_pandas()
    assert runs[["run_date", "as_of_date"]].astype(str).drop_duplicates().values.tolist() == \
        [["2026-01-02", "2026-01-02"]]
    assert runs["published_by"].str.startswith("airflow r2ec_nightly_scoring manual__").all()
    recs = published(str(wh), "recommendations")
    assert set(recs["run_date"].astype(str)) == {"2026-01-02"}
    assert recs["user_id"].nunique() == SLICE_USERS and len(recs) == SLICE_USERS * 5
    rats = published(str(wh), "rationales")
    assert len(rats) == SLICE_USERS and (rats["tokens"] <= 4).all()
    report = (wh / "_reports" / "2026-01-02-champion.html").read_text(encoding="utf-8")
    assert runs["run_id"].iloc[0] in report and "Three users" in report  # the run just published
    key = ["run_date", "user_id", "rank"]
    cols = key + ["item_id", "model_version"]
    before = recs.sort_values(key).reset_index(drop=True)

    # A run whose audit fails (5 items per user where 7 are expected): publish fails once, is
    # not retried, calls the configured failure callback, and analysts' view does not change.
    failures = wh.parent / "failures.jsonl"
    env = {**airflow_env, "R2EC_TEST_FAILURES": str(failures), "PYTHONPATH": str(REPO),
           "AIRFLOW_VAR_R2EC_FAILURE_CALLBACK": "tests.test_dags:record_failure"}
    failed = _run_nightly(env, data, wh, top_k=7, only="publish")
    assert failed["state"].endswith("failed") and failed["tasks"]["publish"].endswith("failed"), failed
    assert [json.loads(x) for x in failures.read_text().splitlines()] == \
        [{"task_id": "publish", "try_number": 1}]
    view = published(str(wh), "recommendations").sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(before[cols], view[cols])


STUB = """#!{python}
import json, os, sys
with open(os.environ["R2EC_TEST_ARGV"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
"""


def test_conf_and_variables_never_reach_a_shell(airflow_env, tmp_path):
    """Airflow's own Param validation and renderer, then each task run for real by dag.test():
    a malicious conf is refused before anything runs; a Variable holding shell syntax (what an
    older DAG pasted into its bash_command) reaches the job as one literal argument. A stub
    `bin/r2ec-submit` (and `bin/r2ec-python`) in a checkout named by `r2ec_repo` records what
    each job was given."""
    marker = tmp_path / "pwned"
    attack = f"/tmp/wh; touch {marker} #"
    # the control: pasted into a shell command, as the old DAGs did, the value runs
    subprocess.run(["bash", "-c", f"true --warehouse {attack}"], check=True)
    assert marker.exists()
    marker.unlink()

    repo = tmp_path / "checkout"
    (repo / "bin").mkdir(parents=True)
    for launcher in ("r2ec-submit", "r2ec-python"):
        stub = repo / "bin" / launcher
        stub.write_text(STUB.format(python=sys.executable))
        stub.chmod(0o755)
    argv = tmp_path / "argv.jsonl"
    env = {**airflow_env, "R2EC_TEST_ARGV": str(argv), "AIRFLOW_VAR_R2EC_REPO": str(repo),
           "AIRFLOW_VAR_R2EC_WAREHOUSE": attack,
           "AIRFLOW_VAR_R2EC_DATA_PATH": f"$(touch {marker})",
           "AIRFLOW_VAR_R2EC_MODELS": f"`touch {marker}`"}
    got = _py(f"""
        import json
        from datetime import datetime, timezone
        from airflow.dag_processing.dagbag import BundleDagBag
        bag = BundleDagBag(dag_folder={str(DAGS)!r}, bundle_path={str(DAGS)!r})
        refused = {{}}
        for dag_id, conf in (("r2ec_nightly_scoring", {{"model": "champion; touch {marker} #"}}),
                             ("r2ec_nightly_scoring", {{"model": "../../etc"}}),
                             ("r2ec_nightly_scoring", {{"variant": "x$(touch {marker})"}}),
                             ("r2ec_nightly_scoring", {{"top_k": 1000000000}}),
                             ("r2ec_recpo_finetune", {{"train_minutes": 1e9}})):
            try:
                bag.get_dag(dag_id).test(logical_date=datetime(2026, 1, 2, tzinfo=timezone.utc),
                                         run_conf=conf)
                refused[json.dumps(conf)] = None
            except Exception as e:
                refused[json.dumps(conf)] = type(e).__name__
        run = bag.get_dag("r2ec_nightly_scoring").test(
            logical_date=datetime(2026, 1, 3, tzinfo=timezone.utc),
            run_conf={{"model": "recpo-20260101/best", "top_k": 7}})
        print(json.dumps({{"refused": refused, "state": str(run.state),
                           "tasks": {{ti.task_id: str(ti.state) for ti in run.get_task_instances()}}}}))
        """, env, timeout=300)
    assert set(got["refused"].values()) == {"ParamValidationError"}, got["refused"]
    assert got["state"].endswith("success"), got
    calls = {next(a for a in c if a.endswith(".py")): c
             for c in map(json.loads, argv.read_text().splitlines())}
    assert set(calls) == {"jobs/ingest.py", "jobs/build_histories.py", "jobs/embed_items.py",
                          "jobs/score.py", "jobs/publish.py", "jobs/report.py"}
    for call in calls.values():
        assert call[-2:] == ["--warehouse", attack]  # one argument, exactly the Variable's text
    assert calls["jobs/ingest.py"][calls["jobs/ingest.py"].index("--path") + 1] == f"$(touch {marker})"
    score = calls["jobs/score.py"]
    assert score[score.index("--model") + 1] == f"`touch {marker}`/recpo-20260101/best"
    assert score[score.index("--top-k") + 1] == "7"
    assert not marker.exists()


def test_the_failure_callback_variable_must_name_a_function(monkeypatch):
    """It is an admin setting that names code to run in the workers; a value that is not
    exactly 'package.module:function' is logged and never imported."""
    import importlib
    import sys as _sys

    monkeypatch.syspath_prepend(str(DAGS))
    r2ec_airflow = importlib.import_module("r2ec_airflow")
    imported, said = [], []

    class Log:  # Airflow routes logging through structlog: record what the callback says
        def error(self, msg, *args):
            said.append(msg % args)

        exception = warning = error

    monkeypatch.setattr(r2ec_airflow, "log", Log())
    monkeypatch.setattr(r2ec_airflow.importlib, "import_module",
                        lambda name: imported.append(name) or _sys.modules["json"])
    for bad in ("os:system; rm -rf /", "__import__('os').system('id'):x", "json", "a.b:c:d"):
        monkeypatch.setattr(r2ec_airflow, "_user_callback", lambda bad=bad: bad)
        r2ec_airflow.on_failure({"exception": "boom"})
    assert imported == [] and sum("is not 'package.module:function'" in x for x in said) == 4
    monkeypatch.setattr(r2ec_airflow, "_user_callback", lambda: "json:dumps")
    r2ec_airflow.on_failure({"exception": "boom"})
    assert imported == ["json"]


def test_param_bounds_are_the_jobs_bounds(airflow_env):
    """The DAG files import nothing of the project (they parse in milliseconds), so their
    Params restate the jobs' bounds and defaults: here they are checked against the jobs' own
    parsers and the engine's dataclasses."""
    from r2ec.config import SamplingConfig
    from r2ec_batch import cli
    from r2ec_batch.jobs import score

    got = _py(f"""
        import json
        from airflow.dag_processing.dagbag import BundleDagBag
        bag = BundleDagBag(dag_folder={str(DAGS)!r}, bundle_path={str(DAGS)!r})
        out = {{d: {{k: [bag.get_dag(d).params.get_param(k).schema,
                        bag.get_dag(d).params.get_param(k).value]
                    for k in bag.get_dag(d).params}} for d in bag.dag_ids}}
        print(json.dumps(out))""", airflow_env)
    schemas = {d: {k: v[0] for k, v in ps.items()} for d, ps in got.items()}
    values = {d: {k: v[1] for k, v in ps.items()} for d, ps in got.items()}
    nightly, tune = schemas["r2ec_nightly_scoring"], schemas["r2ec_recpo_finetune"]
    assert nightly["top_k"]["maximum"] == cli.MAX_TOP_K
    assert nightly["max_new_tokens"]["maximum"] == tune["max_new_tokens"]["maximum"] == \
        cli.MAX_NEW_TOKENS
    defaults = score.parse_args(["--run-date", "2026-01-02"])
    assert values["r2ec_nightly_scoring"]["top_k"] == defaults.top_k
    assert values["r2ec_nightly_scoring"]["max_new_tokens"] == \
        values["r2ec_recpo_finetune"]["max_new_tokens"] == SamplingConfig.max_new_tokens == \
        defaults.sampling.max_new_tokens
    got = schemas
    for dag in got.values():  # every string Param has a pattern or an enum
        for name, schema in dag.items():
            if schema.get("type") == "string":
                assert "pattern" in schema or "enum" in schema, name
    assert got["r2ec_reembed_champion"] == {}
