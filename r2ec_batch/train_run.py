"""One training run, as `jobs/train.py` asks for it: one snapshot of `training_samples`
(the main process's version, on every process of a multi-process run), the stage (warm start
or RecPO) from the start model, the best checkpoint measured on the whole valid split when it
was selected on a subset, and its registration with everything needed to trace it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from r2ec.recpo import RecPOConfig
from r2ec.warmstart import WarmStartConfig
from r2ec_batch import delta_io, registry, storage
from r2ec_batch.cli import JobError
from r2ec_batch.schemas import ITEMS, TRAINING_SAMPLES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainRequest:
    """What a training run is asked for (the flags of jobs/train.py)."""

    warehouse: str
    stage: str  # "warmstart" or "recpo"
    config: WarmStartConfig | RecPOConfig
    out: str
    model: str = "champion"
    resume: bool = False
    register: str = "candidate"  # or "none", "champion"
    train_limit: int = 0
    valid_limit: int = 0
    device: str | None = None


@dataclass(frozen=True)
class TrainResult:
    model_version: str
    valid_metrics: dict[str, float]
    valid_samples: int
    best_location: str


def train_run(spark: SparkSession, req: TrainRequest, rank: int = 0,
              world: int = 1) -> TrainResult | None:
    """Train, validate and register; None on a process other than the main one (it trained
    its share, the main one does the rest)."""
    from r2ec import distributed
    from r2ec.data import Catalog
    from r2ec.model import R2ec

    if world > 1 and not storage.is_local(req.out):
        raise JobError("a multi-process run needs a local --out (shared by its processes)")
    items = delta_io.read(spark, req.warehouse, ITEMS).select("item_id", "title",
                                                              "attributes").toPandas()
    # One snapshot of training_samples for the whole run, recorded with the model.
    data_version = delta_io.version(spark, req.warehouse, TRAINING_SAMPLES)
    if world > 1:  # every process trains on the version the main process saw
        data_version = distributed.from_main(data_version)
    train, valid = _splits(spark, req, data_version)
    catalog = Catalog.from_frame(items)
    start = registry.resolve_verified(spark, req.warehouse, req.model)
    model = R2ec.load(start.local, device=req.device)
    log.info("training %s from %s (%s) on %d train / %d valid samples", req.stage,
             start.location, model.model_version, len(train), len(valid))
    with storage.output_dir(req.out) as out:
        done = _train(req, model, start.location, catalog, train, valid, out, main=rank == 0)
    if done is None:
        return None
    metrics, summary, manifest = done
    best_location = storage.join(req.out, "best")
    if req.register != "none":
        registry.register(spark, req.warehouse, manifest, best_location, req.register,
                          valid_ndcg10=metrics["ndcg@10"], metrics={"valid": metrics, **summary},
                          config={"stage": req.stage, "from": start.location,
                                  "from_version": start.version,
                                  "training_samples_version": data_version,
                                  "train_samples": len(train), "valid_samples": len(valid),
                                  "config": asdict(req.config)})
    return TrainResult(manifest["model_version"], metrics, len(valid), best_location)


def _splits(spark: SparkSession, req: TrainRequest,
            data_version: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    samples = (delta_io.read(spark, req.warehouse, TRAINING_SAMPLES, version=data_version)
               .filter(F.col("split") != "test"))
    train = samples.filter(F.col("split") == "train").orderBy("sample_id")
    valid = samples.filter(F.col("split") == "valid").orderBy("sample_id")
    if req.train_limit:
        train = train.limit(req.train_limit)
    if req.valid_limit:
        valid = valid.limit(req.valid_limit)
    return train.toPandas(), valid.toPandas()


def _train(req: TrainRequest, model, start_location: str, catalog, train: pd.DataFrame,
           valid: pd.DataFrame, out: Path, main: bool = True):
    """Run the stage into the local folder `out`; (valid metrics, summary, manifest of the
    best checkpoint), or None on a process other than the main one."""
    from r2ec import checkpoint
    from r2ec.model import R2ec
    from r2ec.training import evaluate_r2ec

    cfg = req.config
    if req.stage == "warmstart":
        from r2ec.warmstart_trainer import train as run

        reasoning = cfg.eval_reasoning and cfg.reasoning_share > 0
    else:
        from r2ec.recpo_trainer import train as run

        reasoning = True
    if main:
        (out / "train_config.json").write_text(json.dumps(
            {"stage": req.stage, "from": start_location, "config": asdict(cfg)}, indent=2))
    summary = run(model, catalog, train, valid, cfg, out, resume=req.resume)
    log.info("training finished: %s", summary)
    if not main:
        return None

    best = R2ec.load(out / "best", device=req.device)
    res_metrics = summary.pop("best_valid_metrics", None)
    if not res_metrics or (cfg.eval_samples and cfg.eval_samples < len(valid)):
        # selected on a subset (or resumed past the best): measure the whole split once
        res_metrics = evaluate_r2ec(best, valid, catalog, reasoning=reasoning,
                                    sampling=cfg.eval_sampling, progress=True,
                                    desc="valid").metrics
    metrics = {k: round(v, 5) for k, v in res_metrics.items()}
    (out / "valid_metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics, summary, checkpoint.verify(out / "best")
