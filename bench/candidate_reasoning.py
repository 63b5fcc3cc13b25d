"""Does a reasoning that names the model's own candidates help h_T? An experiment, not a stage.

    .venv/bin/python bench/candidate_reasoning.py --model models/work/warmstart/best \
        --warehouse warehouse --variant candidates --minutes 8 --out artifacts/cand/r1

The hypothesis: a small model's reasoning is a function of the prompt, so it can only help h_T as
extra computation. The most useful extra computation for a recommender is a second look: write
the k items the recommendation head ranks first ("Candidates: <i50> <i181> <i100>"), then read
h_T after them, a re-ranking pass that can attend to those items' token embeddings.

Training continues from a warm start for `--minutes` of training steps, packed like the warm
start (`r2ec.warmstart`: exact readouts after every history line, the whole catalogue encoded
with gradient). Variant `plain` trains the no-reasoning readouts only (the control). Variant
`candidates` first reads every no-reasoning state without gradient, takes its top-k items (the
history window masked, as evaluation masks it), and then trains both readouts: the plain one and
one whose block carries "Candidates:" and those k item tokens, with an LM loss on them so the
language head learns to write them. One step costs about twice a plain step.

Evaluation on a fixed, seeded valid subset: NDCG@10 with no reasoning (`none`), with the
recommendation head's own top-k written in (`rec_candidates`: the format at its best, no
language head involved), with the language head's greedy reasoning (`lm_reasoning`), and the
share of the top-k that the greedy reasoning names (`lm_names_top_k`). Two diagnostics say how
much the written items move h_T at all: k random items (`random_candidates`), and the top k-1
with the target written last (`target_written`: a leak that inference never has, so the most
any candidate list could do).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from deltalake import DeltaTable

from r2ec.config import SamplingConfig
from r2ec.data import Catalog, histories, times
from r2ec.metrics import ndcg_per_sample, target_ranks
from r2ec.model import R2ec
from r2ec.packing import Readout, Window, pack, packed_hidden
from r2ec.prompts import item_token
from r2ec.training import EpochOrder
from r2ec.warmstart import (
    UserWindow,
    catalogue_softmax_loss,
    encode_items_with_grad,
    lm_loss,
    user_windows,
)

HEAD = "Candidates:"
WINDOW = 20  # history lines in a prompt, and the masked history window


def plain_windows(r2ec: R2ec, batch: Sequence[UserWindow]) -> list[Window]:
    """Packed windows with a no-reasoning readout after every counted line."""
    out = []
    for w in batch:
        lines = [r2ec.line_ids(e, w.events[i - 1].ts if i else None)
                 for i, e in enumerate(w.events[: w.counted.stop - 1])]
        readouts = [Readout(j, r2ec.readout_ids(w.events[j - 1].ts, w.events[j].ts)
                            + [r2ec.answer_id], w.rows[j]) for j in w.counted]
        out.append(Window(r2ec.prefix_ids(), lines, readouts))
    return out


def top_candidates(users: torch.Tensor, items: torch.Tensor, masked: Sequence[Sequence[int]],
                   k: int, tau: float) -> list[list[int]]:
    """The k best catalogue rows of each user state, its masked rows excluded."""
    scores = R2ec.score(users.float(), items.float(), tau)
    for i, rows in enumerate(masked):
        scores[i, list(rows)] = -float("inf")
    return scores.topk(k, dim=-1).indices.tolist()


def add_candidate_readouts(windows: Sequence[Window], candidates: Sequence[Sequence[int]],
                           head_ids: Sequence[int], token_of_row: Sequence[int],
                           answer_id: int) -> None:
    """After each plain readout, a second one whose block writes the candidates before
    <answer>, with the LM loss on them; `candidates` are in the plain readouts' order."""
    c = 0
    for win in windows:
        extra = []
        for r in win.readouts:
            block = list(r.block[:-1])
            reasoning = list(head_ids) + [token_of_row[x] for x in candidates[c]]
            extra.append(Readout(r.after_line, block + reasoning + [answer_id], r.target,
                                 len(block)))
            c += 1
        win.readouts.extend(extra)


def train(r2ec: R2ec, catalog: Catalog, train_samples: pd.DataFrame, a: argparse.Namespace,
          head_ids: list[int], token_of_row: list[int]) -> int:
    """Continue training for `a.minutes` of step time; returns the number of steps."""
    model, pad = r2ec.model, r2ec.tokenizer.pad_token_id
    item_prompts = r2ec.item_prompts(catalog.ids, catalog.titles, catalog.attributes)
    windows = user_windows(train_samples, catalog, WINDOW, WINDOW // 2)
    order = EpochOrder(len(windows), a.windows_per_step, 0)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.01, betas=(0.9, 0.98))
    budget, spent, step = a.minutes * 60, 0.0, 0
    with open(f"{a.out}.steps.jsonl", "w") as log:
        while spent < budget:
            t0 = time.time()
            # warm-up, then a cosine over the share of the time budget spent
            lr = a.lr * min(1.0, (step + 1) / 20) * 0.5 * (1 + math.cos(math.pi * spent / budget))
            for g in opt.param_groups:
                g["lr"] = lr
            batch = [windows[i] for i in order.next_batch()]
            packed_windows = plain_windows(r2ec, batch)
            items = encode_items_with_grad(model, item_prompts, list(range(len(catalog))), pad,
                                           r2ec.device)
            if a.variant == "candidates":
                with torch.no_grad():
                    p0 = pack(packed_windows, pad)
                    users0 = packed_hidden(model, p0)[p0.readout_rows, p0.readout_pos]
                masked = [w.rows[max(0, j - WINDOW): j] for w in batch for j in w.counted]
                cands = top_candidates(users0, items.detach(), masked, a.k, r2ec.tau)
                add_candidate_readouts(packed_windows, cands, head_ids, token_of_row,
                                       r2ec.answer_id)
            p = pack(packed_windows, pad)
            hidden = packed_hidden(model, p)
            users = hidden[p.readout_rows, p.readout_pos]
            loss = catalogue_softmax_loss(users, items, p.targets, r2ec.tau)
            info = {"step": step, "loss_items": round(loss.item(), 4), "lr": lr}
            if len(p.lm_labels):
                head = model.get_output_embeddings()
                lm = lm_loss(head(hidden[p.lm_rows, p.lm_pos]), p.lm_labels)
                loss = loss + 0.5 * lm
                info["loss_lm"] = round(lm.item(), 4)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            spent += time.time() - t0
            log.write(json.dumps({**info, "train_s": round(spent, 1)}) + "\n")
            if step % 20 == 0:
                print(info, flush=True)
    return step


@torch.no_grad()
def evaluate(r2ec: R2ec, samples: pd.DataFrame, catalog: Catalog, head_ids: list[int],
             token_of_row: list[int], k: int, batch_size: int = 128) -> dict:
    """NDCG@10 of the four read-outs (module docstring) on `samples`, and one greedy reasoning."""
    h_v = r2ec.encode_items(r2ec.item_prompts(catalog.ids, catalog.titles, catalog.attributes))
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=k + len(head_ids) + 2)
    row_of_token = {t: i for i, t in enumerate(token_of_row)}
    rng = np.random.default_rng(0)
    ranks: dict[str, list[np.ndarray]] = {"none": [], "rec_candidates": [], "random_candidates": [],
                                          "target_written": [], "lm_reasoning": []}
    named, example = [], ""
    for start in range(0, len(samples), batch_size):
        b = samples.iloc[start: start + batch_size]
        prompts = r2ec.user_prompts(histories(b), times(b["target_ts"]))
        hist = [catalog.rows(ids) for ids in b["history_item_ids"]]
        targets = [catalog.row[t] for t in b["target_item_id"]]
        scores = [np.asarray(R2ec.score(r2ec.user_state(prompts, None), h_v, r2ec.tau),
                             np.float64)]
        top = np.argsort(-np.where(_mask(len(catalog), hist), -np.inf, scores[0]), axis=1)[:, :k]
        written = [head_ids + [token_of_row[x] for x in row] for row in top]
        scores.append(np.asarray(R2ec.score(r2ec.user_state(prompts, written), h_v, r2ec.tau)))
        # How much the channel moves h_T at all: k random items, and the top-k with the target
        # written last (a leak, never available at inference: the most a candidate can do).
        rand = [head_ids + [token_of_row[x] for x in rng.choice(len(catalog), k, replace=False)]
                for _ in top]
        scores.append(np.asarray(R2ec.score(r2ec.user_state(prompts, rand), h_v, r2ec.tau)))
        leak = [head_ids + [token_of_row[x] for x in row[:-1] if x != t] + [token_of_row[t]]
                for row, t in zip(top, targets, strict=True)]
        scores.append(np.asarray(R2ec.score(r2ec.user_state(prompts, leak), h_v, r2ec.tau)))
        gens = [g[0].token_ids for g in r2ec.reason(prompts, 1, greedy)]
        scores.append(np.asarray(R2ec.score(r2ec.user_state(prompts, gens), h_v, r2ec.tau)))
        for key, s in zip(ranks, scores, strict=True):
            ranks[key].append(target_ranks(s, targets, hist))
        for toks, row in zip(gens, top, strict=True):
            picked = {row_of_token[t] for t in toks if t in row_of_token}
            named.append(len(picked & set(row.tolist())) / k)
        example = example or r2ec.tokenizer.decode(gens[0])
    out = {key: float(ndcg_per_sample(np.concatenate(v), 10).mean()) for key, v in ranks.items()}
    return {**out, "lm_names_top_k": float(np.mean(named)), "example_reasoning": example,
            "samples": len(samples)}


def _mask(n: int, hist: Sequence[Sequence[int]]) -> np.ndarray:
    m = np.zeros((len(hist), n), dtype=bool)
    for i, rows in enumerate(hist):
        m[i, list(rows)] = True
    return m


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models/work/warmstart/best", help="start checkpoint")
    p.add_argument("--warehouse", default="warehouse", help="items + training_samples tables")
    p.add_argument("--variant", choices=["plain", "candidates"], default="candidates")
    p.add_argument("--minutes", type=float, default=8.0, help="training-step minutes (0: none)")
    p.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (cosine to 0)")
    p.add_argument("--k", type=int, default=3, help="candidates written")
    p.add_argument("--windows-per-step", type=int, default=96)
    p.add_argument("--valid", type=int, default=3000, help="seeded valid subset (0: all)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", required=True, help="path prefix of the logs, result and model")
    a = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(a.threads)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    items = DeltaTable(f"{a.warehouse}/items").to_pandas()
    s = DeltaTable(f"{a.warehouse}/training_samples").to_pandas().sort_values("sample_id")
    catalog = Catalog.from_frame(items)
    train_s = s[s["split"] == "train"].reset_index(drop=True)
    valid = s[s["split"] == "valid"].reset_index(drop=True)
    if a.valid and a.valid < len(valid):
        valid = valid.sample(n=a.valid, random_state=0).reset_index(drop=True)
    r2ec = R2ec.load(a.model)
    token_of_row = [r2ec.encode(item_token(i)) for i in catalog.ids]
    if any(len(t) != 1 for t in token_of_row):
        raise SystemExit("this experiment needs a model with one token per item (<i…>)")
    token_of_row = [t[0] for t in token_of_row]
    head_ids = r2ec.encode(HEAD)
    steps = train(r2ec, catalog, train_s, a, head_ids, token_of_row) if a.minutes > 0 else 0
    r2ec.model.eval()
    res = {**evaluate(r2ec, valid, catalog, head_ids, token_of_row, a.k),
           "variant": a.variant, "steps": steps, "minutes": a.minutes, "lr": a.lr, "k": a.k,
           "start": a.model}
    print(json.dumps(res), flush=True)
    Path(f"{a.out}.json").write_text(json.dumps(res, indent=2))
    if steps:
        r2ec.save(f"{a.out}.model", stage="candidate-reasoning-experiment")


if __name__ == "__main__":
    main()
