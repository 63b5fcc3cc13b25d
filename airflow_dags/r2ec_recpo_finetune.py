"""
### R²ec periodic RecPO fine-tuning with champion promotion

**Which date is which.** Weekly data intervals (CronDataIntervalTimetable, Sunday 00:00 UTC): the
run for the week [`{{ ds }}`, `{{ data_interval_end | ds }}`) starts when that week is complete,
and trains on events up to the end of its last day (`as-of` below), never on later data, also
when backfilled.

1. **training_samples**: rebuild the paper-protocol samples (80/10/10 by target time) from the
   `interactions` up to the as-of day;
2. **train_recpo**: RecPO from the current *champion*, within a time budget, into
   `models/recpo-{{ ds_nodash }}` (registered as `candidate`, with the training data's Delta
   version and the full configuration);
3. **embed_candidate**: its item embeddings and FAISS index;
4. **evaluate_candidate** / **evaluate_champion**: both on the same valid samples, greedy
   reasoning, in parallel (evaluations are appended, so the two never conflict, and every
   evaluation stays in the table's history);
5. **promote**: paired comparison on those samples; the candidate becomes champion only if the
   lower end of the 95% bootstrap interval of its NDCG@10 gain is above `margin` (0: better
   beyond resampling noise); otherwise it is recorded as `rejected`, the champion stays and the
   task ends as *skipped*. A promotion emits the Asset `r2ec_champion`, which triggers
   `r2ec_reembed_champion` (item embeddings and FAISS index of the new champion) at once; the
   nightly DAG scores with the champion from its next run.

6. **maintain_tables** (beside the rest): OPTIMIZE every table (Z-ordered by the columns
   readers filter on) and VACUUM it, keeping time travel for `retention_hours` (default 7 days);
   then **register_tables**: every table (new ones too) named in the catalog with its comments,
   and the analysts' views (a no-op when all is registered).

Training, embedding and evaluation run in the pool `r2ec_gpu` shared with nightly scoring (see
the nightly DAG's notes); a failed task calls the failure callback described there.

Tasks call `bin/r2ec-submit` like the nightly DAG (see its notes). Paths come from the Variables
`r2ec_repo`, `r2ec_warehouse`, `r2ec_models`, else from the params.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, CronDataIntervalTimetable, Param
from r2ec_airflow import CHAMPION, POOL, on_failure

REPO = str(Path(__file__).resolve().parents[1])


def _v(name: str, param: str) -> str:
    return f"{{{{ var.value.get('{name}', params.{param}) }}}}"


SUBMIT = f"cd {_v('r2ec_repo', 'repo')} && bin/r2ec-submit --conf spark.ui.showConsoleProgress=false"
WH = f"--warehouse {_v('r2ec_warehouse', 'warehouse')}"
CANDIDATE = f"{_v('r2ec_models', 'models')}/recpo-{{{{ ds_nodash }}}}"
AS_OF = "{{ (data_interval_end - macros.timedelta(days=1)) | ds }}"  # the week's last day
EVAL = "--split valid --limit {{ params.eval_limit }} --max-new-tokens {{ params.max_new_tokens }}"

default_args = {
    "owner": "r2ec",
    "retries": 1,
    "retry_delay": timedelta(minutes=10),
    "execution_timeout": timedelta(hours=12),
    "on_failure_callback": on_failure,  # logs; calls the Variable r2ec_failure_callback if set
    "pool": POOL,  # training, embedding and evaluation share the GPU slots with nightly scoring
}

with DAG(
    dag_id="r2ec_recpo_finetune",
    description="Weekly RecPO fine-tuning of the champion, promoted only if better",
    doc_md=__doc__,
    schedule=CronDataIntervalTimetable("0 0 * * 0", timezone="UTC"),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=default_args,
    tags=["r2ec", "training"],
    params={
        "repo": Param(REPO, type="string"),
        "warehouse": Param(f"{REPO}/warehouse", type="string"),
        "models": Param(f"{REPO}/models", type="string", description="where candidates are written"),
        "config": Param(f"{REPO}/configs/default-model-2026-11-26.json", type="string",
                        description="frozen RecPO settings"),
        "train_minutes": Param(60, type="number", minimum=1, description="RecPO time budget"),
        "max_new_tokens": Param(32, type="integer", minimum=1),
        "eval_limit": Param(2000, type="integer", minimum=0, description="valid samples (0 = all)"),
        "margin": Param(0.0, type="number",
                        description="the paired 95% interval of the NDCG@10 gain must lie above this"),
        "retention_hours": Param(168, type="number", minimum=168,
                                 description="time travel kept by the weekly VACUUM (hours)"),
    },
) as dag:
    samples = BashOperator(
        task_id="training_samples",
        doc_md="Rebuild `training_samples` from events up to the week's last day (one commit).",
        bash_command=f"{SUBMIT} jobs/build_histories.py --as-of {AS_OF} --skip-histories {WH}",
        pool="default_pool",  # Spark on CPUs only
    )
    train = BashOperator(
        task_id="train_recpo",
        doc_md="RecPO from the champion; `--resume` continues a retried attempt exactly.",
        bash_command=(f"{SUBMIT} jobs/train_recpo.py --stage recpo --model champion "
                      f"--config {{{{ params.config }}}} --out {CANDIDATE} --resume --register candidate "
                      f"--rl-max-minutes {{{{ params.train_minutes }}}} "
                      f"--valid-limit {{{{ params.eval_limit }}}} {WH}"),
    )
    embed = BashOperator(
        task_id="embed_candidate",
        bash_command=f"{SUBMIT} jobs/embed_items.py --model {CANDIDATE}/best {WH}",
    )
    eval_candidate = BashOperator(
        task_id="evaluate_candidate",
        bash_command=f"{SUBMIT} jobs/evaluate.py --model {CANDIDATE}/best {EVAL} {WH}",
    )
    eval_champion = BashOperator(
        task_id="evaluate_champion",
        bash_command=f"{SUBMIT} jobs/evaluate.py --model champion {EVAL} {WH}",
    )
    promote = BashOperator(
        task_id="promote",
        doc_md="Champion only if the paired 95% interval of the gain clears `margin`; skipped "
               "(exit 99) when the champion did not change, so the Asset is emitted only on a "
               "real promotion.",
        bash_command=(f"{SUBMIT} jobs/promote.py --candidate {CANDIDATE}/best "
                      f"--margin {{{{ params.margin }}}} --unchanged-exit-code 99 {WH}"),
        skip_on_exit_code=99,
        outlets=[CHAMPION],
        retries=0,  # the same evaluations give the same decision
        pool="default_pool",
    )
    maintain = BashOperator(
        task_id="maintain_tables",
        doc_md="Compact (Z-ordered by the columns readers filter on) and VACUUM every table, "
               "keeping time travel for `retention_hours`; independent of the training.",
        bash_command=(f"{SUBMIT} jobs/maintain_tables.py --retention-hours "
                      f"{{{{ params.retention_hours }}}} {WH}"),
        pool="default_pool",
    )
    register = BashOperator(
        task_id="register_tables",
        doc_md="Name every table in the catalog with its comments, plus the analysts' views.",
        bash_command=f"{SUBMIT} jobs/register_tables.py {WH}",
        pool="default_pool",
    )
    maintain >> register
    samples >> train >> embed >> [eval_candidate, eval_champion] >> promote
    samples >> eval_champion
