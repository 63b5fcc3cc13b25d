"""
### R²ec: embed the catalogue with a newly promoted champion

Scheduled on the Asset `r2ec_champion`, which the fine-tuning DAG's `promote` task emits only
when the champion changed. It computes the new champion's item embeddings (`item_embeddings`,
partition = model version) and publishes its FAISS index right away, so the next nightly run
does not spend its window on them (its `embed_items` task then finds them up to date and does
nothing). A promotion that happens while this DAG is running queues one more run.

Runs in the pool `r2ec_gpu` with the other heavy R²ec tasks. Paths come from the Variables
`r2ec_repo` and `r2ec_warehouse`, else from the params (an Asset-triggered run uses the
defaults). By hand: `airflow dags trigger r2ec_reembed_champion`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, Param
from r2ec_airflow import CHAMPION, POOL, on_failure

REPO = str(Path(__file__).resolve().parents[1])


def _v(name: str, param: str) -> str:
    return f"{{{{ var.value.get('{name}', params.{param}) }}}}"


with DAG(
    dag_id="r2ec_reembed_champion",
    description="Item embeddings + FAISS index for a newly promoted champion",
    doc_md=__doc__,
    schedule=[CHAMPION],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={
        "owner": "r2ec",
        "retries": 2,
        "retry_delay": timedelta(minutes=5),
        "execution_timeout": timedelta(hours=3),
        "on_failure_callback": on_failure,
    },
    tags=["r2ec", "scoring"],
    params={
        "repo": Param(REPO, type="string", description="project checkout with .venv and .jars"),
        "warehouse": Param(f"{REPO}/warehouse", type="string", description="Delta tables folder"),
    },
) as dag:
    BashOperator(
        task_id="embed_champion",
        doc_md="`jobs/embed_items.py --model champion`: a no-op when already up to date.",
        bash_command=(f"cd {_v('r2ec_repo', 'repo')} && bin/r2ec-submit --conf "
                      f"spark.ui.showConsoleProgress=false jobs/embed_items.py --model champion "
                      f"--warehouse {_v('r2ec_warehouse', 'warehouse')}"),
        pool=POOL,
    )
