"""
### R²ec: embed the catalogue with a newly promoted champion

Scheduled on the Asset `r2ec_champion`, which the fine-tuning DAG's `promote` task emits only
when the champion changed. It computes the new champion's item embeddings (`item_embeddings`,
partition = model version) and publishes its FAISS index right away, so the next nightly run
does not spend its window on them (its `embed_items` task then finds them up to date and does
nothing). A promotion that happens while this DAG is running queues one more run.

Runs in the pool `r2ec_gpu` with the other heavy R²ec tasks. It takes no conf; the checkout
and the warehouse are the Variables `r2ec_repo` and `r2ec_warehouse` (`r2ec_airflow.py`). By
hand: `airflow dags trigger r2ec_reembed_champion`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG
from r2ec_airflow import CHAMPION, POOL, default_args, submit

with DAG(
    dag_id="r2ec_reembed_champion",
    description="Item embeddings + FAISS index for a newly promoted champion",
    doc_md=__doc__,
    schedule=[CHAMPION],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=default_args(retries=2, retry_delay=timedelta(minutes=5),
                              execution_timeout=timedelta(hours=3)),
    tags=["r2ec", "scoring"],
) as dag:
    submit("embed_champion", "embed_items", [("--model", "champion")], pool=POOL,
           doc_md="`jobs/embed_items.py --model champion`: a no-op when already up to date.")
