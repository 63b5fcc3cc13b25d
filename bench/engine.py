"""Engine throughput on CPU (or GPU): item encoding (items/s) and the scoring path
reason + h_T + top-k (users/s), with the default model, in one process.

    .venv/bin/python bench/engine.py --model models/default --warehouse warehouse
    .venv/bin/python bench/engine.py --model models/default --users 943 --max-new-tokens 32 --threads 2

Reads `items` and `user_histories` with deltalake (no Spark). Prints one JSON line per
measurement and a summary table; nothing here is a test, and the README quotes its output.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import pandas as pd
import torch
from deltalake import DeltaTable

from r2ec.config import SamplingConfig
from r2ec.data import Catalog, histories, times
from r2ec.index import ItemIndex
from r2ec.model import R2ec
from r2ec.recommend import Recommender


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="models/default")
    p.add_argument("--warehouse", default="warehouse")
    p.add_argument("--users", type=int, default=943, help="users to score (from user_histories)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="reasoning budget")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=2, help="timed repetitions (best is reported)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    items = DeltaTable(f"{a.warehouse}/items").to_pandas()
    hist = DeltaTable(f"{a.warehouse}/user_histories").to_pandas()
    hist = hist[hist["as_of_date"] == hist["as_of_date"].max()].sort_values("user_id").head(a.users)
    catalog = Catalog.from_frame(items)
    r2ec = R2ec.load(a.model, device=a.device, batch_size=a.batch_size)
    env = {"machine": platform.machine(), "cpus": torch.get_num_threads(), "device": a.device,
           "torch": torch.__version__, "model_version": r2ec.model_version,
           "parameters": sum(p.numel() for p in r2ec.model.parameters())}
    print(json.dumps({"env": env}))

    results = {}
    prompts = r2ec.item_prompts(catalog.ids, catalog.titles, catalog.attributes)
    best = float("inf")
    for _ in range(a.repeats):
        t = time.perf_counter()
        vectors = r2ec.encode_items(prompts)
        best = min(best, time.perf_counter() - t)
    results["item_encoding_items_per_s"] = len(prompts) / best
    index = ItemIndex(catalog.ids, vectors, r2ec.model_version, tau=r2ec.tau)
    rec = Recommender(r2ec, index)
    refs = times(pd.to_datetime(hist["as_of_date"]) + pd.Timedelta(days=1))  # end of the as-of day
    h = histories(hist)
    for mode, reasoning in (("reasoning", True), ("no_reasoning", False)):
        best = float("inf")
        for _ in range(a.repeats):
            t = time.perf_counter()
            out = rec.recommend(h, refs, top_k=10, reasoning=reasoning,
                                sampling=SamplingConfig(max_new_tokens=a.max_new_tokens))
            best = min(best, time.perf_counter() - t)
        results[f"score_{mode}_users_per_s"] = len(h) / best
        if reasoning:
            results["mean_reasoning_tokens"] = float(np.mean([o.rationale_tokens for o in out]))
    for k, v in results.items():
        print(json.dumps({"metric": k, "value": round(v, 2)}))
    print(f"\n{'measurement':<38}{'value':>10}")
    for k, v in results.items():
        print(f"{k:<38}{v:>10.1f}")


if __name__ == "__main__":
    main()
