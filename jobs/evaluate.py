"""Evaluate a model on a split of `training_samples` through the same scoring path as
jobs/score.py (pandas UDF -> reasoning -> h_T -> FAISS top-20, history masked), the paper's
protocol: Hit@K and NDCG@K, K = 5, 10, 20, full catalogue, greedy reasoning.

    bin/r2ec-submit jobs/evaluate.py --split test
    bin/r2ec-submit jobs/evaluate.py --model models/ws/best --split valid --no-reasoning
    bin/r2ec-submit jobs/evaluate.py --split test --samples 8 --temperature 1.0   # test-time scaling

Writes the ranked lists to `eval_rankings` (replacing that model's rows for the split) and the
metrics to `evaluations` (appended, with the evaluation's time and the training_samples
version), then prints the table. Beside hit/NDCG: coverage, popularity percentile and bias,
novelty and intra-list diversity at each K and, with reasoning, the rationales' quality (distinct
lines, grounded items and genres, agreement with what was recommended) as `rationale_*`.
The evaluation itself is `r2ec_batch/evaluation.py`.
"""

from __future__ import annotations

from r2ec_batch import cli, delta_io, registry
from r2ec_batch.evaluation import EvalRequest, EvalResult, already_evaluated, evaluate
from r2ec_batch.schemas import EVALUATIONS
from r2ec_batch.session import build_spark


def parse_args(argv):
    p = cli.parser(__doc__.split("\n\n")[0])
    p.add_argument("--model", default="champion", help="'champion' or a checkpoint folder / URI")
    p.add_argument("--split", default="test", choices=["train", "valid", "test"])
    p.add_argument("--dataset", default="ml-100k", help="dataset name recorded with the metrics")
    p.add_argument("--no-reasoning", action="store_true", help="the paper's w/o-reasoning ablation")
    p.add_argument("--samples", type=cli.bounded_int(1, cli.MAX_SAMPLES), default=1,
                   help="reasonings per sample; > 1 averages their normalised h_T (needs "
                        "--temperature > 0): test-time scaling")
    p.add_argument("--limit", type=int, default=0, help="evaluate the first N samples only")
    p.add_argument("--backend", default="transformers", choices=["transformers", "vllm"])
    p.add_argument("--device", default=None)
    p.add_argument("--only-if-missing", action="store_true",
                   help="do nothing when evaluations already hold this model/split/mode")
    cli.add_sampling_args(p)
    a = p.parse_args(argv)
    a.sampling = cli.sampling_from_args(a)
    if a.samples < 1 or (a.samples > 1 and a.sampling.temperature <= 0):
        p.error("--samples must be >= 1, and > 1 needs --temperature > 0")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    cli.setup_logging(a.verbose)
    spark = build_spark("r2ec-evaluate")
    delta_io.add_missing_columns(spark, a.warehouse, EVALUATIONS)  # data_version (older tables)
    model = registry.resolve_verified(spark, a.warehouse, a.model)
    req = EvalRequest(warehouse=a.warehouse, split=a.split, sampling=a.sampling,
                      dataset=a.dataset, reasoning=not a.no_reasoning, samples=a.samples,
                      limit=a.limit, backend=a.backend, device=a.device)
    if a.only_if_missing and already_evaluated(spark, req, model.version):
        print(f"{model.version} already evaluated on {a.dataset}/{a.split} ({req.mode}); skipping")
        return 0
    _print_result(model.version, req, evaluate(spark, req, model))
    return 0


def _print_result(version: str, req: EvalRequest, r: EvalResult) -> None:
    if r.rationale_quality:
        print("rationales: " + ", ".join(f"{k} {v:.3f}" for k, v in r.rationale_quality.items()))
    print(f"{version} on {req.dataset}/{req.split} ({r.samples:,} samples of training_samples "
          f"version {r.data_version}, {req.mode.replace('_', ' ')}):")
    print("  " + "  ".join(f"{k:>8}" for k in r.metrics))
    print("  " + "  ".join(f"{v:8.4f}" for v in r.metrics.values()))
    print("beyond accuracy @10: " + ", ".join(
        f"{k.split('@')[0]} {v:.3f}" for k, v in r.beyond.items() if k.endswith("@10")), flush=True)


if __name__ == "__main__":
    cli.run(main)
