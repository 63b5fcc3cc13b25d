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
   history changed), committed in slices as it goes; a retry continues the run the failed try
   left (`--resume latest`) instead of starting from zero, and one user the model fails on gets
   the popular list (fallback 'error') instead of failing the task;
5. **publish**: audits the run (k distinct unseen items per user, one rationale each, row counts
   against `user_histories`, one model, at most 0.1% of users scored with an error) and only
   then publishes it: one commit to
   `published_runs` makes its recommendations and rationales visible together. A failed audit
   publishes nothing (readers keep the previous run) and is not retried: the same rows would
   fail again;
6. **report**: the HTML report of the run just published (accuracy over time, list and input
   health, three example users) at `<warehouse>/_reports/{{ ds }}-<variant>.html`.

Variants: trigger with `-c '{"variant": "challenger", "model": "recpo-20261122/best"}'` to score
and publish a challenger for a date beside the champion (`variant` is in the output tables'
key; `model` is 'champion' or a folder inside the Variable `r2ec_models`). Re-running or
backfilling a date is safe: each task rewrites only its own date (and variant).
The heavy tasks (embed, score) queue in the pool `r2ec_gpu` (create it once:
`airflow pools set r2ec_gpu 1 "R²ec GPU slots"`, one slot per GPU), shared with the fine-tuning
DAG, so training and scoring never fight over a GPU. A failed task logs one structured line and
calls the function named by the Variable `r2ec_failure_callback` if set (see `r2ec_airflow.py`).

Tasks call the jobs through `bin/r2ec-submit` (the report, which needs no Spark, through
`bin/r2ec-python`), the same wrappers a person uses by hand: `bin/r2ec-submit` carries
the Delta jars, the project's venv and Spark's log settings, so a task and a manual run behave
identically (the Spark provider's SparkSubmitOperator would need all of that repeated in a
connection, and its provider >= 6 replaces full pyspark in a shared venv). No value of conf,
Params or Variables is ever part of a shell command: each reaches its job as one quoted
environment variable (`r2ec_airflow.submit`).

Per-run conf: `top_k`, `max_new_tokens`, `model`, `variant` (typed, bounded, patterned).
Deployment settings (checkout, warehouse, input folder and format, models folder) are the
Variables `r2ec_repo`, `r2ec_warehouse`, `r2ec_data_path`, `r2ec_source`, `r2ec_models`,
whose defaults work on one machine with `make run`'s layout. Trigger by hand:
`airflow dags trigger r2ec_nightly_scoring -c '{"top_k": 20}'`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, CronDataIntervalTimetable, Param
from r2ec_airflow import MODEL_NAME, POOL, VARIANT, default_args, model_path, submit, var

RUN = [("--run-date", "{{ ds }}"), ("--as-of", "{{ ds }}"), ("--variant", "{{ params.variant }}"),
       ("--top-k", "{{ params.top_k }}")]
MODEL = ("--model", model_path())

with DAG(
    dag_id="r2ec_nightly_scoring",
    description="Nightly R²ec batch scoring into Delta",
    doc_md=__doc__,
    # Data intervals, not Airflow 3's default trigger timetable: {{ ds }} is the completed day.
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=default_args(retries=2, retry_delay=timedelta(minutes=5),
                              execution_timeout=timedelta(hours=3)),
    tags=["r2ec", "scoring"],
    params={
        "top_k": Param(10, type="integer", minimum=1, maximum=1000, description="items per user"),
        "max_new_tokens": Param(32, type="integer", minimum=1, maximum=1024,
                                description="reasoning budget"),
        "model": Param("champion", type="string", pattern=MODEL_NAME, maxLength=300,
                       description="'champion' or a checkpoint folder inside r2ec_models"),
        "variant": Param("champion", type="string", pattern=VARIANT,
                         description="output variant (champion, challenger, ...)"),
    },
) as dag:
    ingest = submit(
        "ingest", "ingest", [("--source", var("r2ec_source")), ("--path", var("r2ec_data_path"))],
        doc_md="Re-ingest the raw files (MERGE; idempotent). Bad rows land in `quarantine`.")
    histories = submit(
        "build_histories", "build_histories", [("--as-of", "{{ ds }}"), "--skip-samples"],
        doc_md="`user_histories` as of the end of `{{ ds }}` (replaces that partition).")
    embed = submit(
        "embed_items", "embed_items", [MODEL], pool=POOL,
        doc_md="Item embeddings + index for the model; a no-op when already up to date.")
    score = submit(
        "score", "score",
        [*RUN, MODEL, "--incremental", ("--max-new-tokens", "{{ params.max_new_tokens }}"),
         ("--resume", "latest")],
        pool=POOL,
        doc_md="A new, unpublished run for `run_date = {{ ds }}` and the variant (incremental); "
               "a retry continues the run its failed try left (`--resume latest`).")
    publish = submit(
        "publish", "publish", [*RUN, MODEL],
        retries=0,  # a failed audit is deterministic: retrying would fail the same way
        doc_md="Audit the run; publish it (one commit) only if every check passes.")
    report = submit(
        "report", "report",
        [("--run-date", "{{ ds }}"), ("--variant", "{{ params.variant }}"),
         ("--html", var("r2ec_warehouse") + "/_reports/{{ ds }}-{{ params.variant }}.html")],
        spark=False,  # it reads Delta with deltalake: no JVM to start for it
        doc_md="The HTML report of the published run, under `<warehouse>/_reports/`.")
    ingest >> histories >> embed >> score >> publish >> report
