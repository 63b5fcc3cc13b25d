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

Tasks call `bin/r2ec-submit` like the nightly DAG (see its notes: no conf value ever reaches a
shell). Per-run conf: `train_minutes`, `max_new_tokens`, `eval_limit`, `margin`,
`retention_hours`, each typed and bounded. Deployment settings are the Variables `r2ec_repo`,
`r2ec_warehouse`, `r2ec_models` (candidates and their resumable training state are written
there) and `r2ec_config` (the frozen RecPO settings).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, CronDataIntervalTimetable, Param
from r2ec_airflow import CHAMPION, POOL, default_args, submit, var

CANDIDATE = var("r2ec_models") + "/recpo-{{ ds_nodash }}"
AS_OF = "{{ (data_interval_end - macros.timedelta(days=1)) | ds }}"  # the week's last day
EVAL = [("--split", "valid"), ("--limit", "{{ params.eval_limit }}"),
        ("--max-new-tokens", "{{ params.max_new_tokens }}")]

with DAG(
    dag_id="r2ec_recpo_finetune",
    description="Weekly RecPO fine-tuning of the champion, promoted only if better",
    doc_md=__doc__,
    schedule=CronDataIntervalTimetable("0 0 * * 0", timezone="UTC"),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    # training, embedding and evaluation share the GPU slots with nightly scoring
    default_args=default_args(retries=1, retry_delay=timedelta(minutes=10),
                              execution_timeout=timedelta(hours=12), pool=POOL),
    tags=["r2ec", "training"],
    params={
        "train_minutes": Param(60, type="number", minimum=1, maximum=24 * 60,
                               description="RecPO time budget"),
        "max_new_tokens": Param(32, type="integer", minimum=1, maximum=1024),
        "eval_limit": Param(2000, type="integer", minimum=0, maximum=10_000_000,
                            description="valid samples (0 = all)"),
        "margin": Param(0.0, type="number", minimum=-1, maximum=1,
                        description="the paired 95% interval of the NDCG@10 gain must lie above this"),
        "retention_hours": Param(168, type="number", minimum=168, maximum=24 * 365,
                                 description="time travel kept by the weekly VACUUM (hours)"),
    },
) as dag:
    samples = submit(
        "training_samples", "build_histories", [("--as-of", AS_OF), "--skip-histories"],
        pool="default_pool",  # Spark on CPUs only
        doc_md="Rebuild `training_samples` from events up to the week's last day (one commit).")
    train = submit(
        "train_recpo", "train",
        [("--stage", "recpo"), ("--model", "champion"), ("--config", var("r2ec_config")),
         ("--out", CANDIDATE), "--resume", ("--register", "candidate"),
         ("--rl-max-minutes", "{{ params.train_minutes }}"),
         ("--valid-limit", "{{ params.eval_limit }}")],
        doc_md="RecPO from the champion; `--resume` continues a retried attempt exactly.")
    embed = submit("embed_candidate", "embed_items", [("--model", CANDIDATE + "/best")])
    eval_candidate = submit("evaluate_candidate", "evaluate",
                            [("--model", CANDIDATE + "/best"), *EVAL])
    eval_champion = submit("evaluate_champion", "evaluate", [("--model", "champion"), *EVAL])
    promote = submit(
        "promote", "promote",
        [("--candidate", CANDIDATE + "/best"), ("--margin", "{{ params.margin }}"),
         ("--unchanged-exit-code", "99")],
        skip_on_exit_code=99,
        outlets=[CHAMPION],
        retries=0,  # the same evaluations give the same decision
        pool="default_pool",
        doc_md="Champion only if the paired 95% interval of the gain clears `margin`; skipped "
               "(exit 99) when the champion did not change, so the Asset is emitted only on a "
               "real promotion.")
    maintain = submit(
        "maintain_tables", "maintain_tables", [("--retention-hours", "{{ params.retention_hours }}")],
        pool="default_pool",
        doc_md="Compact (Z-ordered by the columns readers filter on) and VACUUM every table, "
               "keeping time travel for `retention_hours`; independent of the training.")
    register = submit(
        "register_tables", "register_tables", pool="default_pool",
        doc_md="Name every table in the catalog with its comments, plus the analysts' views.")
    maintain >> register
    samples >> train >> embed >> [eval_candidate, eval_champion] >> promote
    samples >> eval_champion
