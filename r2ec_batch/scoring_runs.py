"""The ledger of scoring runs (`scoring_runs`): one row per scoring job of a run, written when the
job starts (its settings) and completed when it ends (what it cost), and what resuming a run
needs from it.

A run is resumable because it is written in slices (two commits each, recommendations then
rationales) and the ledger holds the settings its lists depend on. `--resume RUN_ID` (or
`latest`: the newest unpublished run of the date and variant, when its settings are these)
scores only the users that the run does not hold yet, under the same run id, as a new part.
A slice stopped between its two commits leaves recommendations without rationales: those rows
are deleted first, so no user is ever in the run twice.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from r2ec.config import FALLBACK_ERROR, FALLBACK_POPULARITY
from r2ec_batch import delta_io, publishing
from r2ec_batch.cli import JobError
from r2ec_batch.schemas import RATIONALES, RECOMMENDATIONS, SCORING_RUNS

log = logging.getLogger(__name__)

LATEST = "latest"


@dataclass(frozen=True)
class Part:
    """The part of a run this job writes: a new run (part 0), or a resumed one."""

    run_id: str
    part: int
    started_at: datetime
    done_users: DataFrame | None = None  # user_id of the users the run already holds


@dataclass
class Cost:
    """What a part cost, added up over its slices."""

    users_scored: int = 0
    users_carried: int = 0
    errors: int = 0
    popularity: int = 0  # users with no usable history (not stored: the rationales say it)
    commits: int = 0
    tokens: list[np.ndarray] | None = None
    wall_seconds_read: float = 0.0
    wall_seconds_score: float = 0.0
    wall_seconds_write: float = 0.0
    task_seconds_reasoning: float = 0.0
    task_seconds_search: float = 0.0
    devices: set[str] | None = None

    def add_slice(self, scored: DataFrame) -> None:
        """The scored users of one slice (RECOMMEND_SCHEMA rows, cached)."""
        a = scored.agg(F.count("*").alias("n"),
                       F.sum(F.when(F.col("fallback") == FALLBACK_ERROR, 1).otherwise(0)).alias("err"),
                       F.sum(F.when(F.col("fallback") == FALLBACK_POPULARITY, 1).otherwise(0))
                       .alias("pop"),
                       F.sum("seconds_reasoning").alias("r"), F.sum("seconds_search").alias("s"),
                       F.collect_set("device").alias("dev")).first()
        self.users_scored += a["n"]
        self.errors += a["err"] or 0
        self.popularity += a["pop"] or 0
        self.task_seconds_reasoning += a["r"] or 0.0
        self.task_seconds_search += a["s"] or 0.0
        self.devices = (self.devices or set()) | set(a["dev"] or [])
        tokens = scored.select("tokens").toPandas()["tokens"].to_numpy(dtype=np.int64)
        self.tokens = [*(self.tokens or []), tokens]

    def row(self) -> dict:
        tokens = np.concatenate(self.tokens) if self.tokens else np.zeros(0, dtype=np.int64)
        kinds = sorted({d.split("/", 1)[-1] for d in self.devices or ()})
        return {
            "users_scored": self.users_scored, "users_carried": self.users_carried,
            "errors": self.errors, "commits": self.commits,
            "tokens_generated": int(tokens.sum()),
            "tokens_p50": float(np.percentile(tokens, 50)) if len(tokens) else None,
            "tokens_p95": float(np.percentile(tokens, 95)) if len(tokens) else None,
            "wall_seconds_read": self.wall_seconds_read,
            "wall_seconds_score": self.wall_seconds_score,
            "wall_seconds_write": self.wall_seconds_write,
            "task_seconds_reasoning": self.task_seconds_reasoning,
            "task_seconds_search": self.task_seconds_search,
            "devices": ",".join(kinds) or None, "device_count": len(self.devices or ()),
        }


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def ledger(spark: SparkSession, warehouse: str) -> DataFrame | None:
    return (delta_io.read(spark, warehouse, SCORING_RUNS)
            if delta_io.exists(spark, warehouse, SCORING_RUNS) else None)


def start(spark: SparkSession, warehouse: str, run_date, variant: str, model_version: str,
          as_of, top_k: int, settings: dict, resume: str | None) -> Part:
    """The part this job writes, recorded in the ledger before anything is scored."""
    settings = json.loads(json.dumps(settings, sort_keys=True))  # as the ledger gives it back
    part = _resume_point(spark, warehouse, run_date, variant, settings, resume) if resume else None
    part = part or Part(publishing.new_run_id(), 0, _now())
    row = {"run_id": part.run_id, "part": part.part, "run_date": run_date, "variant": variant,
           "model_version": model_version, "as_of_date": as_of, "top_k": top_k,
           "settings": json.dumps(settings, sort_keys=True), "started_at": part.started_at}
    # (run_id, part) is new here (a new run, or one part past the run's last), so a blind
    # append: no anti-join and MERGE of a key nobody holds (1-2 s of Spark jobs on any table
    # size), and no conflict with another job's ledger write.
    delta_io.append(_frame(spark, row), SCORING_RUNS, warehouse)
    return part


def finish(spark: SparkSession, warehouse: str, part: Part, first: dict, cost: Cost) -> None:
    """Complete this part's ledger row (appended by `start`) with what it cost."""
    delta_io.update_row(spark, SCORING_RUNS, warehouse,
                        key={"run_id": part.run_id, "part": part.part},
                        values={**first, "started_at": part.started_at, "finished_at": _now(),
                                **cost.row()})


def _frame(spark: SparkSession, row: dict) -> DataFrame:
    full = {f.name: row.get(f.name) for f in SCORING_RUNS.schema.fields}
    return spark.createDataFrame([tuple(full.values())], SCORING_RUNS.schema)


def _resume_point(spark: SparkSession, warehouse: str, run_date, variant: str, settings: dict,
                  resume: str) -> Part | None:
    """The part that continues run `resume` (or the latest one); None: start a new run
    (`latest` with no unpublished run of these settings)."""
    rows = ledger(spark, warehouse)
    mine = None if rows is None else rows.filter(
        (F.col("run_date") == F.lit(run_date)) & (F.col("variant") == variant))
    if resume == LATEST:
        runs = [] if mine is None else [
            r for r in mine.filter(F.col("part") == 0).orderBy(F.desc("started_at")).collect()
            if not publishing.was_published(spark, warehouse, r["run_id"])]
        if not runs or json.loads(runs[0]["settings"]) != settings:
            log.info("--resume latest: no unpublished run of %s / %s with these settings; "
                     "starting a new run", run_date, variant)
            return None
        run_id = runs[0]["run_id"]
    else:
        run_id = resume
        first = None if mine is None else mine.filter(
            (F.col("run_id") == run_id) & (F.col("part") == 0)).first()
        if first is None:
            raise JobError(f"no scoring run {run_id!r} for {run_date} / {variant} in "
                           "scoring_runs; nothing to resume")
        if publishing.was_published(spark, warehouse, run_id):
            raise JobError(f"run {run_id} is published already; score a new run instead")
        differ = sorted(k for k in set(settings) | set(json.loads(first["settings"]))
                        if settings.get(k) != json.loads(first["settings"]).get(k))
        if differ:
            raise JobError(f"run {run_id} was scored with other settings ({', '.join(differ)}); "
                           "resume it with the same flags, or score a new run")
    written = publishing.run_time(run_id)
    if written is not None and _now() - written > publishing.PUBLISH_WINDOW:
        raise JobError(f"run {run_id} is older than the publish window "
                       f"({publishing.PUBLISH_WINDOW}); score the date again")
    parts = mine.filter(F.col("run_id") == run_id).agg(F.max("part")).first()[0]
    done = _users_held(spark, warehouse, run_id)
    log.info("resuming run %s as part %d", run_id, parts + 1)
    return Part(run_id, parts + 1, _now(), done)


def _users_held(spark: SparkSession, warehouse: str, run_id: str) -> DataFrame:
    """The users the run holds whole; first deletes the recommendations of a slice whose
    rationales were never committed (the job stopped between the two commits)."""
    def users(spec):
        if not delta_io.exists(spark, warehouse, spec):
            return spark.createDataFrame([], "user_id string")
        return (delta_io.read(spark, warehouse, spec).filter(F.col("run_id") == run_id)
                .select("user_id").distinct())

    with_rationale = users(RATIONALES).localCheckpoint()
    orphans = users(RECOMMENDATIONS).join(with_rationale, "user_id", "left_anti").withColumn(
        "run_id", F.lit(run_id)).localCheckpoint()
    n = orphans.count()
    if n:
        deleted = delta_io.delete_matching(orphans, RECOMMENDATIONS, warehouse,
                                           ["run_id", "user_id"])
        log.warning("run %s: %d user(s) had recommendations but no rationale (a slice stopped "
                    "half-way): their %d row(s) deleted, they are scored again", run_id, n,
                    deleted)
    return with_rationale
