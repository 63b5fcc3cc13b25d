"""One process of the data-parallel test (tests/test_data_parallel.py), started by torchrun:

    torchrun --standalone --nproc_per_node 2 tests/data_parallel_child.py MODEL OUT

Trains the tiny model a few warm-start and RecPO steps on the synthetic catalogue, then saves
this process's parameters to OUT/rank<k>.pt and, to OUT/rank<k>.json, the batches the trainers
themselves drew (every `EpochOrder.next_batch` call during training is recorded)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from r2ec import distributed
from r2ec.data import Catalog
from r2ec.model import R2ec
from r2ec.recpo import RecPOConfig
from r2ec.recpo_trainer import train as train_recpo
from r2ec.training import EpochOrder, LoraSettings
from r2ec.warmstart import WarmStartConfig
from r2ec.warmstart_trainer import train as train_warmstart
from tests.conftest import synthetic_catalog

model_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
torch.set_num_threads(1)
rank, world = distributed.world()
items, samples = synthetic_catalog()
catalog = Catalog.from_frame(items)
valid = samples.head(8)
r2ec = R2ec.load(model_dir, device="cpu")
drawn: dict[str, list[list[int]]] = {"ws": [], "rl": []}
stage = "ws"
next_batch = EpochOrder.next_batch


def recorded(self):
    batch = next_batch(self)
    drawn[stage].append(batch.tolist())
    return batch


EpochOrder.next_batch = recorded  # the trainers' own orders, whatever they build them from
ws = WarmStartConfig(epochs=4, windows_per_step=3, window=5, stride=3, eval_every=2,
                     eval_samples=0, save_every=1, warmup_steps=1, patience=0, lr=3e-3,
                     max_steps=4)
summary_ws = train_warmstart(r2ec, catalog, samples, valid, ws, out / "ws", progress=False)
rl = RecPOConfig(group_size=2, users_per_step=4, max_new_tokens=3, top_k=20, epochs=2,
                 eval_every=1000, eval_samples=0, save_every=1, lr=5e-3, warmup_steps=1,
                 refresh_every=2, patience=0, max_steps=2, lora=LoraSettings(enabled=True, r=4, alpha=8))
stage = "rl"
summary_rl = train_recpo(r2ec, catalog, samples.head(16), valid, rl, out / "rl", progress=False)
torch.save({n: p.detach().clone() for n, p in r2ec.model.named_parameters()},
           out / f"rank{rank}.pt")
(out / f"rank{rank}.json").write_text(json.dumps(
    {"drawn": drawn, "summaries": [summary_ws, summary_rl], "world": world}, default=float))
