"""RecPO's valid curve from a warm-start checkpoint, on any device: does more RecPO help?

    .venv/bin/python bench/recpo_curve.py --export-from warehouse --data artifacts/gpu_exp/data.pkl
    python bench/recpo_curve.py --model models/work/warmstart/best --data artifacts/gpu_exp/data.pkl \
        --device cuda --minutes 7 --eval-every 300 --out $OUT/recpo_curve

Runs `r2ec.recpo_trainer.train` with the RecPO section of the model config (overrides by flag),
validating on the whole valid split (greedy reasoning) at the start and every `--eval-every`
steps, with no early stopping, and prints (step, training minutes, valid NDCG@10). The data is
a pickle of the train/valid samples and the items, exported here from a warehouse with
`--export-from`, so the run needs only torch, transformers and pandas (a bare GPU machine).
"""

from __future__ import annotations

import argparse
import gzip
import json
import pickle
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def export(warehouse: str, data: Path) -> None:
    from deltalake import DeltaTable

    cols = ["sample_id", "user_id", "history_item_ids", "history_titles", "history_ratings",
            "history_ts", "target_item_id", "target_ts", "split"]
    samples = DeltaTable(f"{warehouse}/training_samples").to_pandas(
        columns=cols, filters=[("split", "in", ["train", "valid"])]).sort_values("sample_id")
    # naive UTC times: the pickle then needs no time-zone package where it is read
    samples["target_ts"] = samples["target_ts"].dt.tz_convert(None)
    items = DeltaTable(f"{warehouse}/items").to_pandas(columns=["item_id", "title", "attributes"])
    data.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(data, "wb") as f:
        pickle.dump({"samples": samples, "items": items}, f)
    print(f"{len(samples):,} samples, {len(items):,} items -> {data}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default="artifacts/gpu_exp/data.pkl")
    p.add_argument("--export-from", help="write --data from this warehouse and stop")
    p.add_argument("--model", default="models/work/warmstart/best")
    p.add_argument("--config", default=str(ROOT / "configs/default-model-2026-11-26.json"))
    p.add_argument("--device", default="cuda")
    p.add_argument("--minutes", type=float, default=7.0, help="training minutes (validations "
                   "not counted); the cosine schedule anneals over them")
    p.add_argument("--eval-every", type=int, default=300)
    p.add_argument("--lr", type=float, default=0.0, help="override the config's lr (0 = keep)")
    p.add_argument("--group-size", type=int, default=0, help="override G (0 = keep)")
    p.add_argument("--out", default="artifacts/recpo_curve")
    a = p.parse_args()
    if a.export_from:
        export(a.export_from, Path(a.data))
        return

    from r2ec.data import Catalog
    from r2ec.model import R2ec
    from r2ec.recpo import RecPOConfig
    from r2ec.recpo_trainer import train
    from r2ec.training import LoraSettings

    with gzip.open(a.data, "rb") as f:
        data = pickle.load(f)
    samples, catalog = data["samples"], Catalog.from_frame(data["items"])
    train_s = samples[samples["split"] == "train"].reset_index(drop=True)
    valid = samples[samples["split"] == "valid"].reset_index(drop=True)
    section = json.loads(Path(a.config).read_text())["recpo"]
    cfg = RecPOConfig(**{**section, "lora": LoraSettings(**section["lora"])})
    cfg = replace(cfg, max_minutes=a.minutes, eval_every=a.eval_every, patience=0, epochs=50.0,
                  save_every=10**9, lr=a.lr or cfg.lr, group_size=a.group_size or cfg.group_size)
    r2ec = R2ec.load(a.model, device=a.device)
    t0 = time.time()
    summary = train(r2ec, catalog, train_s, valid, cfg, Path(a.out), progress=False)
    curve = [json.loads(x) for x in (Path(a.out) / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in curve if "split" not in x]
    print(f"\n{r2ec.model_version} on {a.device}: {summary['steps']} steps in "
          f"{summary['minutes']:.1f} training minutes ({time.time() - t0:.0f} s wall), "
          f"lr {cfg.lr:g}, G {cfg.group_size}, {cfg.users_per_step} users/step")
    print("| step | training min | valid NDCG@10 | valid Hit@10 |\n|---:|---:|---:|---:|")
    for x in curve:
        if x.get("split") == "valid":
            print(f"| {x['step']} | {x['train_s'] / 60:.2f} | {x['ndcg@10']:.4f} | {x['hit@10']:.4f} |")
    if steps:
        last = steps[-100:]
        mean = {k: sum(s.get(k, 0) for s in last) / len(last)
                for k in ("reward_mean", "reward_group_std", "flat_groups", "reasoning_len")}
        print(f"last 100 steps: reward mean {mean['reward_mean']:.4f}, group std "
              f"{mean['reward_group_std']:.4f}, flat groups {mean['flat_groups']:.2f}, reasoning "
              f"{mean['reasoning_len']:.1f} tokens")

if __name__ == "__main__":
    main()
