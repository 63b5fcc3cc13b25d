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

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from deltalake import DeltaTable, write_deltalake

from r2ec.baselines import LastItemTransition, Popularity, SASRec, SASRecConfig
from r2ec.beyond import beyond_markdown
from r2ec.config import DefaultModelConfig, SamplingConfig
from r2ec.data import Catalog
from r2ec.default_model import build
from r2ec.evaluation import EvalResult, evaluate
from r2ec.metrics import ndcg_from_lists, paired_bootstrap
from r2ec.model import R2ec
from r2ec.reasoning import item_tags, rationale_metrics, render
from r2ec.recpo import RecPOConfig
from r2ec.recpo_trainer import train as train_recpo
from r2ec.training import evaluate_r2ec
from r2ec.warmstart import WarmStartConfig
from r2ec.warmstart import train as train_warmstart

log = logging.getLogger("bench.quality")
COLS = ["hit@5", "hit@10", "hit@20", "ndcg@5", "ndcg@10", "ndcg@20"]
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


def _valid_curve(metrics_jsonl: Path, offset_min: float = 0.0) -> list[dict]:
    """(training minutes, valid NDCG@10) of a trainer's validations, from its metrics log."""
    out = []
    for line in metrics_jsonl.read_text().splitlines():
        r = json.loads(line)
        if r.get("split") == "valid":
            out.append({"minutes": round(offset_min + r["train_s"] / 60, 3), "step": r.get("step"),
                        "valid_ndcg@10": r["ndcg@10"]})
    return out


def _rationales(res: EvalResult, test: pd.DataFrame, catalog: Catalog, titles: dict) -> dict:
    """Rationale quality of an evaluation (the shared metrics) and three examples."""
    tags = [item_tags(a) for a in catalog.attributes]
    rendered = [render(g.text, titles, list(h)[-20:])
                for g, h in zip(res.generations, test["history_titles"], strict=True)]
    metrics = rationale_metrics(
        rendered, [list(h) for h in test["history_titles"]],
        [[tags[r] for r in rows] for rows in res.top_rows], set(catalog.titles),
        {t for ts in tags for t in ts})
    examples = []
    for i in (0, len(test) // 2, len(test) - 1):
        examples.append({"sample_id": int(test["sample_id"].iat[i]), "user_id": test["user_id"].iat[i],
                         "history": list(test["history_titles"].iat[i])[-5:],
                         "rationale": rendered[i],
                         "top5": [catalog.titles[r] for r in res.top_rows[i][:5]],
                         "target": titles.get(test["target_item_id"].iat[i])})
    return {"metrics": metrics, "examples": examples}


class Table:
    """The rows, ranked lists and valid curves of one benchmark run."""

    def __init__(self, test: pd.DataFrame, catalog: Catalog):
        self.test, self.catalog = test, catalog
        self.rows: list[dict] = []
        self.lists: dict[str, np.ndarray] = {}  # method -> (S, 20) item ids
        self.curves: dict[str, list[dict]] = {}
        self.rationales: dict[str, dict] = {}  # method -> quality metrics and examples

    def record(self, method: str, res: EvalResult, seconds: float, note: str = "",
               curve: list[dict] | None = None) -> None:
        self.rows.append({"method": method, **{c: res.metrics[c] for c in COLS},
                          "wall_s": round(seconds, 1), "note": note})
        ids = np.asarray(self.catalog.ids, dtype=object)
        self.lists[method] = ids[res.top_rows]
        if curve:
            self.curves[method] = curve
        log.info("%s: %s (%.0fs)", method, {c: round(res.metrics[c], 4) for c in COLS}, seconds)

    def rankings(self) -> pa.Table:
        parts = []
        for method, lists in self.lists.items():
            n, k = lists.shape
            parts.append(pa.table({
                "method": [method] * (n * k),
                "sample_id": np.repeat(self.test["sample_id"].to_numpy(dtype=np.int64), k),
                "user_id": np.repeat(self.test["user_id"].to_numpy(dtype=object), k),
                "target_item_id": np.repeat(self.test["target_item_id"].to_numpy(dtype=object), k),
                "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), n),
                "item_id": lists.reshape(-1),
            }))
        return pa.concat_tables(parts)

    def intervals(self, reference: str) -> None:
        """Each row's NDCG@10 minus the reference's, with a paired bootstrap 95% interval,
        per-sample NDCG@10 recomputed from the ranked lists."""
        targets = list(self.test["target_item_id"])
        per = {m: ndcg_from_lists(lists, targets, 10) for m, lists in self.lists.items()}
        for r in self.rows:
            if r["method"] == reference or reference not in per:
                r["delta_ndcg@10"] = None
                continue
            d, lo, hi = paired_bootstrap(per[r["method"]], per[reference])
            r["delta_ndcg@10"] = {"diff": d, "low": lo, "high": hi}

    def markdown(self, reference: str) -> str:
        md = ["| method | " + " | ".join(COLS) + f" | N@10 − {reference} [95% CI] | wall s | note |",
              "|---|" + "---|" * len(COLS) + "---|---|---|"]
        for r in self.rows:
            d = r.get("delta_ndcg@10")
            delta = "—" if not d else f"{d['diff']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"
            md.append(f"| {r['method']} | " + " | ".join(f"{r[c]:.4f}" for c in COLS)
                      + f" | {delta} | {r['wall_s']:.0f} | {r['note']} |")
        return "\n".join(md) + "\n"

    def plot(self, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
        for method, curve in self.curves.items():
            ax.plot([c["minutes"] for c in curve], [c["valid_ndcg@10"] for c in curve],
                    marker="o", markersize=3, label=method)
        for r in self.rows:
            if r["method"] in ("Last-item transitions", "Popularity"):
                ax.axhline(r["ndcg@10"], linestyle=":", color="grey")
                ax.annotate(f"{r['method']} (test)", (0, r["ndcg@10"]), fontsize=7, color="grey")
        ax.set_xlabel("training minutes (2 CPU cores)")
        ax.set_ylabel("valid NDCG@10")
        ax.set_title("Validation NDCG@10 during training")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)


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
                 _valid_curve(out / "no-reasoning" / "metrics.jsonl"))

    # R²ec: the warm start that also teaches the reasoning format, then RecPO.
    t = time.time()
    ws = train_warmstart(R2ec.load(out / "model-init", device="cpu"), catalog, train, valid, ws_cfg,
                         out / "warmstart", progress=False)
    ws_wall = time.time() - t
    ws_curve = _valid_curve(out / "warmstart" / "metrics.jsonl")
    t = time.time()
    res = evaluate_r2ec(R2ec.load(out / "warmstart" / "best", device="cpu"), test, catalog, True,
                        rl_cfg.eval_sampling)
    table.record("R²ec warm start, greedy reasoning", res, ws_wall + time.time() - t,
                 f"before RecPO; {ws['steps']} steps, {ws['minutes']:.1f} train min", ws_curve)
    table.rationales["R²ec warm start, greedy reasoning"] = _rationales(res, test, catalog, titles)
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
                 ws_curve + _valid_curve(out / "recpo" / "metrics.jsonl", ws["minutes"]))
    table.rationales[REFERENCE] = _rationales(res, test, catalog, titles)

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
