"""Generation backends: the only code that knows how reasonings and hidden states are computed.

`GenerationBackend` has two calls, both on token ids:
- `generate(prompts, n, sampling)`: n reasonings per prompt, each cut at the first <answer>
  (or end of turn), without the <answer> itself;
- `last_hidden_states(seqs)`: the final-layer state at each sequence's last token.

`TransformersBackend` runs everywhere (CPU or GPU). The vLLM backend (`r2ec.vllm_backend`,
optional extra `gpu`) implements the same two calls; `make_backend` picks one by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn

from r2ec.batching import last_token_states, length_sorted_batches, pad_batch
from r2ec.config import SamplingConfig
from r2ec.progress import progress_bar


@dataclass(frozen=True)
class Generation:
    token_ids: tuple[int, ...]  # the reasoning, without the token that closed it
    text: str
    # The token the model closed its reasoning with: <answer> (what the default model is
    # taught), or its end of turn / pad (what a pre-trained chat model writes when it is done).
    # None: the budget ran out. Either way h_T is read at an <answer> appended to the
    # reasoning; RecPO trains the closing token as the action it was.
    stop_id: int | None = None

    @property
    def finished(self) -> bool:
        """The model closed the reasoning itself (it did not run out of budget)."""
        return self.stop_id is not None


class GenerationBackend(Protocol):
    name: str

    def generate(self, prompts: Sequence[Sequence[int]], n: int,
                 sampling: SamplingConfig) -> list[list[Generation]]: ...

    def last_hidden_states(self, seqs: Sequence[Sequence[int]]) -> np.ndarray: ...


def split_reasoning(tokens: Sequence[int], answer_id: int, stop_ids: Sequence[int],
                    pad_id: int) -> tuple[list[int], int | None]:
    """Cut generated tokens at the first stop token (<answer>, a stop id, or pad);
    (reasoning ids, the stop token, or None where there was none)."""
    out = []
    for t in tokens:
        if t in (answer_id, pad_id) or t in stop_ids:
            return out, int(t)
        out.append(int(t))
    return out, None


class TransformersBackend:
    """transformers `generate` and a plain forward pass; batches are grouped by length."""

    name = "transformers"

    def __init__(self, model: nn.Module, tokenizer, device: torch.device, answer_id: int,
                 batch_size: int = 32, progress: bool = False):
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.answer_id, self.batch_size, self.progress = answer_id, batch_size, progress
        self.pad_id = tokenizer.pad_token_id
        self.stop_ids = [i for i in {tokenizer.eos_token_id, answer_id} if i is not None]

    @torch.no_grad()
    def last_hidden_states(self, seqs: Sequence[Sequence[int]]) -> np.ndarray:
        self.model.eval()
        out: list[np.ndarray | None] = [None] * len(seqs)
        batches = length_sorted_batches([len(s) for s in seqs], self.batch_size)
        for idx in progress_bar(iterable=batches, desc="hidden states", disable=not self.progress):
            ids, mask = pad_batch([seqs[i] for i in idx], self.pad_id, "right", self.device)
            states = last_token_states(self.model, ids, mask).float().cpu().numpy()
            for row, i in enumerate(idx):
                out[i] = states[row]
        return np.stack(out) if out else np.zeros((0, self.model.config.hidden_size), np.float32)

    @torch.no_grad()
    def generate(self, prompts: Sequence[Sequence[int]], n: int,
                 sampling: SamplingConfig) -> list[list[Generation]]:
        self.model.eval()
        greedy = sampling.temperature <= 0
        if greedy and n > 1:
            raise ValueError("n > 1 samples need temperature > 0 (greedy gives n equal copies)")
        torch.manual_seed(sampling.seed)
        kwargs = dict(
            do_sample=not greedy, max_new_tokens=sampling.max_new_tokens,
            # stop tokens are suppressed until this many tokens (never beyond the budget)
            min_new_tokens=min(sampling.min_new_tokens, sampling.max_new_tokens) or None,
            num_return_sequences=n, eos_token_id=self.stop_ids, pad_token_id=self.pad_id,
        )
        if not greedy:
            kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p,
                          top_k=sampling.top_k or None)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        results: list[list[Generation] | None] = [None] * len(prompts)
        batches = length_sorted_batches([len(p) for p in prompts], self.batch_size)
        for idx in progress_bar(iterable=batches, desc="reasoning", disable=not self.progress):
            ids, mask = pad_batch([prompts[i] for i in idx], self.pad_id, "left", self.device)
            gen = self.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
            new = gen[:, ids.shape[1]:].cpu().tolist()
            for row, i in enumerate(idx):
                outs = []
                for j in range(n):
                    toks, stop = split_reasoning(new[row * n + j], self.answer_id,
                                                 self.stop_ids, self.pad_id)
                    text = self.tokenizer.decode(toks, skip_special_tokens=False)
                    outs.append(Generation(tuple(toks), text, stop))
                results[i] = outs
        return results  # type: ignore[return-value]


def make_backend(name: str, model: nn.Module, tokenizer, device: torch.device, answer_id: int,
                 model_dir: str | None = None, **kw) -> GenerationBackend:
    if name == "transformers":
        return TransformersBackend(model, tokenizer, device, answer_id, **kw)
    if name == "vllm":
        try:
            from r2ec.vllm_backend import VLLMBackend
        except ImportError as e:  # pragma: no cover - depends on the optional extra
            raise ImportError(
                "backend 'vllm' needs the optional extra: pip install 'r2ec-batch[gpu]'") from e
        if model_dir is None:
            raise ValueError("the vLLM backend loads the model from its directory")
        return VLLMBackend(model_dir, tokenizer, answer_id, **kw)
    raise ValueError(f"unknown backend {name!r} (transformers, vllm)")
