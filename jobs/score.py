"""Score users with the dual-head model: reasoning -> h_T -> top-k from the item index, into
`recommendations` and `rationales` as a new run of (run date, variant), not yet published.

    bin/r2ec-submit jobs/score.py --run-date 2026-11-26 --publish
    bin/r2ec-submit jobs/score.py --run-date 2026-11-26 --no-reasoning --top-k 20
    bin/r2ec-submit jobs/score.py --run-date 2026-11-27 --incremental
    bin/r2ec-submit jobs/score.py --run-date 2026-11-26 --variant challenger --model models/x/best

Reads user_histories as of --as-of (default: the run date). The run's rows get a new run_id;
readers see them only once `jobs/publish.py` (or `--publish` here) has audited and published
the run, recommendations and rationales together (`r2ec_batch/publishing.py`). Re-running a
date writes another run beside the published one, which stays visible until a new one passes
its audit; runs never published are deleted by jobs/maintain_tables.py after 7 days (and can be
published for 3). --incremental re-scores only users whose history
changed since the latest earlier published run of the same variant and model, and copies the
others. Refuses to run when the index was built for another model version (run embed_items.py).
Rows are committed in slices of --commit-users users as they finish; `--resume RUN_ID` continues
a run that died, scoring only the users it does not hold yet (`r2ec_batch/scoring_runs.py`). A
user the model fails on gets the popular list with fallback 'error' (the audit allows
--max-error-rate of them). What each job cost is recorded in `scoring_runs`.
The run itself (which users, the business rules, the rows) is `r2ec_batch/scoring.py`.
"""

from __future__ import annotations

from r2ec_batch import artifacts, cli, publishing, registry, scoring
from r2ec_batch.schemas import ITEM_BLOCKLIST
from r2ec_batch.session import build_spark


def parse_args(argv):
    p = cli.parser(__doc__.split("\n\n")[0])
    p.add_argument("--run-date", type=cli.iso_date, required=True, help="partition to write")
    p.add_argument("--as-of", type=cli.iso_date, help="user_histories date (default: run date)")
    p.add_argument("--model", default="champion", help="'champion' or a checkpoint folder / URI")
    p.add_argument("--variant", default=publishing.CHAMPION, type=cli.variant,
                   help="output variant: champion, challenger, or any name ([A-Za-z0-9_-])")
    p.add_argument("--publish", action="store_true",
                   help="audit the run and publish it when every check passes (as jobs/publish.py)")
    p.add_argument("--top-k", type=cli.bounded_int(1, cli.MAX_TOP_K), default=10,
                   help="items per user")
    p.add_argument("--samples", type=cli.bounded_int(1, cli.MAX_SAMPLES), default=1,
                   help="reasonings per user; >1 averages their h_T (needs --temperature > 0)")
    p.add_argument("--no-reasoning", action="store_true", help="h_T straight after the prompt")
    p.add_argument("--users", help="comma-separated user ids to score (default: all)")
    p.add_argument("--incremental", action="store_true",
                   help="re-score only users whose history changed since the last run")
    p.add_argument("--backend", default="transformers", choices=["transformers", "vllm"])
    p.add_argument("--device", default=None, help="cpu / cuda (default: the task's GPU or cpu)")
    p.add_argument("--chunk-size", type=cli.bounded_int(1, cli.MAX_CHUNK), default=64,
                   help="users per model batch in a UDF (halved for the rest of a partition "
                        "after an out-of-memory)")
    p.add_argument("--max-batch-tokens", type=cli.bounded_int(0, 10**9), default=0,
                   help="a model batch may hold at most this many tokens (prompts + reasoning "
                        "budget); a larger one is handled as an out-of-memory before it runs. "
                        "0: no limit")
    publishing.add_error_rate_argument(p)
    p.add_argument("--commit-users", type=cli.bounded_int(1, 10**9), default=100_000,
                   help="users per slice of the run: each slice is committed (unpublished) as "
                        "it finishes, so a job that dies keeps what it wrote")
    p.add_argument("--resume", metavar="RUN_ID|latest",
                   help="continue this unpublished run of the date and variant: score only the "
                        "users it does not hold yet, with the same settings. 'latest': the "
                        "newest unpublished run if its settings are these, else a new run "
                        "(what the nightly DAG's retries pass)")
    rules = p.add_argument_group("business rules (applied inside the index search: lists stay "
                                 "--top-k long)")
    rules.add_argument("--exclude-seen", choices=["window", "all"], default="window",
                       help="never recommend the items of the history window (the paper's "
                            "protocol), or everything the user interacted with up to --as-of")
    rules.add_argument("--blocklist", default=ITEM_BLOCKLIST.name,
                       help="items never recommended: this table of the warehouse when it "
                            "exists ('none': no blocklist)")
    rules.add_argument("--available-attribute", default="", metavar="NAME",
                       help="items whose attribute NAME is false/0/no/unavailable are never "
                            "recommended (e.g. 'available', kept up to date by ingest)")
    cli.add_sampling_args(p)
    a = p.parse_args(argv)
    a.sampling = cli.sampling_from_args(a)
    if a.samples > 1 and a.sampling.temperature <= 0:
        p.error("--samples > 1 needs --temperature > 0")
    a.as_of = a.as_of or a.run_date
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    cli.setup_logging(a.verbose)
    spark = build_spark("r2ec-score")
    publishing.migrate(spark, a.warehouse)
    model = registry.resolve_verified(spark, a.warehouse, a.model)
    index = artifacts.usable_index(a.warehouse, model, hint=f"--model {a.model}")
    req = scoring.ScoreRequest(
        warehouse=a.warehouse, run_date=a.run_date, as_of=a.as_of, variant=a.variant,
        top_k=a.top_k, sampling=a.sampling, reasoning=not a.no_reasoning, samples=a.samples,
        users=tuple(u.strip() for u in a.users.split(",") if u.strip()) if a.users else None,
        incremental=a.incremental, backend=a.backend, device=a.device, chunk_size=a.chunk_size,
        max_batch_tokens=a.max_batch_tokens, commit_users=a.commit_users, resume=a.resume,
        exclude_seen=a.exclude_seen, blocklist=a.blocklist,
        available_attribute=a.available_attribute)
    run = scoring.score_run(spark, req, model, index)
    print(f"scored {run.users_scored:,} users in {run.seconds:.1f}s "
          f"({run.users_scored / max(run.seconds, 1e-9):.1f} users/s) with {run.model_version}"
          f"{' (no reasoning)' if a.no_reasoning else ''}; {run.fallbacks:,} popularity "
          f"fallbacks; {run.errors:,} scored with an error; {run.carried_over:,} carried over; "
          f"recommendations: {run.recommendation_rows:,} rows, rationales: {run.rationale_rows:,} rows; run "
          f"{run.run_id} ({a.run_date}, {a.variant}"
          f"{f', part {run.part}: resumed' if run.part else ''}), {run.commits} commits",
          flush=True)
    if not a.publish:
        print(f"not published yet: jobs/publish.py --run-date {a.run_date} --variant {a.variant} "
              f"--as-of {a.as_of} --top-k {a.top_k}", flush=True)
        return 0
    return publishing.publish_if_sound(spark, a.warehouse, a.run_date, a.variant, run.run_id,
                                       a.as_of, a.top_k, run.model_version,
                                       job="jobs/score.py --publish",
                                       max_error_rate=a.max_error_rate)


if __name__ == "__main__":
    cli.run(main)
