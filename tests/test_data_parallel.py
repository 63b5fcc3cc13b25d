"""Data-parallel training (r2ec/distributed.py) for real: two CPU processes with gloo, started
by torchrun as `accelerate launch` starts one per GPU. Each trains on its own share of every
step's batch; the averaged gradients must keep the two copies of the model identical."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from r2ec.model import R2ec
from r2ec.training import EpochOrder

REPO = Path(__file__).resolve().parents[1]


def test_the_order_splits_each_step_between_processes_and_resumes():
    one = EpochOrder(20, 6, seed=3)
    shards = [EpochOrder(20, 3, seed=3, rank=r, world=2) for r in range(2)]
    for _ in range(3):  # 20 // 6 = 3 full global batches per epoch
        whole = one.next_batch().tolist()
        parts = [s.next_batch().tolist() for s in shards]
        assert parts[0] + parts[1] == whole and not set(parts[0]) & set(parts[1])
    assert shards[0].steps_per_epoch == 3
    assert shards[0].next_batch().tolist() != whole  # a new epoch, never an empty share
    assert shards[0].epoch == 1 and shards[0].cursor == 6
    again = EpochOrder(20, 3, seed=3, rank=1, world=2)
    again.load_state_dict(shards[1].state_dict())
    assert again.next_batch().tolist() == shards[1].next_batch().tolist()


@pytest.mark.slow
def test_two_processes_train_one_model(tiny_model_dir, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2",
         str(REPO / "tests" / "data_parallel_child.py"), str(tiny_model_dir), str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-6000:])
    p0, p1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert r0["world"] == r1["world"] == 2
    # different data: in every step of both stages, the two processes drew disjoint shares of
    # the same size (a trainer that ignored its rank would draw the same batches twice)...
    for stage, steps in (("ws", 4), ("rl", 2)):
        a, b = r0["drawn"][stage], r1["drawn"][stage]
        assert len(a) == len(b) >= steps, stage
        for x, y in zip(a, b, strict=True):
            assert len(x) == len(y) > 0 and not set(x) & set(y), (stage, x, y)
    for name, p in p0.items():  # ...one model: identical to the last bit
        assert torch.equal(p, p1[name]), name
    # the warm start moved the full weights; RecPO moved its LoRA adapters (B starts at 0)
    start = dict(R2ec.load(tiny_model_dir, device="cpu").model.named_parameters())
    now = {n.replace("base_model.model.", "").replace(".base_layer", ""): p
           for n, p in p0.items()}
    assert not torch.equal(now["model.embed_tokens.weight"], start["model.embed_tokens.weight"])
    assert any(p.abs().sum() > 0 for n, p in now.items() if "lora_B" in n)
    assert r0["summaries"][0]["steps"] == 4 and r0["summaries"][1]["steps"] == 2
    # only the main process writes: one log line per step and validation, one best checkpoint
    for stage, steps in (("ws", 4), ("rl", 2)):
        lines = [json.loads(x) for x in (tmp_path / stage / "metrics.jsonl").read_text().splitlines()]
        assert [x["step"] for x in lines if "split" not in x] == list(range(1, steps + 1))
        assert (tmp_path / stage / "best" / "manifest.json").is_file()
