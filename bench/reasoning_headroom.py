"""How much can the reasoning move the ranking at all? An upper bound on what RecPO can gain.

    .venv/bin/python bench/reasoning_headroom.py --model models/work/warmstart/best \
        --warehouse warehouse --split valid --samples 8 --temperatures 1.0,1.5 \
        --out artifacts/headroom.json

For every sample of the split it scores the catalogue from h_T with no reasoning, with the
greedy reasoning, and with each of G reasonings sampled as RecPO's rollouts are (temperature,
top-k 50), and reports NDCG@10 of each, the mean over sampled reasonings, the mean state of the
G reasonings (test-time scaling), and the oracle: per sample, the best of its G reasonings,
chosen knowing the target. RecPO raises the probability of the better rollouts of a group, so
its policy can at most approach that oracle (the best of G of its own samples); when the oracle
is close to greedy, no amount of RecPO training makes reasoning matter. The placebo oracle is
the control: the best of G random moves of the greedy state, each as large as the move of one
sampled reasoning. What the oracle gains beyond it is what the reasonings' directions carry;
the rest is luck of the draw. It also counts groups whose G reasonings leave the target at the
same rank (no signal for GRPO at all).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from deltalake import DeltaTable

from r2ec.config import SamplingConfig
from r2ec.data import Catalog, histories, times
from r2ec.metrics import ndcg_per_sample, target_ranks
from r2ec.model import R2ec
from r2ec.progress import progress_bar

COLUMNS = ["sample_id", "user_id", "history_item_ids", "history_titles", "history_ratings",
           "history_ts", "target_item_id", "target_ts", "split"]


def ndcg10(ranks: np.ndarray) -> np.ndarray:
    return ndcg_per_sample(ranks, 10)


def _unit(h: np.ndarray) -> np.ndarray:
    return h / np.maximum(np.linalg.norm(h, axis=1, keepdims=True), 1e-12)


def headroom(r2ec: R2ec, samples, catalog: Catalog, group: int, temperature: float,
             max_new_tokens: int, batch_size: int = 128, seed: int = 1) -> dict:
    """Per-sample target ranks for none / greedy / G sampled reasonings / their mean state."""
    h_v = r2ec.encode_items(r2ec.item_prompts(catalog.ids, catalog.titles, catalog.attributes))
    greedy_cfg = SamplingConfig(temperature=0.0, max_new_tokens=max_new_tokens)
    sample_cfg = SamplingConfig(temperature=temperature, top_k=50, max_new_tokens=max_new_tokens,
                                seed=seed)
    rng = np.random.default_rng(seed)
    ranks: dict[str, list[np.ndarray]] = {"none": [], "greedy": [], "sampled": [], "mean_state": [],
                                          "placebo": []}
    for start in progress_bar(iterable=range(0, len(samples), batch_size),
                              desc=f"T={temperature:g}"):
        batch = samples.iloc[start: start + batch_size]
        prompts = r2ec.user_prompts(histories(batch), times(batch["target_ts"]))
        hist = [catalog.rows(ids) for ids in batch["history_item_ids"]]
        targets = [catalog.row[t] for t in batch["target_item_id"]]

        def rank(h: np.ndarray, targets=targets, hist=hist) -> np.ndarray:
            scores = np.asarray(R2ec.score(h, h_v, r2ec.tau), dtype=np.float64)
            return target_ranks(scores, targets, hist)

        ranks["none"].append(rank(r2ec.user_state(prompts, None)))
        greedy = r2ec.reason(prompts, 1, greedy_cfg)
        g_unit = _unit(r2ec.user_state(prompts, [g[0] for g in greedy]))
        ranks["greedy"].append(rank(g_unit))
        gens = r2ec.reason(prompts, group, sample_cfg)
        per, unit, placebo = [], [], []
        for k in range(group):
            h = _unit(r2ec.user_state(prompts, [g[k] for g in gens]))
            per.append(rank(h))
            unit.append(h)
            # The control: greedy's state moved as far as this reasoning moved it, in a random
            # direction. Its oracle is what picking the best of G draws gains by chance alone.
            step = np.linalg.norm(h - g_unit, axis=1, keepdims=True)
            noise = _unit(rng.standard_normal(h.shape))
            placebo.append(rank(g_unit + step * noise))
        ranks["sampled"].append(np.stack(per, axis=1))
        ranks["placebo"].append(np.stack(placebo, axis=1))
        ranks["mean_state"].append(rank(np.mean(unit, axis=0)))
    return {k: np.concatenate(v) for k, v in ranks.items()}


def summarise(ranks: dict, group: int, temperature: float) -> dict:
    per = ndcg10(ranks["sampled"])
    greedy = ndcg10(ranks["greedy"])
    oracle = per.max(axis=1)
    n = len(greedy)

    def se(x: np.ndarray) -> float:
        return float(x.std(ddof=1) / np.sqrt(n))

    spread = ranks["sampled"].max(axis=1) - ranks["sampled"].min(axis=1)
    return {
        "samples": n, "group": group, "temperature": temperature,
        "ndcg10_none": float(ndcg10(ranks["none"]).mean()),
        "ndcg10_greedy": float(greedy.mean()),
        "ndcg10_sampled_mean": float(per.mean()),
        "ndcg10_mean_state": float(ndcg10(ranks["mean_state"]).mean()),
        "ndcg10_oracle_best_of_group": float(oracle.mean()),
        "oracle_minus_greedy": float((oracle - greedy).mean()),
        "ndcg10_placebo_oracle": float(ndcg10(ranks["placebo"]).max(axis=1).mean()),
        "oracle_minus_greedy_se": se(oracle - greedy),
        "share_groups_target_rank_equal": float((spread == 0).mean()),
        "median_rank_spread": float(np.median(spread)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="models/work/warmstart/best")
    p.add_argument("--warehouse", default="warehouse")
    p.add_argument("--split", default="valid", choices=["train", "valid", "test"])
    p.add_argument("--users", type=int, default=0, help="first N samples of the split (0 = all)")
    p.add_argument("--samples", type=int, default=8, help="G: sampled reasonings per sample")
    p.add_argument("--temperatures", default="1.0", help="comma-separated rollout temperatures")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's choice)")
    p.add_argument("--out", default="artifacts/headroom.json")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    samples = (DeltaTable(f"{a.warehouse}/training_samples")
               .to_pandas(columns=COLUMNS, filters=[("split", "=", a.split)])
               .sort_values("sample_id").reset_index(drop=True))
    if a.users:
        samples = samples.iloc[: a.users]
    catalog = Catalog.from_frame(DeltaTable(f"{a.warehouse}/items")
                                 .to_pandas(columns=["item_id", "title", "attributes"]))
    r2ec = R2ec.load(a.model, device="cpu")
    rows = []
    for temperature in (float(t) for t in a.temperatures.split(",")):
        t0 = time.time()
        ranks = headroom(r2ec, samples, catalog, a.samples, temperature, a.max_new_tokens)
        rows.append({**summarise(ranks, a.samples, temperature), "wall_s": round(time.time() - t0),
                     "model_version": r2ec.model_version, "split": a.split})
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(rows, indent=1))
    print(f"\n{r2ec.model_version}, {a.split} split, {len(samples):,} samples, G = {a.samples}")
    print("| T | none | greedy | sampled (mean) | mean state | oracle best of G | oracle - greedy "
          "(± s.e.) | placebo oracle | groups with equal target rank | median rank spread |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['temperature']:g} | {r['ndcg10_none']:.4f} | {r['ndcg10_greedy']:.4f} | "
              f"{r['ndcg10_sampled_mean']:.4f} | {r['ndcg10_mean_state']:.4f} | "
              f"{r['ndcg10_oracle_best_of_group']:.4f} | {r['oracle_minus_greedy']:+.4f} "
              f"(± {r['oracle_minus_greedy_se']:.4f}) | {r['ndcg10_placebo_oracle']:.4f} | "
              f"{r['share_groups_target_rank_equal']:.2f} "
              f"| {r['median_rank_spread']:g} |")


if __name__ == "__main__":
    main()
