"""What the R²ec DAGs share: the pool their heavy tasks queue in, the Asset a promotion emits,
and the failure callback. Not a DAG (`.airflowignore` keeps the DAG processor off it); Airflow
puts the DAGs folder on `sys.path`, so the DAG files import it as `r2ec_airflow`. Imports only
the standard library and the Airflow SDK, so parsing a DAG stays fast.

Set-up, once per Airflow deployment (the pool must exist: a task in a missing pool never runs):

    airflow pools set r2ec_gpu 1 "R²ec scoring, embedding, evaluation and training slots"

The pool's size is how many heavy tasks run at once on the deployment, across all R²ec DAGs:
one per GPU (or per host for CPU runs). `R2EC_AIRFLOW_POOL`, read when a DAG file is parsed,
names another pool.

Deployment settings are Airflow Variables, never per-run conf (whoever may trigger a DAG must
not choose which checkout runs, which folders are read, or which code is imported):

| Variable | default | what |
|---|---|---|
| `r2ec_repo` | this checkout | the project checkout whose `bin/r2ec-submit` runs the jobs |
| `r2ec_warehouse` | `<repo>/warehouse` | the Delta tables (a folder or a URI) |
| `r2ec_models` | `<repo>/models` | where candidates are written; conf `model` names are inside it |
| `r2ec_data_path`, `r2ec_source` | `<repo>/data/raw/ml-100k`, `ml-100k` | the raw input |
| `r2ec_config` | `<repo>/configs/default-model-2026-11-26.json` | the frozen RecPO settings |
| `r2ec_failure_callback` | none | see below |

Tasks run `bin/r2ec-submit jobs/<job>.py` through `submit()` (`bin/r2ec-python` for a job that
needs no Spark: no JVM to start for it): the command is a fixed string made
of this folder's own literals, and every templated value (dates, Params, Variables) reaches the
job as one environment variable that the command expands inside double quotes ("$R2EC_MODEL"),
so no value is ever parsed as shell code. Per-run conf is limited to Params with a type and
bounds, and every string Param has a pattern or an enum.

Failures: every task's `on_failure_callback` logs one line (DAG, task, run, logical date, try,
error, log URL) at ERROR, then calls the function named by the Airflow Variable
`r2ec_failure_callback` ("package.module:function", called with the task's context), e.g. a
Slack or PagerDuty notifier of your own. It is an admin setting: whoever can write Airflow
Variables chooses code that runs in the workers, as with any Airflow plugin; its value must
have exactly that form. Set it with `airflow variables set` or the environment variable
`AIRFLOW_VAR_R2EC_FAILURE_CALLBACK`.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import Asset

log = logging.getLogger("r2ec.airflow")

POOL = os.environ.get("R2EC_AIRFLOW_POOL", "r2ec_gpu")
REPO = str(Path(__file__).resolve().parents[1])
DEFAULTS = {
    "r2ec_repo": REPO,
    "r2ec_warehouse": f"{REPO}/warehouse",
    "r2ec_models": f"{REPO}/models",
    "r2ec_data_path": f"{REPO}/data/raw/ml-100k",
    "r2ec_source": "ml-100k",
    "r2ec_config": f"{REPO}/configs/default-model-2026-11-26.json",
}
# A model named in per-run conf: 'champion', or a folder inside `r2ec_models` given by names of
# letters, digits, '_', '.', '-' that do not start with a dot (no '..', no absolute path).
MODEL_NAME = r"^(champion|[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}(/[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}){0,3})$"
VARIANT = r"^[A-Za-z0-9_-]{1,64}$"
CALLBACK = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")
_JOB = re.compile(r"^[a-z][a-z_]*$")
_FLAG = re.compile(r"^--[a-z][a-z0-9-]*$")

default_args_base: dict[str, Any] = {"owner": "r2ec", "retry_exponential_backoff": True}


def var(name: str) -> str:
    """Template of a deployment setting: the Airflow Variable, else its default."""
    return "{{ var.value.get(" + repr(name) + ", " + repr(DEFAULTS[name]) + ") }}"


def model_path(param: str = "params.model") -> str:
    """Template of a conf model name as a path: 'champion' stays, others go inside r2ec_models."""
    models = "var.value.get('r2ec_models', " + repr(DEFAULTS["r2ec_models"]) + ")"
    return f"{{{{ {param} if {param} == 'champion' else {models} ~ '/' ~ {param} }}}}"


def submit(task_id: str, job: str, args: Sequence[str | tuple[str, str]] = (),
           spark: bool = True, **kw) -> BashOperator:
    """A task running `bin/r2ec-submit jobs/<job>.py ARGS --warehouse W` from the `r2ec_repo`
    checkout (`spark=False`: `bin/r2ec-python`, for a job that reads Delta without Spark).
    `args` are bare flags or (flag, template) pairs; each template is rendered into its own
    environment variable, and the fixed command expands it in double quotes, so a value is
    always exactly one argument of the job and never shell code."""
    if not _JOB.match(job):
        raise ValueError(f"bad job name {job!r}")
    env = {"R2EC_REPO": var("r2ec_repo"), "R2EC_WAREHOUSE": var("r2ec_warehouse")}
    launcher = ("bin/r2ec-submit --conf spark.ui.showConsoleProgress=false" if spark
                else "bin/r2ec-python")
    words = [f'cd "$R2EC_REPO" && exec {launcher}', f"jobs/{job}.py"]
    for arg in args:
        flag, value = (arg, None) if isinstance(arg, str) else arg
        if not _FLAG.match(flag):
            raise ValueError(f"bad flag {flag!r}")
        words.append(flag)
        if value is not None:
            name = "R2EC_" + flag[2:].upper().replace("-", "_")
            if name in env:
                raise ValueError(f"{flag} given twice")
            env[name] = value
            words.append(f'"${name}"')
    words.append('--warehouse "$R2EC_WAREHOUSE"')
    return BashOperator(task_id=task_id, bash_command=" ".join(words), env=env, append_env=True,
                        **kw)


def default_args(retries: int, retry_delay: timedelta, execution_timeout: timedelta,
                 **extra: Any) -> dict[str, Any]:
    """The R²ec DAGs' default_args: owner, retries with back-off, timeout, failure callback."""
    return {**default_args_base, "retries": retries, "retry_delay": retry_delay,
            "execution_timeout": execution_timeout, "on_failure_callback": on_failure, **extra}

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
    if not CALLBACK.match(target):
        log.error("the Variable r2ec_failure_callback %r is not 'package.module:function'; "
                  "not called", target[:200])
        return
    module, _, name = target.partition(":")
    try:
        getattr(importlib.import_module(module), name)(context)
    except Exception:  # noqa: BLE001
        log.exception("the failure callback %s raised", target)
