"""The quality benchmark: train and evaluate, on ML-100k with the paper's protocol (test split,
full catalogue ranking, history window masked), Popularity, last-item transitions, SASRec,
R²ec without reasoning (the warm-start stage) and R²ec after RecPO (greedy reasoning); same
split, same run, fixed seeds, wall time per row.

    .venv/bin/python bench/quality.py --warehouse warehouse --out artifacts/quality

Needs the `items` and `training_samples` tables (make run, or the ingest and build_histories
jobs). Writes OUT/quality.md and OUT/quality.json, and the test ranked lists (method,
sample_id, rank, item_id, score) to the Delta table OUT/rankings, so anyone can recompute the
metrics independently (e.g. with deltalake + pandas).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from dataclasses import asdict, replace
from pathlib import Path

import pyarrow as pa
import torch
from deltalake import DeltaTable, write_deltalake

from r2ec.baselines import LastItemTransition, Popularity, SASRec, SASRecConfig
from r2ec.config import DefaultModelConfig
from r2ec.data import Catalog
from r2ec.default_model import build
from r2ec.evaluation import EvalResult, evaluate
from r2ec.model import R2ec
from r2ec.recpo import RecPOConfig
from r2ec.recpo_trainer import train as train_recpo
from r2ec.training import evaluate_r2ec
from r2ec.warmstart import WarmStartConfig
from r2ec.warmstart import train as train_warmstart

log = logging.getLogger("bench.quality")
COLS = ["hit@5", "hit@10", "hit@20", "ndcg@5", "ndcg@10", "ndcg@20"]


def _section(cfg: dict, name: str, cls):
    from jobs.cli import dataclass_from_args  # same reading of nested dataclasses as the jobs

    base = asdict(cls())
    for k, v in cfg.get(name, {}).items():
        if isinstance(v, dict):
            base[k].update(v)
        else:
            base[k] = v
    ns = argparse.Namespace(**{k: v for k, v in _flatten(base).items()})
    return dataclass_from_args(ns, cls)


def _flatten(d: dict, pre: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{pre}{k}_"))
        else:
            out[f"{pre}{k}"] = v
    return out


def _rankings(method: str, res: EvalResult, catalog: Catalog) -> pa.Table:
    rows = res.top_rows
    n, k = rows.shape
    return pa.table({
        "method": [method] * (n * k),
        "sample_id": [s for s in res.sample_ids for _ in range(k)],
        "rank": [r + 1 for _ in range(n) for r in range(k)],
        "item_id": [catalog.ids[j] for j in rows.reshape(-1)],
        "score": res.top_scores.reshape(-1).astype("float32"),
    })


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--warehouse", default="warehouse")
    p.add_argument("--config", default="configs/default-model.json")
    p.add_argument("--out", default="artifacts/quality")
    p.add_argument("--warmstart-minutes", type=float, default=0, help="0 = the config's epochs")
    p.add_argument("--recpo-minutes", type=float, default=15)
    p.add_argument("--sasrec-epochs", type=int, default=200)
    p.add_argument("--test-limit", type=int, default=0, help="first N test samples (0 = all)")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = json.loads(Path(a.config).read_text())
    items = DeltaTable(f"{a.warehouse}/items").to_pandas()
    s = DeltaTable(f"{a.warehouse}/training_samples").to_pandas().sort_values("sample_id")
    train, valid, test = (s[s["split"] == x].reset_index(drop=True) for x in ("train", "valid", "test"))
    if a.test_limit:
        test = test.head(a.test_limit)
    catalog = Catalog.from_frame(items)
    rows, tables = [], []

    def record(method: str, res: EvalResult, seconds: float, note: str = "") -> None:
        rows.append({"method": method, **{c: res.metrics[c] for c in COLS},
                     "wall_s": round(seconds, 1), "note": note})
        tables.append(_rankings(method, res, catalog))
        log.info("%s: %s (%.0fs)", method, {c: round(res.metrics[c], 4) for c in COLS}, seconds)

    t = time.time()
    record("Popularity", evaluate(Popularity(train, catalog), test, catalog, progress=False), time.time() - t)
    t = time.time()
    record("Last-item transitions", evaluate(LastItemTransition(train, catalog), test, catalog,
                                             progress=False), time.time() - t)
    t = time.time()
    sas = SASRec(catalog, SASRecConfig(max_epochs=a.sasrec_epochs))
    info = sas.fit(train, valid, progress=False)
    record("SASRec", evaluate(sas, test, catalog, progress=False), time.time() - t,
           f"{info['epochs']} epochs, best valid N@10 {info['best_valid_ndcg@10']:.4f}")

    mcfg = _section(cfg, "model", DefaultModelConfig)
    build(items, train, out / "model-init", mcfg)
    ws_cfg = _section(cfg, "warmstart", WarmStartConfig)
    if a.warmstart_minutes:
        ws_cfg = replace(ws_cfg, max_minutes=a.warmstart_minutes)

    # The paper's "w/o reasoning" ablation: contrastive only, h_T straight after the prompt.
    t = time.time()
    ablation = replace(ws_cfg, recap_max_items=0, lm_loss_weight=0.0, eval_reasoning=False)
    ws0 = train_warmstart(R2ec.load(out / "model-init", device="cpu"), catalog, train, valid,
                          ablation, out / "no-reasoning", progress=False)
    record("R²ec w/o reasoning", evaluate_r2ec(R2ec.load(out / "no-reasoning" / "best"), test,
                                               catalog, reasoning=False), time.time() - t,
           f"contrastive only, {ws0['steps']} steps, {ws0['minutes']:.0f} min")

    # R²ec: warm start that also teaches a reasoning format, then RecPO.
    rl_cfg = replace(_section(cfg, "recpo", RecPOConfig), max_minutes=a.recpo_minutes)
    t = time.time()
    ws = train_warmstart(R2ec.load(out / "model-init", device="cpu"), catalog, train, valid, ws_cfg,
                         out / "warmstart", progress=False)
    ws_time = time.time() - t
    t = time.time()
    ws_model = R2ec.load(out / "warmstart" / "best", device="cpu")
    record("R²ec warm start, greedy reasoning", evaluate_r2ec(ws_model, test, catalog, True,
                                                             rl_cfg.eval_sampling),
           ws_time + time.time() - t, f"before RecPO; {ws['steps']} steps, {ws['minutes']:.0f} min")
    t = time.time()
    rl = train_recpo(R2ec.load(out / "warmstart" / "best", device="cpu"), catalog, train, valid,
                     rl_cfg, out / "recpo", progress=False)
    final = R2ec.load(out / "recpo" / "best", device="cpu")
    res = evaluate_r2ec(final, test, catalog, True, rl_cfg.eval_sampling)
    record("R²ec (RecPO)", res, ws_time + time.time() - t,
           f"+ RecPO {rl['steps']} steps, {rl['minutes']:.0f} min; mean reasoning "
           f"{res.metrics.get('reasoning_tokens_mean', 0):.1f} tokens")

    write_deltalake(str(out / "rankings"), pa.concat_tables(tables), mode="overwrite",
                    partition_by=["method"])
    env = {"machine": platform.processor() or platform.machine(), "torch_threads": a.threads,
           "torch": torch.__version__, "test_samples": len(test), "catalogue": len(catalog),
           "config": a.config}
    (out / "quality.json").write_text(json.dumps({"env": env, "rows": rows}, indent=2))
    md = ["| method | " + " | ".join(COLS) + " | wall s | note |",
          "|---|" + "---|" * len(COLS) + "---|---|"]
    for r in rows:
        md.append(f"| {r['method']} | " + " | ".join(f"{r[c]:.4f}" for c in COLS)
                  + f" | {r['wall_s']:.0f} | {r['note']} |")
    (out / "quality.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    print(f"\n{len(test)} test samples; rankings in {out / 'rankings'}; {json.dumps(env)}")


if __name__ == "__main__":
    main()
