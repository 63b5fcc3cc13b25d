"""Train the dual-head model: stage `warmstart` (multi-target contrastive, optionally teaching a
reasoning format) or stage `recpo` (RecPO reinforcement learning of the reasoning, the paper's
method), then register the result.

    bin/r2ec-submit jobs/train.py --stage warmstart --model models/default-init --out models/ws
    bin/r2ec-submit jobs/train.py --stage recpo --model champion --out models/recpo --max-minutes 30
    bin/r2ec-submit jobs/train.py --stage recpo --model champion --out models/recpo --resume
    .venv/bin/accelerate launch --multi_gpu --num_processes 4 jobs/train.py --stage recpo ...

Several GPUs: one process per GPU (`accelerate launch` or `torchrun`), each with its own local
Spark session reading the same training_samples version; every step's batch is split between
them and the gradients averaged (`r2ec/distributed.py`), so per-step batch flags are per
process. The main process validates, saves, evaluates and registers; the others only train.

Every knob of both stages is a flag (see --help). The best checkpoint by valid NDCG@10 is kept in
OUT/best, its config in OUT/train_config.json, the metrics in OUT/metrics.jsonl; the model is
evaluated on the full valid split and registered (status from --register). The run itself
(data snapshot, stage, final validation, registration) is `r2ec_batch/train_run.py`.
"""

from __future__ import annotations

from r2ec.recpo import RecPOConfig
from r2ec.warmstart import WarmStartConfig
from r2ec_batch import cli, storage
from r2ec_batch.session import build_spark
from r2ec_batch.train_run import TrainRequest, train_run


def parse_args(argv):
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
    a = parse_args(argv)
    cli.setup_logging(a.verbose)
    import torch

    from r2ec import distributed

    rank, world = distributed.world()
    if a.threads:
        torch.set_num_threads(a.threads)
    config = (cli.dataclass_from_args(a, WarmStartConfig, "ws_") if a.stage == "warmstart"
              else cli.dataclass_from_args(a, RecPOConfig, "rl_"))
    req = TrainRequest(warehouse=a.warehouse, stage=a.stage, config=config, out=a.out,
                       model=a.model, resume=a.resume, register=a.register,
                       train_limit=a.train_limit, valid_limit=a.valid_limit,
                       device=distributed.local_device(a.device))
    done = train_run(build_spark("r2ec-train"), req, rank, world)
    if done is not None:
        m = done.valid_metrics
        print(f"{a.stage}: {done.model_version} valid NDCG@10 {m['ndcg@10']:.4f} HR@10 "
              f"{m['hit@10']:.4f} ({done.valid_samples:,} samples) -> {done.best_location}",
              flush=True)
    return 0


if __name__ == "__main__":
    cli.run(main)
