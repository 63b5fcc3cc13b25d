"""The quality benchmark: every method trained and evaluated in one run on the exact protocol
(ML-100k samples numbered as the reference preprocessing does, test split, full catalogue,
history window masked): Popularity, last-item transitions, SASRec, R²ec without reasoning
(trained as long as the R²ec path: warm start + RecPO minutes), R²ec after its warm start and
after RecPO (greedy reasoning), and test-time scaling (mean state of N sampled reasonings);
same split, fixed seeds, wall time per row, and for each method a paired bootstrap 95% interval
of its NDCG@10 difference to R²ec (RecPO). Rationale quality is measured for the R²ec rows.

    .venv/bin/python bench/quality.py --warehouse warehouse --out artifacts/quality

Needs the `items` and `training_samples` tables (make run, or the ingest and build_histories
jobs). Writes OUT/quality.md, OUT/quality.json (rows, intervals, valid curves, environment),
OUT/valid_curves.png (valid NDCG@10 against training minutes for every trained method) and
the test lists to the Delta table OUT/rankings (method, sample_id, user_id, target_item_id,
rank, item_id, score; top 20), so anyone can recompute the table with their own code.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from dataclasses import asdict, replace
from datetime import date
from pathlib import Path

import torch
from deltalake import DeltaTable, write_deltalake

from r2ec.baselines import LastItemTransition, Popularity, SASRec, SASRecConfig
from r2ec.benchmark import Table, rationales, valid_curve
from r2ec.beyond import beyond_markdown
from r2ec.config import DefaultModelConfig, SamplingConfig
from r2ec.data import Catalog
from r2ec.default_model import build
from r2ec.evaluation import evaluate
from r2ec.model import R2ec
from r2ec.reasoning import item_tags
from r2ec.recpo import RecPOConfig
from r2ec.recpo_trainer import train as train_recpo
from r2ec.training import evaluate_r2ec
from r2ec.warmstart import WarmStartConfig
from r2ec.warmstart_trainer import train as train_warmstart

log = logging.getLogger("bench.quality")
REFERENCE = "R²ec (RecPO)"


def _section(cfg: dict, name: str, cls):
    from r2ec_batch.cli import dataclass_from_args  # same reading of nested dataclasses as the jobs

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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--warehouse", default="warehouse")
    p.add_argument("--config", default="configs/default-model-2026-11-26.json")
    p.add_argument("--out", default="artifacts/quality")
    p.add_argument("--warmstart-minutes", type=float, default=15,
                   help="training minutes of the R²ec warm start (validations not counted)")
    p.add_argument("--recpo-minutes", type=float, default=5, help="training minutes of RecPO")
    p.add_argument("--tts-samples", type=lambda x: [int(v) for v in x.split(",")], default=[4, 8],
                   help="test-time scaling rows: reasonings per user (comma-separated)")
    p.add_argument("--tts-temperature", type=float, default=1.0)
    p.add_argument("--tts-top-k", type=int, default=50)
    p.add_argument("--sasrec-max-minutes", type=float, default=30,
                   help="time cap of SASRec (early stopping usually ends it first)")
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
    table = Table(test, catalog)

    t = time.time()
    table.record("Popularity", evaluate(Popularity(train, catalog), test, catalog, progress=False),
                 time.time() - t)
    t = time.time()
    table.record("Last-item transitions", evaluate(LastItemTransition(train, catalog), test,
                                                   catalog, progress=False), time.time() - t)
    t = time.time()
    sas = SASRec(catalog, SASRecConfig(max_minutes=a.sasrec_max_minutes))
    info = sas.fit(train, valid, progress=False)
    table.record("SASRec", evaluate(sas, test, catalog, progress=False), time.time() - t,
                 f"best epoch {info['best_epoch']} of {info['epochs']} ({info['stopped_by']}), "
                 f"valid N@10 {info['best_valid_ndcg@10']:.4f}", info["curve"])

    mcfg = _section(cfg, "model", DefaultModelConfig)
    build(items, train, out / "model-init", mcfg)
    ws_cfg = replace(_section(cfg, "warmstart", WarmStartConfig), max_minutes=a.warmstart_minutes)
    rl_cfg = replace(_section(cfg, "recpo", RecPOConfig), max_minutes=a.recpo_minutes)
    titles = dict(zip(catalog.ids, catalog.titles, strict=True))

    # The paper's "w/o reasoning" ablation, given the whole budget of the R²ec path (warm start
    # + RecPO minutes): the comparison is at equal training time.
    t = time.time()
    ablation = replace(ws_cfg, reasoning_share=0.0, eval_reasoning=False,
                       max_minutes=a.warmstart_minutes + a.recpo_minutes)
    ws0 = train_warmstart(R2ec.load(out / "model-init", device="cpu"), catalog, train, valid,
                          ablation, out / "no-reasoning", progress=False)
    table.record("R²ec w/o reasoning", evaluate_r2ec(R2ec.load(out / "no-reasoning" / "best"), test,
                                                     catalog, reasoning=False), time.time() - t,
                 f"multi-target warm start, {ws0['steps']} steps, {ws0['minutes']:.1f} train min",
                 valid_curve(out / "no-reasoning" / "metrics.jsonl"))

    # R²ec: the warm start that also teaches the reasoning format, then RecPO.
    t = time.time()
    ws = train_warmstart(R2ec.load(out / "model-init", device="cpu"), catalog, train, valid, ws_cfg,
                         out / "warmstart", progress=False)
    ws_wall = time.time() - t
    ws_curve = valid_curve(out / "warmstart" / "metrics.jsonl")
    t = time.time()
    res = evaluate_r2ec(R2ec.load(out / "warmstart" / "best", device="cpu"), test, catalog, True,
                        rl_cfg.eval_sampling)
    table.record("R²ec warm start, greedy reasoning", res, ws_wall + time.time() - t,
                 f"before RecPO; {ws['steps']} steps, {ws['minutes']:.1f} train min", ws_curve)
    table.rationales["R²ec warm start, greedy reasoning"] = rationales(res, test, catalog, titles)
    t = time.time()
    rl = train_recpo(R2ec.load(out / "warmstart" / "best", device="cpu"), catalog, train, valid,
                     rl_cfg, out / "recpo", progress=False)
    final = R2ec.load(out / "recpo" / "best", device="cpu")
    res = evaluate_r2ec(final, test, catalog, True, rl_cfg.eval_sampling)
    table.record(REFERENCE, res, ws_wall + time.time() - t,
                 f"+ RecPO {rl['steps']} steps, {rl['minutes']:.1f} train min, "
                 + (f"best at step {rl['best_step']}" if rl["best_step"] > 0 else
                    "no step beat its start on valid (start kept)")
                 + f"; reasoning {res.metrics.get('reasoning_tokens_mean', 0):.1f} tokens",
                 ws_curve + valid_curve(out / "recpo" / "metrics.jsonl", ws["minutes"]))
    table.rationales[REFERENCE] = rationales(res, test, catalog, titles)

    # Test-time scaling: the mean state of N sampled reasonings (N = 1 is the greedy row).
    for n in a.tts_samples:
        t = time.time()
        sampling = SamplingConfig(temperature=a.tts_temperature, top_k=a.tts_top_k,
                                  max_new_tokens=rl_cfg.max_new_tokens, seed=0)
        res = evaluate_r2ec(final, test, catalog, True, sampling, n_samples=n)
        table.record(f"R²ec (RecPO), N = {n} sampled", res, time.time() - t,
                     f"mean h_T of {n} reasonings at T = {a.tts_temperature:g}, "
                     f"top-k {a.tts_top_k}; scoring time only")

    write_deltalake(str(out / "rankings"), table.rankings(), mode="overwrite",
                    partition_by=["method"], schema_mode="overwrite")
    table.intervals(REFERENCE)
    counts = train["target_item_id"].value_counts().to_dict()
    tags = {i: item_tags(x) for i, x in zip(catalog.ids, catalog.attributes, strict=True)}
    beyond_rows, beyond_md = beyond_markdown(
        table.lists, [list(h) for h in test["history_item_ids"]], counts, catalog.ids, tags)
    table.plot(out / "valid_curves.png")
    env = {"date": date.today().isoformat(), "machine": platform.processor() or platform.machine(),
           "cpus": torch.get_num_threads(), "torch": torch.__version__, "test_samples": len(test),
           "catalogue": len(catalog), "config": a.config, "args": vars(a)}
    (out / "quality.json").write_text(json.dumps(
        {"env": env, "rows": table.rows, "beyond_accuracy": beyond_rows, "curves": table.curves,
         "rationales": table.rationales},
        indent=2, default=float))
    md = table.markdown(REFERENCE) + "\nBeyond accuracy (r2ec.beyond):\n\n" + beyond_md
    for method, r in table.rationales.items():
        md += f"\nRationales of {method}: " + ", ".join(
            f"{k} {v:.3f}" for k, v in r["metrics"].items()) + "\n"
    (out / "quality.md").write_text(md)
    print(md)
    print(f"{len(test)} test samples; rankings in {out / 'rankings'}; curves in "
          f"{out / 'valid_curves.png'}; {json.dumps(env)}")


if __name__ == "__main__":
    main()
