"""
### R²ec nightly scoring

**Which date is which.** The DAG runs on daily data intervals (CronDataIntervalTimetable): the
run for day D starts when D is complete, just after 00:00 UTC of D + 1, and `{{ ds }}` is D (the
start of its data interval). Histories are taken as of the end of D and the output's `run_date`
is D: a run scores the last complete day, never a day still being written. A backfill of D sees
no event after D.

1. **ingest** the raw files again (MERGE: unchanged rows cost nothing, bad rows go to `quarantine`);
2. **histories**: each user's latest 20 items as of the end of `{{ ds }}` into `user_histories`;
3. **embed**: item embeddings + FAISS index for the model; skipped by the job itself when both
   are up to date, so it only works after a new champion or new items;
4. **score**: reasoning -> h_T -> top-k into `recommendations` and `rationales` as a new,
   unpublished run of (`run_date = {{ ds }}`, variant) (`--incremental` re-scores only users whose
   history changed);
5. **publish**: audits the run (k distinct unseen items per user, one rationale each, row counts
   against `user_histories`, one model) and only then publishes it: one commit to
   `published_runs` makes its recommendations and rationales visible together. A failed audit
   publishes nothing (readers keep the previous run) and is not retried: the same rows would
   fail again;
6. **report**: the HTML report of the run just published (accuracy over time, list and input
   health, three example users) at `<warehouse>/_reports/{{ ds }}-<variant>.html`.

Variants: trigger with `-c '{"variant": "challenger", "model": "models/x/best"}'` to score and
publish a challenger for a date beside the champion (`variant` is in the output tables' key).
Re-running or backfilling a date is safe: each task rewrites only its own date (and variant).
The heavy tasks (embed, score) queue in the pool `r2ec_gpu` (create it once:
`airflow pools set r2ec_gpu 1 "R²ec GPU slots"`, one slot per GPU), shared with the fine-tuning
DAG, so training and scoring never fight over a GPU. A failed task logs one structured line and
calls the function named by the Variable `r2ec_failure_callback` if set (see `r2ec_airflow.py`).

Tasks call the jobs through `bin/r2ec-submit`, the same wrapper a person uses by hand: it carries
the Delta jars, the project's venv and Spark's log settings, so a task and a manual run behave
identically (the Spark provider's SparkSubmitOperator would need all of that repeated in a
connection, and its provider >= 6 replaces full pyspark in a shared venv).

Paths come from Airflow Variables when set (`r2ec_repo`, `r2ec_warehouse`, `r2ec_data_path`,
`r2ec_source`), else from the DAG params, whose defaults work on one machine with `make run`'s
layout. Trigger by hand: `airflow dags trigger r2ec_nightly_scoring -c '{"top_k": 20}'`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, CronDataIntervalTimetable, Param
from r2ec_airflow import POOL, on_failure

REPO = str(Path(__file__).resolve().parents[1])


def _v(name: str, param: str) -> str:
    """Template: the Airflow Variable if set, else the DAG param."""
    return f"{{{{ var.value.get('{name}', params.{param}) }}}}"


SUBMIT = f"cd {_v('r2ec_repo', 'repo')} && bin/r2ec-submit --conf spark.ui.showConsoleProgress=false"
WH = f"--warehouse {_v('r2ec_warehouse', 'warehouse')}"

default_args = {
    "owner": "r2ec",
    "retries": 2,
    "retry_delay": timedelta(minutes=5),
    "retry_exponential_backoff": True,
    "execution_timeout": timedelta(hours=3),
    "on_failure_callback": on_failure,  # logs; calls the Variable r2ec_failure_callback if set
}

with DAG(
    dag_id="r2ec_nightly_scoring",
    description="Nightly R²ec batch scoring into Delta",
    doc_md=__doc__,
    # Data intervals, not Airflow 3's default trigger timetable: {{ ds }} is the completed day.
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=default_args,
    tags=["r2ec", "scoring"],
    params={
        "repo": Param(REPO, type="string", description="project checkout with .venv and .jars"),
        "warehouse": Param(f"{REPO}/warehouse", type="string", description="Delta tables folder"),
        "source": Param("ml-100k", enum=["ml-100k", "movielens"], description="input format"),
        "data_path": Param(f"{REPO}/data/raw/ml-100k", type="string", description="input folder"),
        "top_k": Param(10, type="integer", minimum=1, description="items per user"),
        "max_new_tokens": Param(32, type="integer", minimum=1, description="reasoning budget"),
        "model": Param("champion", type="string",
                       description="'champion' or a checkpoint folder / URI"),
        "variant": Param("champion", type="string", pattern="^[A-Za-z0-9_-]{1,64}$",
                         description="output variant (champion, challenger, ...)"),
    },
) as dag:
    ingest = BashOperator(
        task_id="ingest",
        doc_md="Re-ingest the raw files (MERGE; idempotent). Bad rows land in `quarantine`.",
        bash_command=(f"{SUBMIT} jobs/ingest.py --source {_v('r2ec_source', 'source')} "
                      f"--path {_v('r2ec_data_path', 'data_path')} {WH}"),
    )
    histories = BashOperator(
        task_id="build_histories",
        doc_md="`user_histories` as of the end of `{{ ds }}` (replaces that partition).",
        bash_command=f"{SUBMIT} jobs/build_histories.py --as-of {{{{ ds }}}} --skip-samples {WH}",
    )
    embed = BashOperator(
        task_id="embed_items",
        doc_md="Item embeddings + index for the model; a no-op when already up to date.",
        bash_command=f"{SUBMIT} jobs/embed_items.py --model {{{{ params.model }}}} {WH}",
        pool=POOL,
    )
    run = ("--run-date {{ ds }} --as-of {{ ds }} --variant {{ params.variant }} "
           "--top-k {{ params.top_k }}")
    score = BashOperator(
        task_id="score",
        doc_md="A new, unpublished run for `run_date = {{ ds }}` and the variant (incremental).",
        bash_command=(f"{SUBMIT} jobs/score.py {run} --model {{{{ params.model }}}} --incremental "
                      f"--max-new-tokens {{{{ params.max_new_tokens }}}} {WH}"),
        pool=POOL,
    )
    publish = BashOperator(
        task_id="publish",
        doc_md="Audit the run; publish it (one commit) only if every check passes.",
        bash_command=f"{SUBMIT} jobs/publish.py {run} --model {{{{ params.model }}}} {WH}",
        retries=0,  # a failed audit is deterministic: retrying would fail the same way
    )
    report = BashOperator(
        task_id="report",
        doc_md="The HTML report of the published run, under `<warehouse>/_reports/`.",
        bash_command=(f"{SUBMIT} jobs/report.py --run-date {{{{ ds }}}} --variant "
                      f"{{{{ params.variant }}}} --html {_v('r2ec_warehouse', 'warehouse')}"
                      f"/_reports/{{{{ ds }}}}-{{{{ params.variant }}}}.html {WH}"),
    )
    ingest >> histories >> embed >> score >> publish >> report
