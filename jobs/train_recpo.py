"""Train the dual-head model: stage `warmstart` (multi-target contrastive, optionally teaching a
reasoning format) or stage `recpo` (RecPO reinforcement learning of the reasoning, the paper's
method), then register the result.

    bin/r2ec-submit jobs/train_recpo.py --stage warmstart --model models/default-init --out models/ws
    bin/r2ec-submit jobs/train_recpo.py --stage recpo --model champion --out models/recpo --max-minutes 30
    bin/r2ec-submit jobs/train_recpo.py --stage recpo --model champion --out models/recpo --resume
    .venv/bin/accelerate launch --multi_gpu --num_processes 4 jobs/train_recpo.py --stage recpo ...

Several GPUs: one process per GPU (`accelerate launch` or `torchrun`), each with its own local
Spark session reading the same training_samples version; every step's batch is split between
them and the gradients averaged (`r2ec/distributed.py`), so per-step batch flags are per
process. The main process validates, saves, evaluates and registers; the others only train.

Every knob of both stages is a flag (see --help). The best checkpoint by valid NDCG@10 is kept in
OUT/best, its config in OUT/train_config.json, the metrics in OUT/metrics.jsonl; the model is
evaluated on the full valid split and registered (status from --register).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

from pyspark.sql import functions as F

from r2ec_batch import cli, delta_io, registry, storage
from r2ec_batch.schemas import ITEMS, TRAINING_SAMPLES
from r2ec_batch.session import build_spark

log = logging.getLogger("train_recpo")


def _args(argv):
    from r2ec.recpo import RecPOConfig
    from r2ec.warmstart import WarmStartConfig

    p = cli.parser(__doc__.split("\n\n")[0])
    p.add_argument("--stage", required=True, choices=["warmstart", "recpo"])
    p.add_argument("--model", default="champion", help="'champion' or a checkpoint folder / URI")
    p.add_argument("--out", required=True,
                   help="output folder or URI (best/, state/, metrics.jsonl); a URI is written "
                        "locally under the cache and uploaded when training ends")
    p.add_argument("--resume", action="store_true", help="continue from OUT/state exactly")
    p.add_argument("--register", choices=["none", "candidate", "champion"], default="candidate")
    p.add_argument("--train-limit", type=int, default=0, help="use only the first N train samples")
    p.add_argument("--valid-limit", type=int, default=0,
                   help="final validation on the first N valid samples (0 = all)")
    p.add_argument("--device", default=None, help="cpu / cuda (default: cuda if available)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    cli.add_dataclass_args(p, WarmStartConfig, "ws-", "warmstart stage")
    cli.add_dataclass_args(p, RecPOConfig, "rl-", "recpo stage")
    a = cli.parse_with_config(p, argv)
    if a.resume and not storage.is_local(a.out):
        p.error("--resume needs a local --out (the training state is not uploaded)")
    return a


def main(argv: list[str] | None = None) -> int:
    a = _args(argv)
    cli.setup_logging(a.verbose)
    import torch

    from r2ec import distributed
    from r2ec.data import Catalog
    from r2ec.model import R2ec

    rank, world = distributed.world()
    if world > 1 and not storage.is_local(a.out):
        raise cli.JobError("a multi-process run needs a local --out (shared by its processes)")
    a.device = distributed.local_device(a.device)

    if a.threads:
        torch.set_num_threads(a.threads)
    spark = build_spark("r2ec-train")
    items = delta_io.read(spark, a.warehouse, ITEMS).select("item_id", "title", "attributes").toPandas()
    # One snapshot of training_samples for the whole run, recorded with the model.
    data_version = delta_io.version(spark, a.warehouse, TRAINING_SAMPLES)
    if world > 1:  # every process trains on the version the main process saw
        data_version = distributed.from_main(data_version)
    samples = (spark.read.format("delta").option("versionAsOf", data_version)
               .load(delta_io.table_path(a.warehouse, TRAINING_SAMPLES))
               .filter(F.col("split") != "test"))
    train = samples.filter(F.col("split") == "train").orderBy("sample_id")
    valid = samples.filter(F.col("split") == "valid").orderBy("sample_id")
    if a.train_limit:
        train = train.limit(a.train_limit)
    if a.valid_limit:
        valid = valid.limit(a.valid_limit)
    train, valid = train.toPandas(), valid.toPandas()
    catalog = Catalog.from_frame(items)
    start = registry.resolve_verified(spark, a.warehouse, a.model)
    r2ec = R2ec.load(start.local, device=a.device)
    log.info("training %s from %s (%s) on %d train / %d valid samples", a.stage, start.location,
             r2ec.model_version, len(train), len(valid))
    with storage.output_dir(a.out) as out:
        done = _train(a, r2ec, start.location, catalog, train, valid, out, main=rank == 0)
    if done is None:
        return 0  # not the main process: it trained its share, the main one does the rest
    metrics, summary, cfg, manifest = done
    best_location = storage.join(a.out, "best")
    if a.register != "none":
        registry.register(spark, a.warehouse, manifest, best_location, a.register,
                          valid_ndcg10=metrics["ndcg@10"], metrics={"valid": metrics, **summary},
                          config={"stage": a.stage, "from": start.location,
                                  "from_version": start.version,
                                  "training_samples_version": data_version,
                                  "train_samples": len(train), "valid_samples": len(valid),
                                  "config": asdict(cfg)})
    print(f"{a.stage}: {manifest['model_version']} valid NDCG@10 {metrics['ndcg@10']:.4f} "
          f"HR@10 {metrics['hit@10']:.4f} ({len(valid):,} samples) -> {best_location}", flush=True)
    return 0


def _train(a, r2ec, start_location: str, catalog, train, valid, out: Path, main: bool = True):
    """Run the stage into the local folder `out`; (valid metrics, summary, config, manifest of
    the best checkpoint), or None on a process other than the main one."""
    from r2ec import checkpoint
    from r2ec.config import SamplingConfig
    from r2ec.model import R2ec
    from r2ec.training import evaluate_r2ec

    if a.stage == "warmstart":
        from r2ec.warmstart import WarmStartConfig
        from r2ec.warmstart import train as run

        cfg = cli.dataclass_from_args(a, WarmStartConfig, "ws_")
        reasoning = cfg.eval_reasoning and cfg.reasoning_share > 0
    else:
        from r2ec.recpo import RecPOConfig
        from r2ec.recpo_trainer import train as run

        cfg = cli.dataclass_from_args(a, RecPOConfig, "rl_")
        reasoning = True
    if main:
        (out / "train_config.json").write_text(json.dumps(
            {"stage": a.stage, "from": start_location, "config": asdict(cfg)}, indent=2))
    summary = run(r2ec, catalog, train, valid, cfg, out, resume=a.resume)
    log.info("training finished: %s", summary)
    if not main:
        return None

    best = R2ec.load(out / "best", device=a.device)
    res_metrics = summary.pop("best_valid_metrics", None)
    if not res_metrics or (cfg.eval_samples and cfg.eval_samples < len(valid)):
        # selected on a subset (or resumed past the best): measure the whole split once
        sampling = getattr(cfg, "eval_sampling", None) or SamplingConfig(
            max_new_tokens=getattr(cfg, "eval_max_new_tokens", 32))
        res_metrics = evaluate_r2ec(best, valid, catalog, reasoning=reasoning, sampling=sampling,
                                    progress=True, desc="valid").metrics
    metrics = {k: round(v, 5) for k, v in res_metrics.items()}
    (out / "valid_metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics, summary, cfg, checkpoint.verify(out / "best")


if __name__ == "__main__":
    cli.run(main)
