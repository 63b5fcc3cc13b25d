"""What the R²ec DAGs share: the pool their heavy tasks queue in, the Asset a promotion emits,
and the failure callback. Not a DAG (`.airflowignore` keeps the DAG processor off it); Airflow
puts the DAGs folder on `sys.path`, so the DAG files import it as `r2ec_airflow`. Imports only
the standard library and the Airflow SDK, so parsing a DAG stays fast.

Set-up, once per Airflow deployment (the pool must exist: a task in a missing pool never runs):

    airflow pools set r2ec_gpu 1 "R²ec scoring, embedding, evaluation and training slots"

The pool's size is how many heavy tasks run at once on the deployment, across all R²ec DAGs:
one per GPU (or per host for CPU runs). `R2EC_AIRFLOW_POOL`, read when a DAG file is parsed,
names another pool.

Failures: every task's `on_failure_callback` logs one line (DAG, task, run, logical date, try,
error, log URL) at ERROR, then calls the function named by the Airflow Variable
`r2ec_failure_callback` ("package.module:function", called with the task's context), e.g. a
Slack or PagerDuty notifier of your own. Set it with `airflow variables set` or the environment
variable `AIRFLOW_VAR_R2EC_FAILURE_CALLBACK`.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
from typing import Any

from airflow.sdk import Asset

log = logging.getLogger("r2ec.airflow")

POOL = os.environ.get("R2EC_AIRFLOW_POOL", "r2ec_gpu")

# Emitted by the fine-tuning DAG's `promote` task only when the champion changed (a rejection
# ends that task as skipped, and skipped tasks emit nothing); it schedules r2ec_reembed_champion.
CHAMPION = Asset(name="r2ec_champion", uri="r2ec://model_registry/champion")


def _user_callback() -> str:
    from airflow.sdk import Variable

    try:
        return Variable.get("r2ec_failure_callback", default="") or ""
    except Exception as e:  # noqa: BLE001 - a broken lookup must not hide the task's failure
        log.warning("could not read the Variable r2ec_failure_callback: %s", e)
        return ""


def on_failure(context: dict[str, Any]) -> None:
    """Task failure callback: one structured log line, then the configured hook if any. Never
    raises (Airflow would log that instead of the failure it is about)."""
    ti = context.get("ti") or context.get("task_instance")
    facts = {
        "dag_id": getattr(ti, "dag_id", None), "task_id": getattr(ti, "task_id", None),
        "run_id": getattr(ti, "run_id", None), "logical_date": str(context.get("logical_date")),
        "try_number": getattr(ti, "try_number", None), "error": str(context.get("exception")),
        "log_url": getattr(ti, "log_url", None),
    }
    log.error("R²ec task failed: %s", json.dumps(facts, default=str))
    target = _user_callback()
    if not target:
        return
    module, _, name = target.partition(":")
    try:
        getattr(importlib.import_module(module), name)(context)
    except Exception:  # noqa: BLE001
        log.exception("the failure callback %s raised", target)
