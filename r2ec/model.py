"""R²ec's dual-head recommender (arXiv 2505.16994 §3.1) around any causal LM.

- lm_head: the LM's own head writes a reasoning after the user prompt, up to <answer>;
- rec head: no parameters of its own. h_T, the final hidden state at <answer>, is compared with
  H_V, whose rows are the same LM's final hidden states of each item prompt (pre-filled with
  <answer>): score(v) = cosine(h_T, H_V[v]) / tau, tau = 0.02 (the authors' code).

    from r2ec.model import R2ec
    m = R2ec.load("models/default")
    H = m.encode_items(m.item_prompts(items_df))
    prompts = m.user_prompts(histories, ref_times)
    gens = m.reason(prompts)                      # greedy, one reasoning each
    h = m.user_state(prompts, [g[0] for g in gens])
    scores = R2ec.score(h, H)

"No reasoning" mode (the paper's ablation, and cheap scoring): `user_state(prompts, None)` reads
h_T straight after the prompt with the assistant turn pre-filled with <answer>.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from r2ec import checkpoint
from r2ec.backends import Generation, GenerationBackend, make_backend
from r2ec.config import PromptConfig, SamplingConfig
from r2ec.modeling import last_token_states, pad_batch, pick_device
from r2ec.prompts import ANSWER, HistoryItem, Prompter, item_messages, user_messages

DEFAULT_TAU = 0.02


class R2ec:
    def __init__(self, model, tokenizer, prompt: PromptConfig, *, tau: float = DEFAULT_TAU,
                 device: str | torch.device | None = None, backend: str = "transformers",
                 model_dir: str | Path | None = None, model_version: str = "unversioned",
                 batch_size: int = 32, progress: bool = False, base_model: str = "unknown"):
        self.device = pick_device(str(device) if device else None)
        self.model = model.to(self.device)
        self.tokenizer = tokenizer
        self.prompt_cfg = prompt
        self.tau = tau
        self.model_version = model_version
        self.base_model = base_model
        self.model_dir = Path(model_dir) if model_dir else None
        vocab = tokenizer.get_vocab()
        if ANSWER not in vocab:
            raise ValueError(f"the tokenizer has no {ANSWER} token")
        self.answer_id = vocab[ANSWER]
        self.prompter = Prompter(prompt, has_token=lambda t: t in vocab)
        self.backend: GenerationBackend = make_backend(
            backend, self.model, tokenizer, self.device, self.answer_id,
            model_dir=str(model_dir) if model_dir else None, batch_size=batch_size,
            progress=progress)

    @classmethod
    def load(cls, model_dir: str | Path, device: str | None = None, backend: str = "transformers",
             dtype=None, **kw) -> R2ec:
        model, tok, prompt, manifest = checkpoint.load(model_dir, dtype=dtype)
        return cls(model, tok, prompt, device=device, backend=backend, model_dir=model_dir,
                   model_version=manifest["model_version"],
                   base_model=manifest.get("base_model", "unknown"), **kw)

    def set_model(self, model) -> None:
        """Swap the torch model (e.g. for a LoRA-wrapped one); the backend follows."""
        self.model = model
        if hasattr(self.backend, "model"):
            self.backend.model = model

    def save(self, out_dir: str | Path, stage: str, extra: dict | None = None) -> dict:
        """Checkpoint the current weights (LoRA merged into a copy); returns the manifest."""
        manifest = checkpoint.save(
            self.model, self.tokenizer, out_dir, self.prompt_cfg,
            base_model=self.base_model, extra={"stage": stage, "parent_version": self.model_version,
                                               **(extra or {})})
        return manifest

    # -- prompts -> token ids ----------------------------------------------------------------
    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def item_prompts(self, item_ids: Sequence[str], titles: Sequence[str],
                     attributes: Sequence[Mapping[str, str] | None]) -> list[list[int]]:
        """Token ids of each item prompt, ending with the pre-filled <answer>."""
        out = []
        for iid, title, attrs in zip(item_ids, titles, attributes, strict=True):
            content = self.prompter.item_content(iid, title, attrs)
            text = self.tokenizer.apply_chat_template(
                item_messages(content), tokenize=False, continue_final_message=True)
            out.append(self._encode(text))
        return out

    def user_prompts(self, histories: Sequence[Sequence[HistoryItem]],
                     ref_times: Sequence[datetime]) -> list[list[int]]:
        """Token ids of each user prompt, up to and including the assistant header. The oldest
        history lines are dropped while the prompt exceeds `max_prompt_tokens`."""
        out = []
        for hist, ref in zip(histories, ref_times, strict=True):
            drop = 0
            while True:
                content = self.prompter.user_content(hist, ref, drop_oldest=drop)
                text = self.tokenizer.apply_chat_template(
                    user_messages(content), tokenize=False, add_generation_prompt=True)
                ids = self._encode(text)
                if len(ids) <= self.prompt_cfg.max_prompt_tokens or drop >= len(hist):
                    break
                drop += 1
            out.append(ids)
        return out

    def user_sequences(self, prompts: Sequence[Sequence[int]],
                       reasonings: Sequence[Generation | Sequence[int]] | None) -> list[list[int]]:
        """prompt + reasoning + <answer>: the sequences whose last state is h_T."""
        if reasonings is None:
            return [list(p) + [self.answer_id] for p in prompts]
        seqs = []
        for p, r in zip(prompts, reasonings, strict=True):
            toks = r.token_ids if isinstance(r, Generation) else r
            seqs.append(list(p) + list(toks) + [self.answer_id])
        return seqs

    # -- inference (through the backend) -----------------------------------------------------
    def encode_items(self, item_prompt_ids: Sequence[Sequence[int]]) -> np.ndarray:
        """H_V: (N, d) float32, one row per item prompt (not normalised)."""
        return self.backend.last_hidden_states(item_prompt_ids)

    def reason(self, prompts: Sequence[Sequence[int]], n: int = 1,
               sampling: SamplingConfig | None = None) -> list[list[Generation]]:
        return self.backend.generate(prompts, n, sampling or SamplingConfig())

    def user_state(self, prompts: Sequence[Sequence[int]],
                   reasonings: Sequence[Generation | Sequence[int]] | None) -> np.ndarray:
        """h_T: (B, d) float32. `reasonings=None` is the no-reasoning mode."""
        return self.backend.last_hidden_states(self.user_sequences(prompts, reasonings))

    # -- training-side forward (gradient flows) ----------------------------------------------
    def states_with_grad(self, seqs: Sequence[Sequence[int]]) -> torch.Tensor:
        ids, mask = pad_batch(seqs, self.tokenizer.pad_token_id, "right", self.device)
        return last_token_states(self.model, ids, mask)

    # -- rec head ----------------------------------------------------------------------------
    @staticmethod
    def score(h_t: np.ndarray | torch.Tensor, h_v: np.ndarray | torch.Tensor,
              tau: float = DEFAULT_TAU) -> np.ndarray | torch.Tensor:
        """cosine(h_T, H_V) / tau for every (user, item) pair: (B, N)."""
        if isinstance(h_t, torch.Tensor):
            a = torch.nn.functional.normalize(h_t, dim=-1)
            b = torch.nn.functional.normalize(h_v, dim=-1)
            return a @ b.T / tau
        a = h_t / np.maximum(np.linalg.norm(h_t, axis=-1, keepdims=True), 1e-12)
        b = h_v / np.maximum(np.linalg.norm(h_v, axis=-1, keepdims=True), 1e-12)
        return (a @ b.T / tau).astype(np.float32)
