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
    scores = R2ec.score(h, H, m.tau)

"No reasoning" mode (the paper's ablation, and cheap scoring): `user_state(prompts, None)` reads
h_T straight after the prompt with the assistant turn pre-filled with <answer>.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from r2ec import checkpoint
from r2ec.backends import Generation, GenerationBackend, make_backend
from r2ec.batching import pick_device
from r2ec.config import TAU, PromptConfig, SamplingConfig
from r2ec.prompts import ANSWER, HistoryItem, Prompter, item_messages, now_line

_SLOT = "\ue000"  # a private-use character marks where a message's content goes


class R2ec:
    def __init__(self, model, tokenizer, prompt: PromptConfig, *, tau: float = TAU,
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
        self._cache: dict[str, list[int]] = {}
        self._user_head, self._user_tail, self._item_head, self._item_tail = self._chat_parts()
        self.backend: GenerationBackend = make_backend(
            backend, self.model, tokenizer, self.device, self.answer_id,
            model_dir=str(model_dir) if model_dir else None, batch_size=batch_size,
            progress=progress)

    @classmethod
    def load(cls, model_dir: str | Path, device: str | None = None, backend: str = "transformers",
             dtype=None, **kw) -> R2ec:
        model, tok, settings, manifest = checkpoint.load(model_dir, dtype=dtype)
        return cls(model, tok, settings.prompt, tau=settings.tau, device=device, backend=backend,
                   model_dir=model_dir, model_version=manifest["model_version"],
                   base_model=manifest.get("base_model", "unknown"), **kw)

    def set_model(self, model) -> None:
        """Swap the torch model (e.g. for a LoRA-wrapped one); the backend follows."""
        self.model = model
        if hasattr(self.backend, "model"):
            self.backend.model = model

    def save(self, out_dir: str | Path, stage: str, extra: dict | None = None) -> dict:
        """Checkpoint the current weights (LoRA merged into a copy); returns the manifest."""
        manifest = checkpoint.save(
            self.model, self.tokenizer, out_dir, checkpoint.R2ecSettings(self.prompt_cfg, self.tau),
            base_model=self.base_model, extra={"stage": stage, "parent_version": self.model_version,
                                               **(extra or {})})
        return manifest

    # -- prompts -> token ids ----------------------------------------------------------------
    # Prompts are built from segments, each tokenised on its own and cached (the same line is
    # written for many users and many training windows): the instruction with the chat
    # template's head, one segment per history line, and the "now" line with the template's end
    # of turn. The multi-target warm start packs exactly these segments, so its readouts are the
    # states that inference computes.
    def encode(self, text: str) -> list[int]:
        """Token ids of a piece of prompt text (no special tokens), cached: prompts repeat."""
        ids = self._cache.get(text)
        if ids is None:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(self._cache) < 2_000_000:
                self._cache[text] = ids
        return list(ids)

    def _chat_parts(self) -> tuple[str, str, str, str]:
        """(user head, user tail, item head, item tail) of the model's own chat template."""
        tok = self.tokenizer
        user = tok.apply_chat_template([{"role": "user", "content": _SLOT}], tokenize=False,
                                       add_generation_prompt=True)
        item = tok.apply_chat_template(item_messages(_SLOT), tokenize=False,
                                       continue_final_message=True)
        if user.count(_SLOT) != 1 or item.count(_SLOT) != 1:
            raise ValueError("the tokenizer's chat template does not keep a message's content whole")
        return (*user.split(_SLOT), *item.split(_SLOT))

    def prefix_ids(self) -> list[int]:
        """The chat template's head and the instruction: the start of every user prompt."""
        return self.encode(self._user_head + self.prompter.user_instruction())

    def line_ids(self, h: HistoryItem, previous: datetime | None) -> list[int]:
        return self.encode(self.prompter.history_line(h, previous))

    def readout_ids(self, last: datetime | None, ref_time: datetime) -> list[int]:
        """The "now" line and the end of the user turn, up to the assistant's header."""
        return self.encode(now_line(last, ref_time) + self._user_tail)

    def item_prompts(self, item_ids: Sequence[str], titles: Sequence[str],
                     attributes: Sequence[Mapping[str, str] | None]) -> list[list[int]]:
        """Token ids of each item prompt, ending with the pre-filled <answer>."""
        return [self.encode(self._item_head + self.prompter.item_content(iid, title, attrs)
                             + self._item_tail)
                for iid, title, attrs in zip(item_ids, titles, attributes, strict=True)]

    def user_prompt(self, history: Sequence[HistoryItem], ref_time: datetime) -> list[int]:
        """Token ids of one user prompt, up to and including the assistant header. The oldest
        history lines are dropped while the prompt exceeds `max_prompt_tokens`."""
        recent = self.prompter.window(history)
        lines = [self.line_ids(h, recent[i - 1].ts if i else None) for i, h in enumerate(recent)]
        head = self.prefix_ids()
        tail = self.readout_ids(recent[-1].ts if recent else None, ref_time)
        drop = 0
        while drop < len(recent) and len(head) + len(tail) + sum(map(len, lines)) > \
                self.prompt_cfg.max_prompt_tokens:
            drop += 1
            lines = lines[1:]
            if lines:  # the new first line is written as "first"
                lines[0] = self.line_ids(recent[drop], None)
        return head + [t for ln in lines for t in ln] + tail

    def user_prompts(self, histories: Sequence[Sequence[HistoryItem]],
                     ref_times: Sequence[datetime]) -> list[list[int]]:
        return [self.user_prompt(h, r) for h, r in zip(histories, ref_times, strict=True)]

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

    def reasoned_states(self, prompts: Sequence[Sequence[int]], reasoning: bool = True,
                        samples: int = 1, sampling: SamplingConfig | None = None,
                        clock: dict[str, float] | None = None
                        ) -> tuple[np.ndarray, list[list[Generation]] | None]:
        """(h_T (B, d), reasonings) the way scoring computes them: no reasoning; one reasoning
        (greedy unless `sampling` says otherwise); or, with `samples` > 1 (test-time scaling),
        the mean of the L2-normalised h_T of that many sampled reasonings. `clock["reasoning"]`,
        when given, is increased by the seconds spent generating."""
        if not reasoning:
            return self.user_state(prompts, None), None
        sampling = sampling or SamplingConfig()
        if samples > 1 and sampling.temperature <= 0:
            raise ValueError("more than one sampled reasoning needs a temperature > 0")
        start = time.perf_counter()
        gens = self.reason(prompts, n=samples, sampling=sampling)
        if clock is not None:
            clock["reasoning"] = clock.get("reasoning", 0.0) + time.perf_counter() - start
        if samples == 1:
            return self.user_state(prompts, [g[0] for g in gens]), gens
        states = []
        for s in range(samples):
            h = self.user_state(prompts, [g[s] for g in gens])
            states.append(h / np.maximum(np.linalg.norm(h, axis=1, keepdims=True), 1e-12))
        return np.mean(states, axis=0), gens

    # -- rec head ----------------------------------------------------------------------------
    @staticmethod
    def score(h_t: np.ndarray | torch.Tensor, h_v: np.ndarray | torch.Tensor,
              tau: float) -> np.ndarray | torch.Tensor:
        """cosine(h_T, H_V) / tau for every (user, item) pair: (B, N)."""
        if isinstance(h_t, torch.Tensor):
            a = torch.nn.functional.normalize(h_t, dim=-1)
            b = torch.nn.functional.normalize(h_v, dim=-1)
            return a @ b.T / tau
        a = h_t / np.maximum(np.linalg.norm(h_t, axis=-1, keepdims=True), 1e-12)
        b = h_v / np.maximum(np.linalg.norm(h_v, axis=-1, keepdims=True), 1e-12)
        return (a @ b.T / tau).astype(np.float32)
