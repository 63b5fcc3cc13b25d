"""
### R²ec periodic RecPO fine-tuning with champion promotion

Weekly, for the logical date `{{ ds }}`:

1. **training_samples**: rebuild the paper-protocol samples (80/10/10 by target time) from the
   current `interactions`;
2. **train_recpo**: RecPO from the current *champion*, within a time budget, into
   `models/recpo-{{ ds_nodash }}` (registered as `candidate`);
3. **embed_candidate**: its item embeddings and FAISS index;
4. **evaluate_candidate** / **evaluate_champion**: both on the same valid split, same sample
   limit, greedy reasoning (the champion is re-evaluated: the split may have moved);
5. **promote**: the candidate becomes champion only if its valid NDCG@10 beats the champion's by
   `margin`; otherwise it is recorded as `rejected` and the champion stays. Scoring always uses
   the champion, so the nightly DAG picks up a promotion on its next run.

Tasks call `bin/r2ec-submit` like the nightly DAG (see its notes). Paths come from the Variables
`r2ec_repo`, `r2ec_warehouse`, `r2ec_models`, else from the params.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, Param

REPO = str(Path(__file__).resolve().parents[1])


def _v(name: str, param: str) -> str:
    return f"{{{{ var.value.get('{name}', params.{param}) }}}}"


SUBMIT = f"cd {_v('r2ec_repo', 'repo')} && bin/r2ec-submit --conf spark.ui.showConsoleProgress=false"
WH = f"--warehouse {_v('r2ec_warehouse', 'warehouse')}"
CANDIDATE = f"{_v('r2ec_models', 'models')}/recpo-{{{{ ds_nodash }}}}"
EVAL = "--split valid --limit {{ params.eval_limit }} --max-new-tokens {{ params.max_new_tokens }}"

default_args = {
    "owner": "r2ec",
    "retries": 1,
    "retry_delay": timedelta(minutes=10),
    "execution_timeout": timedelta(hours=12),
}

with DAG(
    dag_id="r2ec_recpo_finetune",
    description="Weekly RecPO fine-tuning of the champion, promoted only if better",
    doc_md=__doc__,
    schedule="@weekly",
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
        "margin": Param(0.0, type="number", description="NDCG@10 gain needed to promote"),
    },
) as dag:
    samples = BashOperator(
        task_id="training_samples",
        doc_md="Rebuild `training_samples` (overwrite, one commit).",
        bash_command=f"{SUBMIT} jobs/build_histories.py --as-of {{{{ ds }}}} --skip-histories {WH}",
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
        doc_md="Champion only if better by `margin`; else the candidate is `rejected`.",
        bash_command=(f"{SUBMIT} jobs/promote.py --candidate {CANDIDATE}/best "
                      f"--margin {{{{ params.margin }}}} {WH}"),
    )
    samples >> train >> embed >> [eval_candidate, eval_champion] >> promote
    samples >> eval_champion
