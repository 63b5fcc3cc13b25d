"""The warm start's training loop (stage 0): packed user windows, the catalogue softmax with
item states encoded with gradient, the optional taught reasoning with its LM loss; what it
optimises is `r2ec.warmstart` (config, windows, losses), the loop skeleton `r2ec.training`.

    bin/r2ec-submit jobs/train.py --stage warmstart --model models/work/init --out models/ws
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from r2ec import distributed
from r2ec.data import Catalog
from r2ec.model import R2ec
from r2ec.packing import Readout, Window, pack, packed_hidden
from r2ec.reasoning import Teacher, cooccurrence, item_tags, reasoning_text
from r2ec.training import EpochOrder, apply_lora, evaluate_r2ec, run_loop
from r2ec.warmstart import (
    UserWindow,
    WarmStartConfig,
    catalogue_softmax_loss,
    encode_items_with_grad,
    lm_loss,
    user_windows,
)

log = logging.getLogger(__name__)


def train(r2ec: R2ec, catalog: Catalog, train_samples: pd.DataFrame, valid_samples: pd.DataFrame,
          cfg: WarmStartConfig, out_dir, resume: bool = False, progress: bool = True) -> dict:
    """Train in place; the best model by valid NDCG@10 is saved in `out_dir/best`."""
    from accelerate.utils import set_seed

    out_dir = Path(out_dir)
    set_seed(cfg.seed)
    r2ec.set_model(apply_lora(r2ec.model, cfg.lora))
    model = r2ec.model
    windows = user_windows(train_samples, catalog, cfg.window, cfg.stride)
    n_targets = sum(len(w.counted) for w in windows)
    log.info("%d packed windows carry %d train targets", len(windows), n_targets)
    order = EpochOrder(len(windows), cfg.windows_per_step, cfg.seed, *distributed.world())
    item_prompts = r2ec.item_prompts(catalog.ids, catalog.titles, catalog.attributes)
    pad, device = r2ec.tokenizer.pad_token_id, r2ec.device
    tags = [item_tags(a) for a in catalog.attributes]
    teacher = None
    if cfg.reasoning_share > 0:
        hist_rows = [catalog.rows(h) for h in train_samples["history_item_ids"]]
        tgt_rows = [catalog.row[t] for t in train_samples["target_item_id"]]
        teacher = Teacher(tags, cooccurrence(hist_rows, tgt_rows, len(catalog)),
                          cfg.reasoning_genres, cfg.reasoning_items)
    reasoning_eval = cfg.eval_reasoning and cfg.reasoning_share > 0
    subset = valid_samples if not cfg.eval_samples or cfg.eval_samples >= len(valid_samples) \
        else valid_samples.sample(n=cfg.eval_samples, random_state=cfg.seed)

    def build(w: UserWindow, rng: np.random.Generator) -> Window:
        lines = [r2ec.line_ids(e, w.events[i - 1].ts if i else None)
                 for i, e in enumerate(w.events[: w.counted.stop - 1])]
        readouts = []
        for j in w.counted:
            block = r2ec.readout_ids(w.events[j - 1].ts, w.events[j].ts)
            lm_from = -1
            if teacher is not None and rng.random() < cfg.reasoning_share:
                hist, rows = w.events[max(0, j - cfg.window): j], w.rows[max(0, j - cfg.window): j]
                pos = teacher.pick_items(hist, rows, w.rows[j])
                text = reasoning_text(teacher.pick_tags(rows, w.rows[j]),
                                      sorted(len(hist) - p for p in pos))
                lm_from = len(block)
                block = block + r2ec.encode(text)
            readouts.append(Readout(j, block + [r2ec.answer_id], w.rows[j], lm_from))
        return Window(r2ec.prefix_ids(), lines, readouts)

    def step_fn(step: int, micro: int) -> tuple[torch.Tensor, dict]:
        rng = np.random.default_rng([cfg.seed, step, micro])  # replays exactly on resume
        batch = [build(windows[i], rng) for i in order.next_batch()]
        p = pack(batch, pad, device)
        hidden = packed_hidden(model, p)
        keep = p.targets >= 0
        users = hidden[p.readout_rows[keep], p.readout_pos[keep]]
        targets = p.targets[keep]
        if cfg.item_sample and cfg.item_sample < len(catalog):
            uniq = torch.unique(targets).tolist()
            taken = set(uniq)
            others = [r for r in rng.permutation(len(catalog)).tolist() if r not in taken]
            extra = others[: max(0, cfg.item_sample - len(uniq))]
            rows = uniq + extra
            lookup = torch.full((len(catalog),), -1, dtype=torch.long, device=device)
            lookup[torch.tensor(rows, device=device)] = torch.arange(len(rows), device=device)
            targets = lookup[targets]
        else:
            rows = list(range(len(catalog)))
        items = encode_items_with_grad(model, item_prompts, rows, pad, device)
        loss = catalogue_softmax_loss(users, items, targets, r2ec.tau)
        info = {"loss_items": loss.item(), "readouts": int(keep.sum())}
        if len(p.lm_labels) and cfg.lm_loss_weight:
            head = r2ec.model.get_output_embeddings()
            lm = lm_loss(head(hidden[p.lm_rows, p.lm_pos]), p.lm_labels)
            loss = loss + cfg.lm_loss_weight * lm
            info["loss_lm"] = lm.item()
        return loss, info

    def validate() -> dict:
        res = evaluate_r2ec(r2ec, subset, catalog, reasoning_eval, cfg.eval_sampling,
                            batch_size=cfg.eval_batch_size, item_prompts=item_prompts)
        return res.metrics

    steps_per_epoch = max(1, round(len(windows) / (cfg.windows_per_step * order.world)))
    return run_loop(r2ec, cfg, stage="warmstart", out_dir=out_dir, steps_per_epoch=steps_per_epoch,
                    step_fn=step_fn, validate=validate, state=[order], resume=resume,
                    progress=progress)
