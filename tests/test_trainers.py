"""The two training stages on a tiny model: they learn, LoRA trains, and resume is exact."""

from __future__ import annotations

import json

import pytest
import torch
from torch.nn import functional as F

from r2ec.batching import last_token_states, pad_batch
from r2ec.config import SamplingConfig
from r2ec.data import Catalog, histories, times
from r2ec.model import R2ec
from r2ec.recpo import RecPOConfig
from r2ec.recpo_trainer import train as train_recpo
from r2ec.training import LoraSettings
from r2ec.warmstart import WarmStartConfig
from r2ec.warmstart_trainer import train as train_warmstart
from tests.conftest import synthetic_catalog

ITEMS, SAMPLES = synthetic_catalog()
CATALOG = Catalog.from_frame(ITEMS)
FIXED = SAMPLES.head(8)


@torch.no_grad()
def _item_nll(r2ec: R2ec, batch) -> float:
    """In-batch item NLL of greedy-reasoning h_T against the batch's targets (RecPO's item loss
    without advantages)."""
    prompts = r2ec.user_prompts(histories(batch), times(batch["target_ts"]))
    gens = [g[0] for g in r2ec.reason(prompts, sampling=SamplingConfig(max_new_tokens=4))]
    h = torch.tensor(r2ec.user_state(prompts, gens))
    uniq = sorted(set(batch["target_item_id"]))
    ip = r2ec.item_prompts(uniq, [CATALOG.titles[CATALOG.row[i]] for i in uniq],
                           [CATALOG.attributes[CATALOG.row[i]] for i in uniq])
    ids, mask = pad_batch(ip, r2ec.tokenizer.pad_token_id, "right")
    items = last_token_states(r2ec.model, ids, mask)
    logits = F.normalize(h, dim=-1) @ F.normalize(items, dim=-1).T / r2ec.tau
    labels = torch.tensor([uniq.index(t) for t in batch["target_item_id"]])
    return F.cross_entropy(logits, labels).item()


def _rl_cfg(**kw) -> RecPOConfig:
    base = dict(group_size=3, users_per_step=8, max_new_tokens=4, top_k=20, epochs=6,
                eval_every=1000, eval_samples=0, save_every=1, lr=5e-3, warmup_steps=1,
                refresh_every=2, patience=0, lora=LoraSettings(enabled=True, r=4, alpha=8))
    base.update(kw)
    return RecPOConfig(**base)


def test_recpo_steps_train_lora_and_lower_item_loss(tiny_model_dir, tmp_path):
    r2ec = R2ec.load(tiny_model_dir, device="cpu")
    before = _item_nll(r2ec, FIXED)
    summary = train_recpo(r2ec, CATALOG, FIXED, FIXED, _rl_cfg(), tmp_path / "rl", progress=False)
    assert summary["steps"] == 6
    lora = {n: p for n, p in r2ec.model.named_parameters() if "lora_B" in n}
    assert lora and any(p.abs().sum() > 0 for p in lora.values()), "LoRA B starts at 0 and must move"
    base_frozen = [p for n, p in r2ec.model.named_parameters() if "lora_" not in n]
    assert not any(p.requires_grad for p in base_frozen)
    assert _item_nll(r2ec, FIXED) < before
    lines = (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()
    assert any('"reward_mean"' in x and '"token_loss"' in x and '"reasoning_len"' in x for x in lines)
    manifest = json.loads((tmp_path / "rl" / "best" / "manifest.json").read_text())
    # the kept checkpoint is the first validation with the best NDCG@10 (improvements only)
    valid = [json.loads(x) for x in lines if '"split": "valid"' in x]
    best = max(valid, key=lambda v: v["ndcg@10"])
    assert manifest["step"] == summary["best_step"] == best["step"]
    assert summary["best_valid_metrics"]["ndcg@10"] == pytest.approx(best["ndcg@10"])


def _params(r2ec: R2ec) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in r2ec.model.named_parameters()}


def test_recpo_resume_continues_exactly(tiny_model_dir, tmp_path):
    straight = R2ec.load(tiny_model_dir, device="cpu")
    train_recpo(straight, CATALOG, FIXED, FIXED, _rl_cfg(max_steps=3), tmp_path / "a", progress=False)
    first = R2ec.load(tiny_model_dir, device="cpu")
    train_recpo(first, CATALOG, FIXED, FIXED, _rl_cfg(max_steps=2), tmp_path / "b", progress=False)
    resumed = R2ec.load(tiny_model_dir, device="cpu")  # a new process would start like this
    out = train_recpo(resumed, CATALOG, FIXED, FIXED, _rl_cfg(max_steps=3), tmp_path / "b",
                      resume=True, progress=False)
    assert out["steps"] == 3
    a, b = _params(straight), _params(resumed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run must equal the uninterrupted one"


def _ws_cfg(**kw) -> WarmStartConfig:
    base = dict(epochs=4, windows_per_step=6, window=5, stride=3, eval_every=1000,
                eval_samples=0, save_every=1, warmup_steps=2, patience=0, lr=3e-3)
    base.update(kw)
    return WarmStartConfig(**base)


def test_warmstart_learns_and_resumes_exactly(tiny_model_dir, tmp_path):
    straight = R2ec.load(tiny_model_dir, device="cpu")
    before = _item_nll(straight, FIXED)
    train_warmstart(straight, CATALOG, SAMPLES, FIXED, _ws_cfg(max_steps=8), tmp_path / "a",
                    progress=False)
    assert _item_nll(straight, FIXED) < before
    first = R2ec.load(tiny_model_dir, device="cpu")
    train_warmstart(first, CATALOG, SAMPLES, FIXED, _ws_cfg(max_steps=5), tmp_path / "b",
                    progress=False)
    resumed = R2ec.load(tiny_model_dir, device="cpu")
    train_warmstart(resumed, CATALOG, SAMPLES, FIXED, _ws_cfg(max_steps=8), tmp_path / "b",
                    resume=True, progress=False)
    a, b = _params(straight), _params(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines = (tmp_path / "a" / "metrics.jsonl").read_text()
    assert '"split": "valid"' in lines and (tmp_path / "a" / "best" / "manifest.json").is_file()


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_saved_checkpoint_scores_like_the_live_model(tiny_model_dir, tmp_path, kind):
    r2ec = R2ec.load(tiny_model_dir, device="cpu")
    cfg = _rl_cfg(max_steps=1, lora=LoraSettings(enabled=kind == "lora", r=4, alpha=8))
    train_recpo(r2ec, CATALOG, FIXED, FIXED, cfg, tmp_path / "x", progress=False)
    r2ec.save(tmp_path / "merged", stage="recpo")
    reloaded = R2ec.load(tmp_path / "merged", device="cpu")
    prompts = r2ec.user_prompts(histories(FIXED), times(FIXED["target_ts"]))
    torch.testing.assert_close(torch.tensor(r2ec.user_state(prompts, None)),
                               torch.tensor(reloaded.user_state(prompts, None)), atol=1e-4, rtol=1e-4)


def test_warmstart_teaches_the_reasoning_format(tiny_model_dir, tmp_path):
    """With reasoning_share = 1 every readout carries the taught reasoning; the LM loss on it
    falls, and a checkpoint of the stage validates with greedy reasoning."""
    r2ec = R2ec.load(tiny_model_dir, device="cpu")
    cfg = _ws_cfg(max_steps=12, reasoning_share=1.0, lm_loss_weight=1.0, eval_every=12,
                  eval_max_new_tokens=8)
    train_warmstart(r2ec, CATALOG, SAMPLES, FIXED, cfg, tmp_path / "r", progress=False)
    logs = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    lm = [x["loss_lm"] for x in logs if "loss_lm" in x]
    assert len(lm) == 12 and sum(lm[-3:]) < sum(lm[:3])
    valid = [x for x in logs if x.get("split") == "valid"]
    assert valid and "reasoning_tokens_mean" in valid[-1]


def test_schedule_warms_up_peaks_and_anneals_by_time_or_steps():
    from r2ec.training import scheduled_lr

    cfg = WarmStartConfig(lr=1e-3, min_lr=0.0, warmup_steps=10, schedule="cosine")
    assert scheduled_lr(0, 0.0, cfg) == pytest.approx(1e-4)
    assert scheduled_lr(9, 0.01, cfg) == pytest.approx(1e-3)
    assert scheduled_lr(50, 0.5, cfg) == pytest.approx(5e-4)
    assert scheduled_lr(60, 1.0, cfg) == pytest.approx(0.0)  # the budget is spent: annealed
    assert scheduled_lr(60, 1.7, cfg) == pytest.approx(0.0)
    flat = RecPOConfig(lr=3e-5, warmup_steps=2, schedule="constant")
    assert scheduled_lr(100, 0.9, flat) == pytest.approx(3e-5)


@pytest.mark.parametrize("min_std, rollouts, flat", [(-1.0, 3.0, 0.0), (10.0, 9.0, 1.0)])
def test_recpo_refills_flat_groups_and_varies_temperature(tiny_model_dir, tmp_path, min_std,
                                                          rollouts, flat):
    """Dynamic sampling: groups whose rewards do not differ (here: all, by a threshold no
    spread reaches) are replaced by the next users' groups for `refill_rounds` rounds, and the
    log says so; with every group informative nothing is re-sampled. Rollouts of a group run
    at the listed temperatures."""
    r2ec = R2ec.load(tiny_model_dir, device="cpu")
    cfg = _rl_cfg(max_steps=1, users_per_step=4, refill_rounds=2, min_reward_std=min_std,
                  group_temperatures=[0.7, 2.0], advantage="centered")
    train_recpo(r2ec, CATALOG, SAMPLES, FIXED, cfg, tmp_path / "rl", progress=False)
    steps = [json.loads(x) for x in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()
             if '"lr"' in x]
    assert len(steps) == 1
    assert steps[0]["rollouts_per_group"] == rollouts  # G = 3 per user, per round
    assert steps[0]["flat_groups"] == flat


def test_bf16_mixed_precision_keeps_float32_weights_and_learns(tiny_model_dir, tmp_path):
    """mixed_precision='bf16' (what a GPU run of a full fine-tune uses): the matmuls run in
    bfloat16 under autocast (the step is not bit-equal to a float32 one), the weights and their
    updates stay float32, and the item loss still falls."""
    fp32 = R2ec.load(tiny_model_dir, device="cpu")
    train_warmstart(fp32, CATALOG, SAMPLES, FIXED, _ws_cfg(max_steps=6), tmp_path / "fp32",
                    progress=False)
    r2ec = R2ec.load(tiny_model_dir, device="cpu")
    before = _item_nll(r2ec, FIXED)
    train_warmstart(r2ec, CATALOG, SAMPLES, FIXED, _ws_cfg(max_steps=6, mixed_precision="bf16"),
                    tmp_path / "bf16", progress=False)
    assert all(p.dtype == torch.float32 for p in r2ec.model.parameters())
    assert _item_nll(r2ec, FIXED) < before
    a, b = _params(fp32), _params(r2ec)
    assert any(not torch.equal(a[k], b[k]) for k in a), "autocast did not change the arithmetic"


class _Planted:
    """What an attacker leaves in an output folder: unpickling it runs a command."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_resume_never_unpickles_and_refuses_an_altered_state(tiny_model_dir, tmp_path):
    """accelerate's save_state layout with a planted pickle (what --resume used to load with
    weights_only=False) is refused without being read; the project's own state is resumed, and
    the same state with one altered, one added or one missing file is refused by name."""
    import pickle

    from r2ec.train_state import StateError

    marker = tmp_path / "pwned"
    planted = tmp_path / "planted" / "state"
    planted.mkdir(parents=True)
    (planted / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps(_Planted(marker)))
    (planted / "random_states_0.pkl").write_bytes(pickle.dumps(_Planted(marker)))
    with pytest.raises(StateError, match="no readable manifest.json"):
        train_recpo(R2ec.load(tiny_model_dir, device="cpu"), CATALOG, FIXED, FIXED,
                    _rl_cfg(max_steps=1), tmp_path / "planted", resume=True, progress=False)
    assert not marker.exists()

    out = tmp_path / "own"
    train_recpo(R2ec.load(tiny_model_dir, device="cpu"), CATALOG, FIXED, FIXED, _rl_cfg(max_steps=1),
                out, progress=False)
    state = out / "state"
    assert {p.suffix for p in state.iterdir()} == {".json", ".safetensors"}  # no pickle at all
    ok = train_recpo(R2ec.load(tiny_model_dir, device="cpu"), CATALOG, FIXED, FIXED,
                     _rl_cfg(max_steps=2), out, resume=True, progress=False)
    assert ok["steps"] == 2

    def refused(change, match):
        import shutil

        bad = tmp_path / f"bad-{match[:8].replace(' ', '_')}"
        shutil.copytree(out, bad)
        change(bad / "state")
        with pytest.raises(StateError, match=match):
            train_recpo(R2ec.load(tiny_model_dir, device="cpu"), CATALOG, FIXED, FIXED,
                        _rl_cfg(max_steps=3), bad, resume=True, progress=False)

    refused(lambda s: (s / "counter.json").write_text((s / "counter.json").read_text()
                                                     .replace('"step"', '"step" ')),
            "counter.json differs from the manifest")
    refused(lambda s: (s / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps(_Planted(marker))),
            "is not a training-state file name")
    refused(lambda s: (s / "optimizer.safetensors").unlink(), "optimizer.safetensors is missing")
    assert not marker.exists()

    # a state saved from another starting model is not mixed into this one
    other = R2ec.load(tiny_model_dir, device="cpu")
    other.model_version = "r2ec-000000000000"
    with pytest.raises(StateError, match="parent_version"):
        train_recpo(other, CATALOG, FIXED, FIXED, _rl_cfg(max_steps=3), out, resume=True,
                    progress=False)


def test_validations_score_in_batches_of_eval_batch_size(tiny_model_dir, tmp_path, monkeypatch):
    """Both stages' validations score (and, in RecPO, write reasonings) eval_batch_size samples
    per call: on a GPU a generate call costs about the same from 64 to 1,024 sequences, so a
    validation that ignored it ran 16 times as many calls as it needed."""
    import r2ec.training as training

    seen: list[int] = []
    real = training.evaluate

    def spy(scorer, samples, catalog, batch_size=256, **kw):
        seen.append(batch_size)
        return real(scorer, samples, catalog, batch_size=batch_size, **kw)

    monkeypatch.setattr(training, "evaluate", spy)
    train_warmstart(R2ec.load(tiny_model_dir, device="cpu"), CATALOG, SAMPLES, FIXED,
                    _ws_cfg(max_steps=1, eval_every=1, eval_batch_size=5), tmp_path / "ws",
                    progress=False)
    assert seen and set(seen) == {5}
    seen.clear()
    train_recpo(R2ec.load(tiny_model_dir, device="cpu"), CATALOG, FIXED, FIXED,
                _rl_cfg(max_steps=1, eval_every=1, eval_batch_size=3), tmp_path / "rl",
                progress=False)
    assert seen and set(seen) == {3}
