"""The promotion decision of `jobs/promote.py`: a candidate becomes champion only when its
per-sample NDCG@10 beats the champion's on the same samples beyond resampling noise (a paired
bootstrap 95% interval whose lower end is above the margin); a first champion must beat the
last-item transition baseline, or is promoted with a loud warning (refused with
require_baseline). Every decision is recorded in `model_registry` with its numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from r2ec import checkpoint
from r2ec.metrics import ndcg_from_lists, paired_bootstrap
from r2ec_batch import delta_io, registry
from r2ec_batch.artifacts import ModelRef
from r2ec_batch.cli import JobError
from r2ec_batch.schemas import EVAL_RANKINGS, EVALUATIONS, ITEMS, TRAINING_SAMPLES


@dataclass(frozen=True)
class PromotionRequest:
    """What the promotion is asked (the flags of jobs/promote.py)."""

    warehouse: str
    candidate: str
    dataset: str = "ml-100k"
    split: str = "valid"
    mode: str = "greedy_reasoning"
    margin: float = 0.0
    require_baseline: bool = False


@dataclass(frozen=True)
class Decision:
    """champion: the candidate is champion now; rejected / unchanged: the champion stays
    (unchanged: the candidate already was it); refused: a first champion below the baseline
    under require_baseline (recorded as rejected)."""

    outcome: str
    message: str


def promote(spark: SparkSession, req: PromotionRequest, model: ModelRef) -> Decision:
    """Decide on the candidate `model` and record the decision in `model_registry`."""
    manifest = checkpoint.verify(model.local)
    cand = manifest["model_version"]
    cand_score = latest_ndcg10(spark, req.warehouse, cand, req.dataset, req.split, req.mode)
    if cand_score is None:
        raise JobError(f"no {req.mode} NDCG@10 on {req.dataset}/{req.split} for {cand}; run "
                       f"jobs/evaluate.py --model {req.candidate} --split {req.split} first")
    champ = registry.champion(spark, req.warehouse)
    if champ is not None and champ["model_version"] == cand:
        return Decision("unchanged", f"{cand} is already the champion")
    if champ is None:
        return _first_champion(spark, req, manifest, cand_score)
    champ_version = champ["model_version"]
    champ_score = latest_ndcg10(spark, req.warehouse, champ_version, req.dataset, req.split,
                                req.mode)
    if champ_score is None:
        raise JobError(f"the champion {champ_version} has no {req.mode} NDCG@10 on "
                       f"{req.dataset}/{req.split}; evaluate it on the same split first")
    a_nd, b_nd = paired_ndcg10(spark, req.warehouse, cand, champ_version, req.split)
    if not len(a_nd):
        raise JobError(f"no rankings of both {cand} and {champ_version} on {req.split} in "
                       f"eval_rankings; run jobs/evaluate.py for both first")
    diff, lo, hi = paired_bootstrap(a_nd, b_nd)
    better = lo > req.margin
    registry.register(spark, req.warehouse, manifest, req.candidate,
                      "champion" if better else "rejected", valid_ndcg10=cand_score,
                      metrics={"champion_ndcg10": champ_score, "margin": req.margin,
                               "paired_samples": len(a_nd), "ndcg10_difference": diff,
                               "ndcg10_difference_ci95": [lo, hi]})
    verdict = "promoted" if better else "rejected"
    return Decision(
        "champion" if better else "rejected",
        f"{verdict}: candidate {cand} NDCG@10 {cand_score:.4f} vs champion {champ_version} "
        f"{champ_score:.4f} on {req.dataset}/{req.split}; paired over {len(a_nd):,} samples: "
        f"difference {diff:+.4f}, 95% CI [{lo:+.4f}, {hi:+.4f}] "
        f"({'lower end above' if better else 'lower end not above'} the margin {req.margin})")


def _first_champion(spark: SparkSession, req: PromotionRequest, manifest: dict,
                    cand_score: float) -> Decision:
    base = transition_baseline(spark, req.warehouse, req.split)
    line = (f"first champion {manifest['model_version']}: NDCG@10 {cand_score:.4f} vs last-item "
            f"transition baseline {base:.4f} on {req.split}")
    warning = ""
    if cand_score <= base:
        banner = "!" * 78
        warning = (f"{banner}\nWARNING: the model does NOT beat the last-item transition "
                   f"baseline.\n{line}\n{banner}\n")
        if req.require_baseline:
            registry.register(spark, req.warehouse, manifest, req.candidate, "rejected",
                              valid_ndcg10=cand_score)
            return Decision("refused", warning + "refused: --require-baseline")
    registry.register(spark, req.warehouse, manifest, req.candidate, "champion",
                      valid_ndcg10=cand_score, metrics={"transition_baseline_ndcg10": base})
    return Decision("champion", f"{warning}promoted: {line}")


def latest_ndcg10(spark: SparkSession, warehouse: str, version: str, dataset: str, split: str,
                  mode: str) -> float | None:
    """The model's latest recorded NDCG@10 (evaluations keep every evaluation)."""
    if not delta_io.exists(spark, warehouse, EVALUATIONS):
        return None
    r = (delta_io.read(spark, warehouse, EVALUATIONS)
         .filter((F.col("model_version") == version) & (F.col("dataset") == dataset)
                 & (F.col("split") == split) & (F.col("mode") == mode)
                 & (F.col("metric") == "ndcg") & (F.col("k") == 10))
         .orderBy(F.desc("evaluated_at")).select("value").first())
    return None if r is None else float(r["value"])


def paired_ndcg10(spark: SparkSession, warehouse: str, cand: str, champ: str,
                  split: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample NDCG@10 of both models on the samples both have rankings for."""
    if not delta_io.exists(spark, warehouse, EVAL_RANKINGS):
        return np.zeros(0), np.zeros(0)
    lists = (delta_io.read(spark, warehouse, EVAL_RANKINGS)
             .filter(F.col("model_version").isin(cand, champ) & (F.col("split") == split)
                     & (F.col("rank") <= 10))
             .groupBy("model_version", "sample_id")
             .agg(F.sort_array(F.collect_list(F.struct("rank", "item_id"))).alias("top")))
    targets = delta_io.read(spark, warehouse, TRAINING_SAMPLES).filter(
        F.col("split") == split).select("sample_id", "target_item_id")
    df = lists.join(targets, "sample_id").toPandas()
    by = {v: g.set_index("sample_id") for v, g in df.groupby("model_version")}
    if cand not in by or champ not in by:
        return np.zeros(0), np.zeros(0)
    common = sorted(set(by[cand].index) & set(by[champ].index))

    def per_sample(v):
        g = by[v].loc[common]
        return ndcg_from_lists([[e["item_id"] for e in top] for top in g["top"]],
                               list(g["target_item_id"]), k=10)

    return per_sample(cand), per_sample(champ)


def transition_baseline(spark: SparkSession, warehouse: str, split: str) -> float:
    """NDCG@10 of the last-item transition baseline (trained on train) on the split."""
    from r2ec.baselines import LastItemTransition
    from r2ec.data import Catalog
    from r2ec.evaluation import evaluate

    items = delta_io.read(spark, warehouse, ITEMS).select("item_id", "title", "attributes").toPandas()
    s = delta_io.read(spark, warehouse, TRAINING_SAMPLES).filter(F.col("split").isin("train", split))
    s = s.select("sample_id", "history_item_ids", "target_item_id", "split").toPandas()
    catalog = Catalog.from_frame(items)
    model = LastItemTransition(s[s["split"] == "train"], catalog)
    return evaluate(model, s[s["split"] == split], catalog, progress=False).metrics["ndcg@10"]
