"""Batch recommendation with a loaded model and its item index: the code path that the Spark
UDFs run per chunk and that `bench/throughput.py` runs in one process for comparison.

For each user: prompt from the history window -> reasoning (greedy by default; `samples` > 1
draws several with temperature and averages their normalised h_T) -> h_T -> exact top-k from
the FAISS index with the history items excluded. The rationale is stored as an analyst reads
it: item tokens replaced by "[title]" (`r2ec.reasoning.render`).

Fallback (documented in the README): a user whose history is empty, or whose history items are
all unknown to the model's catalogue, gets the most popular items (passed in by the job),
history still excluded, an empty rationale, and `fallback = "popularity"`. A user the model
failed on (the scoring UDF isolates the failure, `udfs/isolation.py`) gets the same list with
`fallback = "error"` and the error as its rationale.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime

from r2ec.config import FALLBACK_POPULARITY, SamplingConfig
from r2ec.index import ItemIndex
from r2ec.model import R2ec
from r2ec.prompts import HistoryItem
from r2ec.reasoning import render


class BatchTooLarge(MemoryError):
    """A batch's tokens (prompts plus the reasoning budget) exceed `max_batch_tokens`: refused
    before the model runs, and handled like an out-of-memory (smaller chunks)."""


@dataclass
class Recommendation:
    item_ids: list[str]
    scores: list[float]
    rationale: str
    rationale_tokens: int
    fallback: str | None = None


class Recommender:
    def __init__(self, r2ec: R2ec, index: ItemIndex, popular: Sequence[str] = ()):
        if index.manifest.model_version != r2ec.model_version:
            raise ValueError(f"index built for {index.manifest.model_version}, model is "
                             f"{r2ec.model_version}")
        self.r2ec, self.index, self.popular = r2ec, index, list(popular)
        # Seconds spent so far: generating reasonings, and the rest (h_T, index search, render).
        self.seconds = {"reasoning": 0.0, "search": 0.0}

    def render(self, reasoning: str, history: Sequence[HistoryItem]) -> str:
        """The rationale as stored: history references and item tokens become "[title]"."""
        window = self.r2ec.prompter.window(history)
        return render(reasoning, self.index.titles, [h.title for h in window])

    def fallback(self, history: Sequence[HistoryItem], k: int, never: Collection[str] = (),
                 reason: str = FALLBACK_POPULARITY, note: str = "") -> Recommendation:
        """The most popular items the user may get; `note` is stored as the rationale."""
        seen = {h.item_id for h in history} | set(never)
        items = [i for i in self.popular if i not in seen][:k]
        # Popularity has no cosine score; rank-based scores keep the column non-null and ordered.
        return Recommendation(items, [float(k - r) for r in range(len(items))], note, 0, reason)

    def recommend(self, histories: Sequence[Sequence[HistoryItem]], ref_times: Sequence[datetime],
                  top_k: int = 10, reasoning: bool = True, samples: int = 1,
                  sampling: SamplingConfig | None = None,
                  exclude: Sequence[Collection[str]] | None = None,
                  blocked: Collection[str] = (), max_batch_tokens: int = 0
                  ) -> list[Recommendation]:
        """Business rules: besides each user's history window, `exclude[i]` (e.g. everything
        user i ever interacted with) and `blocked` (blocklisted or unavailable items, for
        everyone) are never recommended. They are applied inside the index search, which
        fetches past them, so every list stays `top_k` long. With `max_batch_tokens`, a batch
        whose prompt tokens plus reasoning budget exceed it raises BatchTooLarge unscored."""
        sampling = sampling or SamplingConfig()
        exclude = exclude or [()] * len(histories)
        blocked = frozenset(blocked)
        if samples > 1 and sampling.temperature <= 0:
            raise ValueError("--samples > 1 needs a temperature > 0")
        out: list[Recommendation | None] = [None] * len(histories)
        live = []
        for i, hist in enumerate(histories):
            if any(h.item_id in self.index.row for h in hist):
                live.append(i)
            else:
                out[i] = self.fallback(hist, top_k, blocked | set(exclude[i]))
        if live:
            prompts = self.r2ec.user_prompts([histories[i] for i in live], [ref_times[i] for i in live])
            if max_batch_tokens:
                _check_budget(prompts, sampling.max_new_tokens * samples if reasoning else 0,
                              max_batch_tokens)
            texts, lengths = [""] * len(live), [0] * len(live)
            start, reasoned = time.perf_counter(), self.seconds["reasoning"]
            h_t, gens = self.r2ec.reasoned_states(prompts, reasoning, samples, sampling,
                                                  clock=self.seconds)
            if gens is not None:
                texts = [self.render(g[0].text, histories[i]) for g, i in zip(gens, live, strict=True)]
                lengths = [len(g[0].token_ids) for g in gens]
            never = [{h.item_id for h in histories[i]} | set(exclude[i]) | blocked for i in live]
            ids, scores = self.index.search(h_t, top_k, never)
            for j, i in enumerate(live):
                n = len(ids[j])
                out[i] = Recommendation(ids[j], [float(x) for x in scores[j][:n]], texts[j], lengths[j])
            self.seconds["search"] += (time.perf_counter() - start
                                       - (self.seconds["reasoning"] - reasoned))
        return out  # type: ignore[return-value]


def _check_budget(prompts: Sequence[Sequence[int]], new_per_user: int, budget: int) -> None:
    # Memory (the KV cache above all) grows with the tokens of the batch: prompts plus what the
    # reasoning may add. Refusing before the call is cheaper than a device out-of-memory.
    tokens = sum(len(p) for p in prompts) + new_per_user * len(prompts)
    if tokens > budget:
        raise BatchTooLarge(f"{len(prompts)} prompt(s) need up to {tokens:,} tokens, above "
                            f"max_batch_tokens {budget:,}")
