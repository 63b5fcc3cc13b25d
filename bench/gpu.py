"""Scoring-path throughput of each generation backend on the same GPU, model and users:
users/s and generated tokens/s for transformers and vLLM (greedy reasoning + h_T + top-k).

    .venv/bin/python bench/gpu.py --model models/default --warehouse warehouse --users 943

Needs a CUDA device and the `gpu` extra (vllm). Ready to run; see the README for what has run.
"""

from __future__ import annotations

import argparse
import json
import time

import pandas as pd
import torch
from deltalake import DeltaTable

from r2ec.config import SamplingConfig
from r2ec.data import Catalog, histories, times
from r2ec.index import ItemIndex
from r2ec.model import R2ec
from r2ec.recommend import Recommender


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="models/default")
    p.add_argument("--warehouse", default="warehouse")
    p.add_argument("--users", type=int, default=943)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--backends", default="transformers,vllm")
    a = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench/gpu.py needs a CUDA device")
    items = DeltaTable(f"{a.warehouse}/items").to_pandas()
    hist = DeltaTable(f"{a.warehouse}/user_histories").to_pandas()
    hist = hist[hist["as_of_date"] == hist["as_of_date"].max()].head(a.users)
    refs = times(pd.to_datetime(hist["as_of_date"]) + pd.Timedelta(days=1))
    catalog = Catalog.from_frame(items)
    sampling = SamplingConfig(max_new_tokens=a.max_new_tokens)
    for backend in a.backends.split(","):
        r2ec = R2ec.load(a.model, device="cuda", backend=backend, batch_size=256)
        vectors = r2ec.encode_items(r2ec.item_prompts(catalog.ids, catalog.titles, catalog.attributes))
        rec = Recommender(r2ec, ItemIndex(catalog.ids, vectors, r2ec.model_version))
        rec.recommend(histories(hist.head(32)), refs[:32], sampling=sampling)  # warm-up
        torch.cuda.synchronize()
        t = time.perf_counter()
        out = rec.recommend(histories(hist), refs, sampling=sampling)
        torch.cuda.synchronize()
        sec = time.perf_counter() - t
        tokens = sum(o.rationale_tokens for o in out)
        print(json.dumps({"backend": backend, "device": torch.cuda.get_device_name(),
                          "users": len(out), "users_per_s": round(len(out) / sec, 1),
                          "generated_tokens_per_s": round(tokens / sec, 1),
                          "s_per_user": round(sec / len(out), 4)}))
        del rec, r2ec
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
