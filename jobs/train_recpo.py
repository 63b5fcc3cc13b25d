"""Train the dual-head model: stage `warmstart` (multi-target contrastive, optionally teaching a
reasoning format) or stage `recpo` (RecPO reinforcement learning of the reasoning, the paper's
method), then register the result.

    bin/r2ec-submit jobs/train_recpo.py --stage warmstart --model models/default-init --out models/ws
    bin/r2ec-submit jobs/train_recpo.py --stage recpo --model champion --out models/recpo --max-minutes 30
    bin/r2ec-submit jobs/train_recpo.py --stage recpo --model champion --out models/recpo --resume

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

from jobs import cli, delta_io, registry
from jobs.session import build_spark
from schemas import ITEMS, TRAINING_SAMPLES

log = logging.getLogger("train_recpo")


def _args(argv):
    from r2ec.recpo import RecPOConfig
    from r2ec.warmstart import WarmStartConfig

    p = cli.parser(__doc__.split("\n\n")[0])
    p.add_argument("--stage", required=True, choices=["warmstart", "recpo"])
    p.add_argument("--model", default="champion", help="'champion' or a checkpoint directory")
    p.add_argument("--out", required=True, help="output folder (best/, state/, metrics.jsonl)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/state exactly")
    p.add_argument("--register", choices=["none", "candidate", "champion"], default="candidate")
    p.add_argument("--train-limit", type=int, default=0, help="use only the first N train samples")
    p.add_argument("--valid-limit", type=int, default=0,
                   help="final validation on the first N valid samples (0 = all)")
    p.add_argument("--device", default=None, help="cpu / cuda (default: cuda if available)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    cli.add_dataclass_args(p, WarmStartConfig, "ws-", "warmstart stage")
    cli.add_dataclass_args(p, RecPOConfig, "rl-", "recpo stage")
    return cli.parse_with_config(p, argv)


def main(argv: list[str] | None = None) -> int:
    a = _args(argv)
    cli.setup_logging(a.verbose)
    import torch

    from r2ec.config import SamplingConfig
    from r2ec.data import Catalog
    from r2ec.model import R2ec
    from r2ec.training import evaluate_r2ec

    if a.threads:
        torch.set_num_threads(a.threads)
    spark = build_spark("r2ec-train")
    items = delta_io.read(spark, a.warehouse, ITEMS).select("item_id", "title", "attributes").toPandas()
    samples = delta_io.read(spark, a.warehouse, TRAINING_SAMPLES).filter(F.col("split") != "test")
    train = samples.filter(F.col("split") == "train").orderBy("sample_id")
    valid = samples.filter(F.col("split") == "valid").orderBy("sample_id")
    if a.train_limit:
        train = train.limit(a.train_limit)
    if a.valid_limit:
        valid = valid.limit(a.valid_limit)
    train, valid = train.toPandas(), valid.toPandas()
    catalog = Catalog.from_frame(items)
    model_dir = registry.resolve(spark, a.warehouse, a.model)
    r2ec = R2ec.load(model_dir, device=a.device)
    log.info("training %s from %s (%s) on %d train / %d valid samples", a.stage, model_dir,
             r2ec.model_version, len(train), len(valid))

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
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
    (out / "train_config.json").write_text(json.dumps(
        {"stage": a.stage, "from": str(model_dir), "config": asdict(cfg)}, indent=2))
    summary = run(r2ec, catalog, train, valid, cfg, out, resume=a.resume)
    log.info("training finished: %s", summary)

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
    if a.register != "none":
        from r2ec import checkpoint

        manifest = checkpoint.verify(out / "best")
        registry.register(spark, a.warehouse, manifest, out / "best", a.register,
                          valid_ndcg10=metrics["ndcg@10"], metrics={"valid": metrics, **summary},
                          config=asdict(cfg))
    print(f"{a.stage}: {best.model_version} valid NDCG@10 {metrics['ndcg@10']:.4f} "
          f"HR@10 {metrics['hit@10']:.4f} ({len(valid):,} samples) -> {out / 'best'}", flush=True)
    return 0


if __name__ == "__main__":
    cli.run(main)
