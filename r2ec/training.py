"""What both training stages share: one training-loop skeleton (`run_loop`: optimiser,
schedule, accumulation, validation with keep-best and early stopping, resumable state, time
budget), the cached item table, the R²ec scorer for evaluation, the data order that resumes
exactly, the metrics log, and LoRA set-up through peft. A stage supplies only its per-step loss
(`StepFn`) and what to do around a step; the losses themselves are pure, tested functions."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F

from r2ec import train_state
from r2ec.batching import last_token_states, length_sorted_batches, pad_batch
from r2ec.config import SamplingConfig, option
from r2ec.data import Catalog, histories, times
from r2ec.evaluation import EarlyStopping, EvalResult, evaluate
from r2ec.model import R2ec
from r2ec.progress import progress_bar  # noqa: F401 - re-exported for the trainers

log = logging.getLogger(__name__)

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class LoraSettings:
    """LoRA via peft (paper: r = 4 on all attention and MLP projections; authors' alpha 128)."""

    enabled: bool = option(False, "train LoRA adapters instead of all weights")
    r: int = option(4, "adapter rank (paper: 4)")
    alpha: int = option(128, "scaling alpha (authors' code: 128)")
    dropout: float = option(0.0, "adapter dropout (authors set 0.05 but disable_dropout_in_model "
                                 "zeroes it)")
    targets: list[str] = option(list(LORA_TARGETS), "module names that get adapters")


@dataclass
class LoopConfig:
    """What `run_loop` reads: the settings both training stages share. Each stage extends it
    with its own settings and restates a default where its own differs (`r2ec.config.restate`,
    with the reason), so a shared setting has one name and one help string."""

    epochs: float = option(1.0, "passes over the train split")
    max_minutes: float = option(0.0, "training time budget in minutes (0 = none); a cosine "
                                     "schedule anneals within it")
    max_steps: int = option(0, "stop this run at this global step (0 = none); the schedule still "
                               "spans `epochs`, so a later --resume continues exactly")
    grad_accum: int = option(1, "micro-batches per optimiser step (gradient accumulation)")
    lr: float = option(3e-5, "peak AdamW learning rate")
    min_lr: float = option(0.0, "floor of the cosine schedule")
    schedule: str = option("cosine", "'cosine' (annealed over max(step / total, time / budget), "
                                     "so a time-boxed run ends at min_lr) or 'constant' after "
                                     "warm-up (the paper's RecPO)")
    warmup_steps: int = option(32, "linear warm-up steps (paper: 32)")
    weight_decay: float = option(0.0, "AdamW weight decay")
    beta2: float = option(0.999, "AdamW beta2")
    grad_clip: float = option(1.0, "gradient norm clip (authors: 1.0)")
    eval_every: int = option(50, "steps between validations")
    eval_samples: int = option(0, "valid samples per validation (0 = the whole split: the "
                                  "checkpoint choice needs a standard error below the "
                                  "differences it decides; a 1,000-sample subset swung by "
                                  "+-.015 NDCG@10); N = a fixed seeded subset")
    eval_batch_size: int = option(64, "valid samples per scoring batch in a validation: each "
                                      "batch writes its reasonings in one generate call, whose "
                                      "time on a GPU barely grows with the batch (measured on an "
                                      "H200, SmolLM2-135M shape, 128 new tokens: 10.4 s for 256 "
                                      "sequences, 8.2 s for 1,024), so GPUs want hundreds")
    patience: int = option(8, "validations without a better valid NDCG@10 before stopping "
                              "(0 = never; authors: 8)")
    save_every: int = option(50, "steps between resumable training-state saves")
    seed: int = option(0, "seed of data order and sampling")
    mixed_precision: str = option("no", "'bf16': float32 weights with bfloat16 matmuls (torch "
                                        "autocast; a full fine-tune keeps exact updates), 'no': "
                                        "the model's own dtype")
    gradient_checkpointing: bool = option(False, "recompute each layer's activations in the "
                                                 "backward pass: far less memory for production "
                                                 "backbones, one more forward pass of compute")
    lora: LoraSettings = field(default_factory=LoraSettings, metadata={"help": "LoRA settings"})


def apply_lora(model, s: LoraSettings):
    if not s.enabled:
        return model
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=s.r, lora_alpha=s.alpha, lora_dropout=s.dropout,
                                            target_modules=s.targets, bias="none"))


class ItemTable:
    """H_V for the whole catalogue, L2-normalised and detached; refreshed in full every N steps
    (paper Alg. 1). Rows can be overwritten with fresh, detached encodings of a batch's targets
    (the authors' per-step update). Never put rows that carry gradient into it and take a
    softmax over the mix: a model learns to tell fresh rows from stale ones (measured on the
    small model: the loss collapsed to about ln(batch) within 50 steps)."""

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
    """Scores a batch of samples against H_V: no reasoning (ablation), greedy reasoning, or the
    mean state of `samples` sampled reasonings (test-time scaling)."""

    def __init__(self, r2ec: R2ec, item_states: np.ndarray, reasoning: bool,
                 sampling: SamplingConfig | None = None, samples: int = 1):
        self.r2ec, self.h_v, self.reasoning, self.samples = r2ec, item_states, reasoning, samples
        self.sampling = sampling or SamplingConfig()
        self.generations: list = []  # the first reasoning of each sample, in order

    def __call__(self, batch: pd.DataFrame) -> np.ndarray:
        prompts = self.r2ec.user_prompts(histories(batch), times(batch["target_ts"]))
        h_t, gens = self.r2ec.reasoned_states(prompts, self.reasoning, self.samples,
                                              self.sampling)
        if gens is not None:
            self.generations.extend(g[0] for g in gens)
        return R2ec.score(h_t, self.h_v, self.r2ec.tau)


def evaluate_r2ec(r2ec: R2ec, samples: pd.DataFrame, catalog: Catalog, reasoning: bool,
                  sampling: SamplingConfig | None = None, batch_size: int = 64,
                  item_prompts: Sequence[Sequence[int]] | None = None, progress: bool = False,
                  desc: str = "evaluating", n_samples: int = 1) -> EvalResult:
    """The protocol's evaluation of an R²ec model; `result.generations` holds the reasonings."""
    prompts = item_prompts or r2ec.item_prompts(catalog.ids, catalog.titles, catalog.attributes)
    scorer = R2ecScorer(r2ec, r2ec.encode_items(prompts), reasoning, sampling, n_samples)
    result = evaluate(scorer, samples, catalog, batch_size=batch_size, progress=progress, desc=desc)
    result.generations = scorer.generations
    if reasoning and scorer.generations:
        lengths = [len(g.token_ids) for g in scorer.generations]
        result.metrics["reasoning_tokens_mean"] = float(np.mean(lengths))
    return result


class EpochOrder:
    """A seeded permutation per epoch and a cursor: its state_dict resumes the exact order.
    With several processes (`r2ec.distributed`) every process walks the same permutation and a
    step's global batch of `batch_size * world` is split between them: process `rank` takes the
    rank-th block. Then an epoch ends early rather than hand a process an empty block."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        if world > 1 and n < batch_size * world:
            raise ValueError(f"{n} examples cannot fill one step of {world} processes x "
                             f"{batch_size}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world = rank, world
        self.epoch, self.cursor = 0, 0

    def _perm(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.n)

    def next_batch(self) -> np.ndarray:
        span = self.batch_size * self.world
        if self.cursor >= self.n or (self.world > 1 and self.cursor + span > self.n):
            self.epoch, self.cursor = self.epoch + 1, 0
        start = self.cursor + self.rank * self.batch_size
        idx = self._perm()[start: start + self.batch_size]
        self.cursor += span
        return idx

    @property
    def steps_per_epoch(self) -> int:
        span = self.batch_size * self.world
        return math.ceil(self.n / span) if self.world == 1 else self.n // span

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "n": self.n, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if (state["n"], state["seed"]) != (self.n, self.seed):
            raise ValueError("resume state belongs to other data or another seed")
        self.epoch, self.cursor = state["epoch"], state["cursor"]


@dataclass
class StepCounter(EarlyStopping):
    """Global step, training seconds so far, and the model-selection state (EarlyStopping, the
    rule every trained method shares); part of the resumable state (`r2ec.train_state`)."""

    patience: int = 0
    step: int = 0
    elapsed_s: float = 0.0

    def state_dict(self) -> dict:
        return {"step": self.step, "best": self.best, "evals_since_best": self.since_best,
                "elapsed_s": self.elapsed_s}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.best = int(state["step"]), float(state["best"])
        self.since_best = int(state["evals_since_best"])
        self.elapsed_s = float(state.get("elapsed_s", 0.0))


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


def scheduled_lr(step: int, progress: float, cfg: LoopConfig) -> float:
    """Learning rate at `step`: linear warm-up over `cfg.warmup_steps`, then `cfg.schedule`:
    'constant' (the paper's RecPO) or 'cosine' from `cfg.lr` to `cfg.min_lr` over `progress`
    in [0, 1]. Progress is max(step / total steps, elapsed / time budget) (`run_loop`), so a
    time-boxed run warms up, peaks and anneals fully instead of stopping at a high rate."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / max(1, cfg.warmup_steps)
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule != "cosine":
        raise ValueError(f"unknown schedule {cfg.schedule!r} (cosine, constant)")
    p = min(1.0, max(0.0, progress))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * p))


# One micro-batch: (loss to back-propagate, what the stage wants back after the step).
StepFn = Callable[[int, int], tuple[torch.Tensor, dict]]


def run_loop(r2ec: R2ec, cfg: LoopConfig, *, stage: str, out_dir: Path, steps_per_epoch: int,
             step_fn: StepFn, validate: Callable[[], dict], state: Sequence = (),
             before_step: Callable[[int], None] | None = None,
             after_step: Callable[[int, list[dict]], dict] | None = None,
             validate_first: bool = False, resume: bool = False, progress: bool = True) -> dict:
    """The training loop of both stages, with the settings of `LoopConfig`. Per step:
    `before_step`, `grad_accum` micro-steps of `step_fn` (each loss back-propagated at once),
    clip, optimiser step, `after_step` (which returns scalars to log); every `eval_every` steps
    and at the end, `validate()` -> metrics: the best valid NDCG@10 is saved to out_dir/best,
    `patience` evaluations without a better one stop the run. `validate_first`: the starting
    model is the first "best" (a fine-tuning stage must beat it). `max_minutes` and the
    schedule count training time only (the steps, not validations or saves), so stages that
    validate at different costs get the same budget. Returns the run summary."""
    from accelerate import Accelerator

    from r2ec import distributed

    acc = Accelerator(cpu=r2ec.device.type == "cpu")
    # Autocast here rather than accelerate's mixed_precision: accelerate fixes that once per
    # process, and one process may run stages (or tests) with and without it.
    precision = cfg.mixed_precision
    if precision not in ("no", "bf16"):
        raise ValueError(f"mixed_precision must be 'no' or 'bf16', not {precision!r}")

    def amp():
        return torch.autocast(r2ec.device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    parallel, main = acc.num_processes > 1, acc.is_main_process
    if parallel and not all(isinstance(x, EpochOrder) and x.world == acc.num_processes
                            for x in state if isinstance(x, EpochOrder)):
        raise RuntimeError("the data order is not split between the processes")
    model = r2ec.model
    if cfg.gradient_checkpointing:
        # Non-reentrant checkpointing needs no input that requires grad, so it works under
        # LoRA (frozen embeddings) without peft's enable_input_require_grads hook.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, betas=(0.9, cfg.beta2),
                            weight_decay=cfg.weight_decay)
    counter = StepCounter(patience=cfg.patience)
    if not parallel:
        # Not wrapped in DistributedDataParallel when parallel (see r2ec/distributed.py):
        # gradients are averaged explicitly.
        model, opt = acc.prepare(model, opt)
    stateful = {"counter": counter, **{f"part{i}": x for i, x in enumerate(state)}}
    state_dir = out_dir / "state"
    meta = {"stage": stage, "parent_version": r2ec.model_version, "world": acc.num_processes}

    def save_state() -> None:
        parts = {"model": train_state.trainable_state(model), "optimizer": opt.state_dict(),
                 **{k: x.state_dict() for k, x in stateful.items()}}
        if parallel:
            train_state.save_distributed(state_dir, parts, {**meta, "step": counter.step},
                                         acc.process_index, acc.wait_for_everyone)
        else:
            train_state.save(state_dir, parts, {**meta, "step": counter.step})

    if resume and train_state.state_folder(state_dir) is not None:
        manifest = train_state.verify(state_dir)
        for key, want in meta.items():
            if manifest.get(key) != want:
                raise train_state.StateError(
                    f"{state_dir}: saved with {key} {manifest.get(key)!r}, this run has {want!r}; "
                    "resume with the same starting model and processes, or use another --out")
        train_state.load_trainable(model, train_state.load_part(state_dir, "model"), str(state_dir))
        train_state.restore_optimizer(opt, train_state.load_part(state_dir, "optimizer"),
                                      str(state_dir))
        for key, x in stateful.items():
            x.load_state_dict(train_state.load_part(state_dir, key))
        train_state.set_rng_state(train_state.load_part(state_dir, f"rng-{acc.process_index}"))
        log.info("resumed at step %d (%.1f min trained)", counter.step, counter.elapsed_s / 60)
    total = max(1, int(cfg.epochs * steps_per_epoch / cfg.grad_accum))
    budget = 60.0 * cfg.max_minutes
    metrics_log = MetricsLog(out_dir / "metrics.jsonl") if main else None
    best_metrics: dict = {}
    best_step = [-1]  # the step whose checkpoint is in out_dir/best (0: the starting weights)

    def evaluate_now() -> bool:
        # The main process validates; the others take its result, so all decide alike.
        with amp():
            metrics = validate() if main else None
        if parallel:
            metrics = distributed.from_main(metrics)
        if main:
            metrics_log.write(step=counter.step, split="valid",
                              train_s=round(counter.elapsed_s, 1), **metrics)
        previous = counter.best
        improved, stop = counter.update(metrics["ndcg@10"])
        if improved:
            best_metrics.clear()
            best_metrics.update(metrics)
            best_step[0] = counter.step
        if main:
            log.info("step %d: valid NDCG@10 %.4f (best %.4f)", counter.step, metrics["ndcg@10"],
                     max(previous, 0.0))
        if improved and main:
            r2ec.save(out_dir / "best", stage=stage, extra={
                f"{stage}_config": asdict(cfg), "step": counter.step,
                "valid_ndcg@10": metrics["ndcg@10"]})
        acc.wait_for_everyone()
        return stop

    if validate_first and counter.best < 0:
        evaluate_now()
    stopped = "steps"
    bar = progress_bar(total, stage, disable=not (progress and main), initial=counter.step)
    while counter.step < total and not (cfg.max_steps and counter.step >= cfg.max_steps):
        step = counter.step
        started = time.time()
        frac = max(step / total, counter.elapsed_s / budget if budget else 0.0)
        for g in opt.param_groups:
            g["lr"] = scheduled_lr(step, frac, cfg)
        with amp():
            if before_step:
                before_step(step)
        model.train()
        opt.zero_grad()
        infos = []
        for micro in range(cfg.grad_accum):
            with amp():
                loss, info = step_fn(step, micro)
            acc.backward(loss / cfg.grad_accum)
            infos.append({"loss": loss.item(), **info})
        if parallel:
            distributed.average_gradients(trainable)
        acc.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        logged = after_step(step, infos) if after_step else {}
        if r2ec.device.type == "cuda":
            torch.cuda.synchronize()  # the step's kernels are done: its time is its own
        counter.step += 1
        counter.elapsed_s += time.time() - started  # training time: validations not counted
        if parallel:  # the main process's clock decides the time budget for all
            counter.elapsed_s = distributed.from_main(counter.elapsed_s)
        bar.update(1)
        loss_mean = sum(i["loss"] for i in infos) / len(infos)
        bar.set_postfix(loss=f"{loss_mean:.3f}", refresh=False)
        scalars = {k: v for i in infos for k, v in i.items() if isinstance(v, (int, float))}
        if main:
            metrics_log.write(step=counter.step, lr=opt.param_groups[0]["lr"],
                              progress=round(frac, 4), train_s=round(counter.elapsed_s, 3),
                              **scalars, **logged)
        over_time = budget and counter.elapsed_s > budget
        last = counter.step == total or over_time or counter.step == cfg.max_steps
        if (counter.step % cfg.eval_every == 0 or last) and evaluate_now():
            stopped = "early stopping"
            break
        if counter.step % cfg.save_every == 0:
            save_state()
        if over_time:
            stopped = "time budget"
            break
    bar.close()
    save_state()
    acc.wait_for_everyone()
    return {"steps": counter.step, "best_valid_ndcg@10": counter.best, "stopped_by": stopped,
            "minutes": counter.elapsed_s / 60, "best_dir": str(out_dir / "best"),
            "best_valid_metrics": best_metrics, "best_step": best_step[0]}
