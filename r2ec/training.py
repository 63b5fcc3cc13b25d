"""Pieces both training stages share: the cached item table, the R²ec scorer for evaluation,
the data order that resumes exactly, the metrics log, and LoRA set-up through peft."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F

from r2ec.config import SamplingConfig
from r2ec.data import Catalog, histories, times
from r2ec.evaluation import EvalResult, evaluate
from r2ec.model import R2ec
from r2ec.modeling import last_token_states, length_sorted_batches, pad_batch
from r2ec.progress import progress_bar  # noqa: F401 - re-exported for the trainers

log = logging.getLogger(__name__)

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class LoraSettings:
    """LoRA via peft (paper: r = 4 on all attention and MLP projections; authors' alpha 128)."""

    enabled: bool = field(default=False, metadata={"help": "train LoRA adapters instead of all weights"})
    r: int = field(default=4, metadata={"help": "adapter rank (paper: 4)"})
    alpha: int = field(default=128, metadata={"help": "scaling alpha (authors' code: 128)"})
    dropout: float = field(default=0.0, metadata={
        "help": "adapter dropout (authors set 0.05 but disable_dropout_in_model zeroes it)"})
    targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS),
                               metadata={"help": "module names that get adapters"})


def apply_lora(model, s: LoraSettings):
    if not s.enabled:
        return model
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=s.r, lora_alpha=s.alpha, lora_dropout=s.dropout,
                                            target_modules=s.targets, bias="none"))


class ItemTable:
    """H_V for the whole catalogue, L2-normalised and detached; refreshed in full every N steps
    (paper Alg. 1). Rows can be overwritten with fresh, detached encodings of a batch's targets
    (the authors' per-step update); never mix rows that carry gradient into it (SMALL_MODEL.md)."""

    def __init__(self, r2ec: R2ec, item_prompts: Sequence[Sequence[int]], batch_size: int = 128):
        self.r2ec, self.prompts, self.batch_size = r2ec, item_prompts, batch_size
        self.table: torch.Tensor | None = None
        self.refreshed_at = -1

    @torch.no_grad()
    def refresh(self, step: int) -> torch.Tensor:
        was_training = self.r2ec.model.training
        self.r2ec.model.eval()
        rows: list[torch.Tensor | None] = [None] * len(self.prompts)
        for idx in length_sorted_batches([len(p) for p in self.prompts], self.batch_size):
            ids, mask = pad_batch([self.prompts[i] for i in idx], self.r2ec.tokenizer.pad_token_id,
                                  "right", self.r2ec.device)
            states = last_token_states(self.r2ec.model, ids, mask)
            for j, i in enumerate(idx):
                rows[i] = states[j]
        self.table = F.normalize(torch.stack(rows).float(), dim=-1)  # type: ignore[arg-type]
        self.refreshed_at = step
        self.r2ec.model.train(was_training)
        return self.table

    def update_rows(self, rows: Sequence[int], states: torch.Tensor) -> None:
        self.table[list(rows)] = F.normalize(states.detach().float(), dim=-1)

    # The (partly stale) table is training state: a resumed run must use the same one.
    def state_dict(self) -> dict:
        return {"table": self.table, "refreshed_at": self.refreshed_at}

    def load_state_dict(self, state: dict) -> None:
        self.table, self.refreshed_at = state["table"], int(state["refreshed_at"])


class R2ecScorer:
    """Scores a batch of samples against H_V, with greedy reasoning or without (ablation)."""

    def __init__(self, r2ec: R2ec, item_states: np.ndarray, reasoning: bool,
                 sampling: SamplingConfig | None = None):
        self.r2ec, self.h_v, self.reasoning = r2ec, item_states, reasoning
        self.sampling = sampling or SamplingConfig()
        self.last_generations: list = []

    def __call__(self, batch: pd.DataFrame) -> np.ndarray:
        prompts = self.r2ec.user_prompts(histories(batch), times(batch["target_ts"]))
        gens = None
        if self.reasoning:
            gens = [g[0] for g in self.r2ec.reason(prompts, 1, self.sampling)]
            self.last_generations.extend(gens)
        h_t = self.r2ec.user_state(prompts, gens)
        return R2ec.score(h_t, self.h_v, self.r2ec.tau)


def evaluate_r2ec(r2ec: R2ec, samples: pd.DataFrame, catalog: Catalog, reasoning: bool,
                  sampling: SamplingConfig | None = None, batch_size: int = 64,
                  item_prompts: Sequence[Sequence[int]] | None = None, progress: bool = False,
                  desc: str = "evaluating") -> EvalResult:
    prompts = item_prompts or r2ec.item_prompts(catalog.ids, catalog.titles, catalog.attributes)
    scorer = R2ecScorer(r2ec, r2ec.encode_items(prompts), reasoning, sampling)
    result = evaluate(scorer, samples, catalog, batch_size=batch_size, progress=progress, desc=desc)
    if reasoning and scorer.last_generations:
        lengths = [len(g.token_ids) for g in scorer.last_generations]
        result.metrics["reasoning_tokens_mean"] = float(np.mean(lengths))
    return result


def validate_and_keep_best(r2ec: R2ec, counter: StepCounter, subset: pd.DataFrame,
                           catalog: Catalog, item_prompts, reasoning: bool,
                           sampling: SamplingConfig | None, metrics_log: MetricsLog, best_dir: Path,
                           stage: str, extra: dict, patience: int) -> bool:
    """One validation run: log it, save the model to `best_dir` when NDCG@10 improves, and
    return True when `patience` runs in a row have not improved (early stopping)."""
    res = evaluate_r2ec(r2ec, subset, catalog, reasoning, sampling, item_prompts=item_prompts)
    ndcg = res.metrics["ndcg@10"]
    metrics_log.write(step=counter.step, split="valid", **res.metrics)
    log.info("step %d: valid NDCG@10 %.4f (best %.4f)", counter.step, ndcg, counter.best)
    if ndcg > counter.best:
        counter.best, counter.evals_since_best = ndcg, 0
        r2ec.save(best_dir, stage=stage, extra={**extra, "step": counter.step,
                                                  "valid_ndcg@10_subset": ndcg})
    else:
        counter.evals_since_best += 1
    return bool(patience) and counter.evals_since_best >= patience


def finish_run(acc, state_dir: Path, counter: StepCounter, stopped: str, start: float,
               out_dir: Path) -> dict:
    """The last resumable state, and the run summary both trainers return."""
    acc.save_state(str(state_dir))
    return {"steps": counter.step, "best_valid_ndcg@10_subset": counter.best, "stopped_by": stopped,
            "minutes": (time.time() - start) / 60, "best_dir": str(out_dir / "best")}


class EpochOrder:
    """A seeded permutation per epoch and a cursor: its state_dict resumes the exact order."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.epoch, self.cursor = 0, 0

    def _perm(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.n)

    def next_batch(self) -> np.ndarray:
        if self.cursor >= self.n:
            self.epoch, self.cursor = self.epoch + 1, 0
        idx = self._perm()[self.cursor: self.cursor + self.batch_size]
        self.cursor += self.batch_size
        return idx

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "n": self.n, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if (state["n"], state["seed"]) != (self.n, self.seed):
            raise ValueError("resume state belongs to other data or another seed")
        self.epoch, self.cursor = state["epoch"], state["cursor"]


class StepCounter:
    """Global step, registered with accelerate so `save_state`/`load_state` carry it."""

    def __init__(self) -> None:
        self.step = 0
        self.best = -1.0
        self.evals_since_best = 0

    def state_dict(self) -> dict:
        return {"step": self.step, "best": self.best, "evals_since_best": self.evals_since_best}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.best = int(state["step"]), float(state["best"])
        self.evals_since_best = int(state["evals_since_best"])


class MetricsLog:
    """Append-only JSONL: one object per logged step or evaluation."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.t0 = time.time()

    def write(self, **record) -> None:
        record.setdefault("elapsed_s", round(time.time() - self.t0, 2))
        with self.path.open("a") as f:
            f.write(json.dumps(record, default=float) + "\n")


def cosine_with_warmup(step: int, warmup: int, total: int, lr: float, min_lr: float) -> float:
    """Linear warm-up, then cosine from lr down to min_lr at `total` steps."""
    if step < warmup:
        return lr * (step + 1) / max(1, warmup)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))
