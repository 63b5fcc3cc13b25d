"""Promote a candidate model to champion if it beats the current champion on the same split.

    bin/r2ec-submit jobs/promote.py --candidate models/recpo/best --margin 0.002

Both models must have been evaluated with jobs/evaluate.py on the same dataset, split and mode
(the fine-tuning DAG does that); the decision uses NDCG@10. Better by at least --margin: the
candidate becomes champion and the old champion is retired in the same commit. Otherwise the
candidate is recorded as rejected and the champion stays.

With no champion yet, the candidate is promoted, but it is also compared with the last-item
transition baseline on the same split (the ship rule: a model that loses to last-item
transitions is not worth its compute): if it does not beat that,
the job says so loudly (and --require-baseline turns that into a refusal).
"""

from __future__ import annotations

import logging

from pyspark.sql import functions as F

from r2ec import checkpoint
from r2ec_batch import cli, delta_io, registry
from r2ec_batch.schemas import EVALUATIONS, ITEMS, TRAINING_SAMPLES
from r2ec_batch.session import build_spark

log = logging.getLogger("promote")


def _ndcg10(spark, warehouse, version: str, dataset: str, split: str, mode: str) -> float | None:
    if not delta_io.exists(spark, warehouse, EVALUATIONS):
        return None
    r = (delta_io.read(spark, warehouse, EVALUATIONS)
         .filter((F.col("model_version") == version) & (F.col("dataset") == dataset)
                 & (F.col("split") == split) & (F.col("mode") == mode)
                 & (F.col("metric") == "ndcg") & (F.col("k") == 10)).select("value").first())
    return None if r is None else float(r["value"])


def transition_baseline(spark, warehouse, split: str) -> float:
    from r2ec.baselines import LastItemTransition
    from r2ec.data import Catalog
    from r2ec.evaluation import evaluate

    items = delta_io.read(spark, warehouse, ITEMS).select("item_id", "title", "attributes").toPandas()
    s = delta_io.read(spark, warehouse, TRAINING_SAMPLES).filter(F.col("split").isin("train", split))
    s = s.select("sample_id", "history_item_ids", "target_item_id", "split").toPandas()
    catalog = Catalog.from_frame(items)
    model = LastItemTransition(s[s["split"] == "train"], catalog)
    return evaluate(model, s[s["split"] == split], catalog, progress=False).metrics["ndcg@10"]


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__.split("\n\n")[0])
    p.add_argument("--candidate", required=True, help="checkpoint folder or URI of the candidate")
    p.add_argument("--margin", type=float, default=0.0, help="NDCG@10 gain needed to promote")
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--split", default="valid", choices=["valid", "test"])
    p.add_argument("--mode", default="greedy_reasoning", choices=["greedy_reasoning", "no_reasoning"])
    p.add_argument("--require-baseline", action="store_true",
                   help="refuse a first champion that does not beat the transition baseline")
    a = p.parse_args(argv)
    cli.setup_logging(a.verbose)
    spark = build_spark("r2ec-promote")
    model = registry.resolve_verified(spark, a.warehouse, a.candidate)
    manifest = checkpoint.verify(model.local)
    cand = manifest["model_version"]
    cand_score = _ndcg10(spark, a.warehouse, cand, a.dataset, a.split, a.mode)
    if cand_score is None:
        raise cli.JobError(f"no {a.mode} NDCG@10 on {a.dataset}/{a.split} for {cand}; run "
                           f"jobs/evaluate.py --model {a.candidate} --split {a.split} first")
    champ = registry.champion(spark, a.warehouse)
    if champ is not None and champ["model_version"] == cand:
        print(f"{cand} is already the champion", flush=True)
        return 0
    if champ is None:
        base = transition_baseline(spark, a.warehouse, a.split)
        ok = cand_score > base
        line = (f"first champion {cand}: NDCG@10 {cand_score:.4f} vs last-item transition "
                f"baseline {base:.4f} on {a.split}")
        if not ok:
            banner = "!" * 78
            print(f"{banner}\nWARNING: the model does NOT beat the last-item transition baseline.\n"
                  f"{line}\n{banner}", flush=True)
            if a.require_baseline:
                registry.register(spark, a.warehouse, manifest, a.candidate, "rejected",
                                  valid_ndcg10=cand_score)
                return 3
        registry.register(spark, a.warehouse, manifest, a.candidate, "champion",
                          valid_ndcg10=cand_score, metrics={"transition_baseline_ndcg10": base})
        print(f"promoted: {line}", flush=True)
        return 0
    champ_score = _ndcg10(spark, a.warehouse, champ["model_version"], a.dataset, a.split, a.mode)
    if champ_score is None:
        raise cli.JobError(f"the champion {champ['model_version']} has no {a.mode} NDCG@10 on "
                           f"{a.dataset}/{a.split}; evaluate it on the same split first")
    better = cand_score >= champ_score + a.margin
    registry.register(spark, a.warehouse, manifest, a.candidate,
                      "champion" if better else "rejected", valid_ndcg10=cand_score,
                      metrics={"champion_ndcg10": champ_score, "margin": a.margin})
    verdict = "promoted" if better else "rejected"
    print(f"{verdict}: candidate {cand} NDCG@10 {cand_score:.4f} vs champion "
          f"{champ['model_version']} {champ_score:.4f} (margin {a.margin}) on {a.dataset}/{a.split}",
          flush=True)
    return 0


if __name__ == "__main__":
    cli.run(main)
