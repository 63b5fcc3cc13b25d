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
The decision itself is `r2ec_batch/promotion.py`.
"""

from __future__ import annotations

from r2ec_batch import cli, registry
from r2ec_batch.promotion import PromotionRequest, promote
from r2ec_batch.session import build_spark

# A first champion below the baseline under --require-baseline: neither success nor "unchanged".
REFUSED_EXIT_CODE = 3


def parse_args(argv):
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
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    cli.setup_logging(a.verbose)
    spark = build_spark("r2ec-promote")
    model = registry.resolve_verified(spark, a.warehouse, a.candidate)
    req = PromotionRequest(warehouse=a.warehouse, candidate=a.candidate, dataset=a.dataset,
                           split=a.split, mode=a.mode, margin=a.margin,
                           require_baseline=a.require_baseline)
    decision = promote(spark, req, model)
    print(decision.message, flush=True)
    if decision.outcome == "refused":
        return REFUSED_EXIT_CODE
    return 0 if decision.outcome == "champion" else a.unchanged_exit_code


if __name__ == "__main__":
    cli.run(main)
