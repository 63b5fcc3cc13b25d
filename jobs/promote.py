"""Promote a candidate model to champion if it is better than the current champion beyond
resampling noise, on the same samples.

    bin/r2ec-submit jobs/promote.py --candidate models/recpo/best --margin 0.002

Both models must have been evaluated with jobs/evaluate.py on the same dataset, split and mode
(the fine-tuning DAG does that). The decision is paired: per-sample NDCG@10 of both models on
the samples both were evaluated on (from `eval_rankings`), and a bootstrap 95% interval of the
mean difference (2,000 resamples of the samples, pairs kept together). The candidate becomes
champion only if the interval's lower end is above --margin (default 0: better, and not by
noise); the old champion is retired in the same commit. Otherwise the candidate is recorded as
rejected and the champion stays. The difference, its interval and the number of paired samples
are recorded with the candidate in `model_registry`.

With no champion yet, the candidate is promoted, but it is also compared with the last-item
transition baseline on the same split (the ship rule: a model that loses to last-item
transitions is not worth its compute): if it does not beat that,
the job says so loudly (and --require-baseline turns that into a refusal).
"""

from __future__ import annotations

import logging

from pyspark.sql import functions as F

from r2ec import checkpoint
from r2ec.metrics import paired_bootstrap
from r2ec_batch import cli, delta_io, registry
from r2ec_batch.schemas import EVAL_RANKINGS, EVALUATIONS, ITEMS, TRAINING_SAMPLES
from r2ec_batch.session import build_spark

log = logging.getLogger("promote")


def _ndcg10(spark, warehouse, version: str, dataset: str, split: str, mode: str) -> float | None:
    """The model's latest recorded NDCG@10 (evaluations keep every evaluation)."""
    if not delta_io.exists(spark, warehouse, EVALUATIONS):
        return None
    r = (delta_io.read(spark, warehouse, EVALUATIONS)
         .filter((F.col("model_version") == version) & (F.col("dataset") == dataset)
                 & (F.col("split") == split) & (F.col("mode") == mode)
                 & (F.col("metric") == "ndcg") & (F.col("k") == 10))
         .orderBy(F.desc("evaluated_at")).select("value").first())
    return None if r is None else float(r["value"])


def paired_ndcg10(spark, warehouse, cand: str, champ: str, split: str):
    """Per-sample NDCG@10 of both models on the samples both have rankings for."""
    import numpy as np

    from r2ec.metrics import ndcg_from_lists

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
    p.add_argument("--margin", type=float, default=0.0,
                   help="the lower end of the 95%% interval of the NDCG@10 difference must be "
                        "above this (0: better beyond resampling noise)")
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--split", default="valid", choices=["valid", "test"])
    p.add_argument("--mode", default="greedy_reasoning", choices=["greedy_reasoning", "no_reasoning"])
    p.add_argument("--require-baseline", action="store_true",
                   help="refuse a first champion that does not beat the transition baseline")
    p.add_argument("--unchanged-exit-code", type=int, default=0, metavar="N",
                   help="exit status when the champion did not change (candidate rejected or "
                        "already champion). The fine-tuning DAG passes 99, which Airflow's "
                        "BashOperator reports as a skipped task: its champion Asset is then not "
                        "emitted, and nothing is re-embedded for a model that did not change")
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
        return a.unchanged_exit_code
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
    a_nd, b_nd = paired_ndcg10(spark, a.warehouse, cand, champ["model_version"], a.split)
    if not len(a_nd):
        raise cli.JobError(f"no rankings of both {cand} and {champ['model_version']} on "
                           f"{a.split} in eval_rankings; run jobs/evaluate.py for both first")
    diff, lo, hi = paired_bootstrap(a_nd, b_nd)
    better = lo > a.margin
    registry.register(spark, a.warehouse, manifest, a.candidate,
                      "champion" if better else "rejected", valid_ndcg10=cand_score,
                      metrics={"champion_ndcg10": champ_score, "margin": a.margin,
                               "paired_samples": len(a_nd), "ndcg10_difference": diff,
                               "ndcg10_difference_ci95": [lo, hi]})
    verdict = "promoted" if better else "rejected"
    print(f"{verdict}: candidate {cand} NDCG@10 {cand_score:.4f} vs champion "
          f"{champ['model_version']} {champ_score:.4f} on {a.dataset}/{a.split}; paired over "
          f"{len(a_nd):,} samples: difference {diff:+.4f}, 95% CI [{lo:+.4f}, {hi:+.4f}] "
          f"({'lower end above' if better else 'lower end not above'} the margin {a.margin})",
          flush=True)
    return 0 if better else a.unchanged_exit_code


if __name__ == "__main__":
    cli.run(main)
