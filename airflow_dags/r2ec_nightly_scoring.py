"""
### R²ec nightly scoring

Every night, for the logical date `{{ ds }}`:

1. **ingest** the raw files again (MERGE: unchanged rows cost nothing, bad rows go to `quarantine`);
2. **histories**: each user's latest 20 items as of the end of `{{ ds }}` into `user_histories`;
3. **embed**: item embeddings + FAISS index for the *champion* model; skipped by the job itself
   when both are up to date, so it only works after a new champion or new items;
4. **score**: reasoning -> h_T -> top-k into `recommendations` and `rationales`, partition
   `run_date = {{ ds }}` (`--incremental` re-scores only users whose history changed);
5. **validate**: k distinct items per user, none from the history, one rationale each, one model.

Every task rewrites only its own date's partition, so re-running or backfilling a date is safe.
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
from airflow.sdk import DAG, Param

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
}

with DAG(
    dag_id="r2ec_nightly_scoring",
    description="Nightly R²ec batch scoring into Delta",
    doc_md=__doc__,
    schedule="@daily",
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
        doc_md="Item embeddings + index for the champion; a no-op when already up to date.",
        bash_command=f"{SUBMIT} jobs/embed_items.py --model champion {WH}",
    )
    score = BashOperator(
        task_id="score",
        doc_md="Top-k and rationales for `run_date = {{ ds }}`, champion model, incremental.",
        bash_command=(f"{SUBMIT} jobs/score.py --run-date {{{{ ds }}}} --model champion --incremental "
                      "--top-k {{ params.top_k }} --max-new-tokens {{ params.max_new_tokens }} "
                      f"{WH}"),
    )
    validate = BashOperator(
        task_id="validate",
        doc_md="Fails the run if any user lacks k distinct, unseen items or a rationale.",
        bash_command=(f"{SUBMIT} jobs/validate_run.py --run-date {{{{ ds }}}} "
                      f"--top-k {{{{ params.top_k }}}} {WH}"),
    )
    ingest >> histories >> embed >> score >> validate
