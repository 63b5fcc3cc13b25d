"""The GPU check: one script, one table. What a production-shaped R²ec costs on one GPU, measured
through the project's own training stages and scoring path, plus the default model's scoring.

    python bench/gpu_check.py                          # on a GPU: Qwen2.5-1.5B shape, bf16, LoRA
    python bench/gpu_check.py --device cpu --tiny      # the same path, tiny shape (CI runs this)
    python bench/gpu_check.py --shape gemma-2-2b       # Gemma-2-2B's shape instead

Rows: warm-start samples/s (`r2ec.warmstart_trainer.train`, packed readouts, sampled item softmax);
RecPO seconds per step (`r2ec.recpo_trainer.train`, G = 4, transformers rollouts); scoring
seconds per user (greedy reasoning of exactly `--reasoning-tokens` tokens + h_T + catalogue
scores + top-10) at batch 1 / 32 / 128; the same with vLLM when it is installed (skipped, and
said, where it is not); the default model's scoring users/s (`--default-model`, skipped if absent).

The production-shaped model is random-initialised from a config (no hub, no download), with
Qwen2.5-1.5B's layer sizes and vocabulary size; its tokenizer is a plain byte-level BPE trained
here on the prompts (no item-id tokens or template fragments, as a production backbone has
none), so prompt lengths resemble a production tokenizer's; the table gives them. Histories come
from MovieLens-100k's atomic files (`--data`) or, with `--data synthetic` or where the folder is
absent, from a seeded synthetic catalogue of the same size. Runs from a bare checkout with
torch, transformers, peft, accelerate, tokenizers, pandas and numpy (no Spark, Delta or FAISS):
the top-k is a torch top-k over the exact catalogue scores, which is what the FAISS flat index
computes. Exits 1 if any row failed, after printing the table.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import math
import sys
import tempfile
import time
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parent.parent
if importlib.util.find_spec("r2ec") is None:  # a bare checkout: use the engine from the tree
    sys.path.insert(0, str(ROOT))

from r2ec import recpo, recpo_trainer, warmstart, warmstart_trainer  # noqa: E402
from r2ec.config import PromptConfig, SamplingConfig  # noqa: E402
from r2ec.data import Catalog, histories  # noqa: E402
from r2ec.model import R2ec  # noqa: E402
from r2ec.prompts import Prompter  # noqa: E402
from r2ec.tokenizer import train_tokenizer  # noqa: E402
from r2ec.training import LoraSettings  # noqa: E402

# The published configs of Qwen2.5-1.5B and Gemma-2-2B (layer sizes only; the weights here are
# random). Gemma-2 adds logit soft-capping and alternating sliding-window (4,096) layers.
GEMMA2 = dict(family="gemma2", sliding_window=4096, attn_logit_softcapping=50.0,
              final_logit_softcapping=30.0)
SHAPES = {
    "qwen2.5-1.5b": dict(family="qwen2", hidden_size=1536, intermediate_size=8960,
                         num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                         head_dim=128, vocab_size=151936, rope_theta=1e6),
    "gemma-2-2b": dict(GEMMA2, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                       num_attention_heads=8, num_key_value_heads=4, head_dim=256,
                       query_pre_attn_scalar=256, vocab_size=256000),
    "tiny": dict(family="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=2, num_key_value_heads=1, head_dim=32, vocab_size=0,
                 rope_theta=1e4),
    "tiny-gemma2": dict(GEMMA2, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                        query_pre_attn_scalar=32, vocab_size=0),
}
GENRES = ["Action", "Adventure", "Animation", "Comedy", "Crime", "Drama", "Fantasy", "Horror",
          "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"]


# -- data ------------------------------------------------------------------------------------
def movielens(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(items, events) from RecBole's ml-100k atomic files."""
    def read(path: Path) -> pd.DataFrame:
        df = pd.read_csv(path, sep="\t", dtype=str, encoding="latin-1", keep_default_na=False)
        return df.rename(columns=lambda c: c.split(":")[0])
    it = read(folder / "ml-100k.item")
    items = pd.DataFrame({
        "item_id": it["item_id"],
        "title": [f"{t} ({y})" if y else t
                  for t, y in zip(it["movie_title"], it["release_year"], strict=True)],
        "attributes": [{"genres": g, "year": y}
                       for g, y in zip(it["class"], it["release_year"], strict=True)]})
    ev = read(folder / "ml-100k.inter")
    events = pd.DataFrame({"user_id": ev["user_id"], "item_id": ev["item_id"],
                           "rating": ev["rating"].astype(float),
                           "ts": ev["timestamp"].astype(float).astype("int64")})
    return items, events


def synthetic(n_items: int = 1682, n_users: int = 943, seed: int = 0
              ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A seeded catalogue and event log of MovieLens-100k's size and shape."""
    rng = np.random.default_rng(seed)
    ids = [str(i) for i in range(1, n_items + 1)]
    items = pd.DataFrame({
        "item_id": ids,
        "title": [f"Film number {i} ({1930 + i % 90})" for i in range(1, n_items + 1)],
        "attributes": [{"genres": " ".join(rng.choice(GENRES, size=rng.integers(1, 4),
                                                       replace=False)), "year": str(1930 + i % 90)}
                       for i in range(1, n_items + 1)]})
    popularity = rng.zipf(1.3, n_items).astype(float)
    popularity /= popularity.sum()
    rows = []
    for u in range(1, n_users + 1):
        n = int(rng.integers(20, 200))
        picked = rng.choice(n_items, size=n, replace=False, p=popularity)
        start = 875_000_000 + int(rng.integers(0, 10_000_000))
        ts = start + np.cumsum(rng.integers(60, 5 * 86400, size=n))
        rows += [(str(u), ids[i], float(rng.integers(1, 6)), int(t)) for i, t in zip(picked, ts, strict=True)]
    return items, pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "ts"])


def samples_from(events: pd.DataFrame, items: pd.DataFrame, users: int, window: int = 20,
                 last_only: bool = False) -> pd.DataFrame:
    """training_samples-shaped rows: each event of the first `users` users (or only each
    user's last) as a target, the `window` events before it as the history."""
    title = dict(zip(items["item_id"], items["title"], strict=True))
    ev = events.sort_values(["user_id", "ts"], kind="stable")
    out = []
    for uid, g in list(ev.groupby("user_id", sort=False))[:users]:
        ids, rs = list(g["item_id"]), list(g["rating"])
        ts = [datetime(1970, 1, 1) + timedelta(seconds=int(t)) for t in g["ts"]]
        for p in ([len(ids) - 1] if last_only else range(1, len(ids))):
            lo = max(0, p - window)
            out.append(dict(sample_id=len(out), user_id=uid, position=p,
                            history_item_ids=ids[lo:p], history_titles=[title[i] for i in ids[lo:p]],
                            history_ratings=rs[lo:p], history_ts=ts[lo:p], target_item_id=ids[p],
                            target_rating=rs[p], target_ts=ts[p]))
    return pd.DataFrame(out)


# -- models ----------------------------------------------------------------------------------
def bench_tokenizer(catalog: Catalog, samples: pd.DataFrame, prompt: PromptConfig):
    """A plain byte-level BPE trained on the item and user prompts (4,000 of them at most)."""
    plain = Prompter(prompt)
    corpus = [plain.item_content(i, t, a)
              for i, t, a in zip(catalog.ids, catalog.titles, catalog.attributes, strict=True)]
    pick = samples.head(4000)
    corpus += [plain.user_content(h, r) for h, r in zip(histories(pick), pick["target_ts"], strict=True)]
    return train_tokenizer(corpus, vocab_size=8000)


def random_model(tok, shape: str, device: torch.device, dtype: torch.dtype):
    from transformers import Gemma2Config, Gemma2ForCausalLM, Qwen2Config, Qwen2ForCausalLM

    s = dict(SHAPES[shape])
    family = s.pop("family")
    s["vocab_size"] = max(s["vocab_size"], len(tok))
    ids = dict(tie_word_embeddings=True, pad_token_id=tok.pad_token_id,
               bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    if family == "gemma2":
        cfg, cls = Gemma2Config(**s, **ids, max_position_embeddings=8192), Gemma2ForCausalLM
        # eager: the attention that applies Gemma-2's soft-capping (as its model card advises)
        cfg._attn_implementation = "eager"
    else:
        cfg = Qwen2Config(**s, **ids, max_position_embeddings=32768, use_sliding_window=False)
        cls = Qwen2ForCausalLM
    torch.manual_seed(0)
    with torch.device(device):  # initialised where it runs: no 6 GB float32 copy on the host
        model = cls(cfg)
    return model.to(dtype)


# -- measurements ----------------------------------------------------------------------------
class Table:
    def __init__(self, device: torch.device):
        self.device, self.rows, self.failed = device, [], False

    @contextlib.contextmanager
    def section(self, what: str, setting: str):
        """One or more rows; a failure becomes a row saying so, and the run goes on."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        try:
            yield
        except Exception as e:  # noqa: BLE001 - reported in the table, exit status 1
            self.failed = True
            self.add(what, setting, float("nan"), "", f"FAILED: {type(e).__name__}: {e}"[:200])

    def add(self, what: str, setting: str, value: float, unit: str, note: str = "") -> None:
        peak = (torch.cuda.max_memory_allocated() / 2**30 if self.device.type == "cuda"
                else float("nan"))
        row = dict(what=what, setting=setting, value=value, unit=unit, peak_gib=peak, note=note)
        self.rows.append(row)
        print(json.dumps(row), flush=True)

    def markdown(self) -> str:
        lines = ["| what | setting | value | unit | peak GPU GiB | note |",
                 "|---|---|---:|---|---:|---|"]
        for r in self.rows:
            value = "" if math.isnan(r["value"]) else f"{r['value']:.4g}"
            peak = "" if math.isnan(r["peak_gib"]) else f"{r['peak_gib']:.1f}"
            lines.append(f"| {r['what']} | {r['setting']} | {value} | {r['unit']} | {peak} | "
                         f"{r['note']} |")
        return "\n".join(lines)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_log(out_dir: Path) -> list[dict]:
    lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "lr" in r]  # training steps, not validations


def steady(steps: list[dict]) -> tuple[float, list[dict]]:
    """Seconds of the steps after the first (which pays for kernel selection and caches)."""
    if len(steps) < 2:
        raise RuntimeError("need at least 2 training steps to time")
    return steps[-1]["train_s"] - steps[0]["train_s"], steps[1:]


def score_users(r2ec: R2ec, hists, refs, h_v: torch.Tensor, batch: int,
                sampling: SamplingConfig) -> tuple[float, float]:
    """(seconds, mean reasoning tokens) for reasoning + h_T + scores + top-10 of these users."""
    r2ec.backend.batch_size = batch
    prompts = r2ec.user_prompts(hists, refs)
    r2ec.reasoned_states(prompts[:batch], True, 1, sampling)  # warm-up at this batch size
    sync(r2ec.device)
    t = time.perf_counter()
    h, gens = r2ec.reasoned_states(prompts, True, 1, sampling)
    R2ec.score(torch.from_numpy(h).to(h_v.device), h_v, r2ec.tau).topk(10, dim=1)
    sync(r2ec.device)
    return time.perf_counter() - t, float(np.mean([len(g[0].token_ids) for g in gens]))


def main() -> None:  # noqa: C901 - one measurement after another, in the table's order
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda or cpu")
    p.add_argument("--tiny", action="store_true", help="a tiny shape and few users (CI)")
    p.add_argument("--shape", default="qwen2.5-1.5b", choices=sorted(SHAPES))
    p.add_argument("--data", default=str(ROOT / "data/raw/ml-100k"),
                   help="folder with ml-100k.inter/.item, or 'synthetic'")
    p.add_argument("--default-model", default=str(ROOT / "models/default"))
    p.add_argument("--reasoning-tokens", type=int, default=32,
                   help="reasoning length of the scoring rows (forced: no early stop)")
    p.add_argument("--batches", default="1,32,128", help="scoring batch sizes")
    p.add_argument("--warmstart-steps", type=int, default=8)
    p.add_argument("--recpo-steps", type=int, default=5)
    p.add_argument("--dtype", default="", help="bfloat16 or float32 (default: bfloat16 on "
                   "CUDA, float32 on the CPU)")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--json", default="", help="also write the rows here (JSON)")
    a = p.parse_args()
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; `--device cpu --tiny` runs the same path on the CPU")
    shape = ("tiny-gemma2" if a.shape.startswith("gemma") else "tiny") if a.tiny else a.shape
    dtype = getattr(torch, a.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}, shape {shape}, {dtype}", flush=True)
    t0 = time.perf_counter()

    data = Path(a.data)
    if a.data != "synthetic" and (data / "ml-100k.inter").is_file():
        items, events, source = *movielens(data), "MovieLens-100k"
    else:
        items, events, source = *synthetic(), "synthetic (MovieLens-100k-sized)"
    n_train, n_score = (24, 16) if a.tiny else (256, 943)
    catalog = Catalog.from_frame(items)
    train = samples_from(events, items, n_train)
    valid = samples_from(events, items, 8 if a.tiny else 32, last_only=True)
    last = samples_from(events, items, n_score, last_only=True)
    hists = histories(last)
    refs = [t + timedelta(days=1) for t in last["target_ts"]]
    prompt = PromptConfig(item_id_tokens=False)
    tok = bench_tokenizer(catalog, train, prompt)
    model = random_model(tok, shape, device, dtype)
    r2ec = R2ec(model, tok, prompt, device=device, batch_size=32, base_model=f"random-{shape}")
    n_params = sum(x.numel() for x in model.parameters())
    lens = [len(x) for x in r2ec.user_prompts(hists, refs)]
    print(f"data {source}: {len(catalog)} items, {len(train)} train samples; model "
          f"{n_params / 1e9:.2f}B parameters; user prompts {np.mean(lens):.0f} tokens (mean)",
          flush=True)
    lora = LoraSettings(enabled=True)  # the paper's recipe: r = 4 on every projection
    table = Table(device)
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))

    def unwrap() -> None:  # LoRA removed after each stage (weights are random: no merge)
        if hasattr(r2ec.model, "unload"):
            r2ec.set_model(r2ec.model.unload())
        r2ec.model.gradient_checkpointing_disable()

    def train_stage(stage, cfg, out: Path) -> tuple[float, list[dict], str]:
        """Run a real training stage; on running out of GPU memory, once more with gradient
        checkpointing (the table says so)."""
        note = "gradient checkpointing" if cfg.gradient_checkpointing else ""
        try:
            stage.train(r2ec, catalog, train, valid, cfg, out, progress=False)
            out_of_memory = False
        except torch.OutOfMemoryError:
            if cfg.gradient_checkpointing:
                raise
            out_of_memory = True  # retried below, once the traceback's tensors are freed
        finally:
            unwrap()
        if out_of_memory:
            gc.collect()
            torch.cuda.empty_cache()
            out, note = out.with_name(out.name + "_gc"), "out of memory without gradient " \
                "checkpointing; with it"
            try:
                stage.train(r2ec, catalog, train, valid,
                            replace(cfg, gradient_checkpointing=True), out, progress=False)
            finally:
                unwrap()
        return *steady(step_log(out)), note

    with table.section("warm start", "LoRA r=4"):
        cfg = warmstart.WarmStartConfig(
            max_steps=a.warmstart_steps, windows_per_step=4 if a.tiny else 8,
            item_sample=64 if a.tiny else 256, warmup_steps=1, eval_every=10**9,
            save_every=10**9, patience=0, lora=lora,
            gradient_checkpointing=a.gradient_checkpointing)
        seconds, steps, note = train_stage(warmstart_trainer, cfg, work / "ws")
        readouts = sum(s["readouts"] for s in steps)
        table.add("warm start", f"LoRA r=4, {cfg.windows_per_step} windows + {cfg.item_sample} "
                  "items with gradient per step", readouts / seconds, "samples/s",
                  f"{readouts / len(steps):.0f} readouts/step, {seconds / len(steps):.2f} s/step"
                  + (f"; {note}" if note else ""))

    with table.section("RecPO step", "LoRA r=4, G=4"):
        cfg = recpo.RecPOConfig(
            max_steps=a.recpo_steps, users_per_step=4 if a.tiny else 8, group_size=4,
            max_new_tokens=a.reasoning_tokens, warmup_steps=1, eval_every=10**9,
            save_every=10**9, refresh_every=10**9, patience=0, lora=lora,
            gradient_checkpointing=a.gradient_checkpointing)
        seconds, steps, note = train_stage(recpo_trainer, cfg, work / "recpo")
        table.add("RecPO step", f"LoRA r=4, {cfg.users_per_step} users x G=4, rollouts of <= "
                  f"{cfg.max_new_tokens} tokens", seconds / len(steps), "s/step",
                  f"mean rollout {np.mean([s['reasoning_len'] for s in steps]):.1f} tokens"
                  + (f"; {note}" if note else ""))

    forced = SamplingConfig(max_new_tokens=a.reasoning_tokens, min_new_tokens=a.reasoning_tokens)
    h_v = torch.from_numpy(r2ec.encode_items(
        r2ec.item_prompts(catalog.ids, catalog.titles, catalog.attributes))).to(device)
    for batch in [int(b) for b in a.batches.split(",")]:
        with table.section("scoring, transformers", f"batch {batch}"):
            users = min(len(hists), max(2 * batch, 8 if batch == 1 else 0))
            sec, toks = score_users(r2ec, hists[:users], refs[:users], h_v, batch, forced)
            table.add("scoring, transformers", f"batch {batch}, {users} users", sec / users,
                      "s/user", f"{toks:.0f}-token reasoning, {users / sec:.1f} users/s")

    with table.section("scoring, vLLM", "batch 128"):
        if importlib.util.find_spec("vllm") is None:
            table.add("scoring, vLLM", "-", float("nan"), "", "skipped: vllm is not installed here")
        else:
            r2ec.save(work / "served", stage="gpu_check")
            served = R2ec.load(work / "served", device=str(device), backend="vllm", batch_size=128)
            users = min(len(hists), 256)
            sec, toks = score_users(served, hists[:users], refs[:users], h_v, 128, forced)
            table.add("scoring, vLLM", f"{users} users", sec / users, "s/user",
                      f"{toks:.0f}-token reasoning, {users / sec:.1f} users/s")
            del served

    r2ec = model = h_v = None  # the big model's memory goes before the default model loads
    if device.type == "cuda":
        torch.cuda.empty_cache()
    with table.section("default model scoring", "greedy, batch 128"):
        path = Path(a.default_model)
        if not (path / "manifest.json").is_file():
            table.add("default model scoring", "-", float("nan"), "",
                      f"skipped: no default model at {path} (`make run` builds it)")
        else:
            small = R2ec.load(path, device=str(device), batch_size=128)
            h_small = torch.from_numpy(small.encode_items(
                small.item_prompts(catalog.ids, catalog.titles, catalog.attributes))).to(device)
            sampling = replace(SamplingConfig(), max_new_tokens=a.reasoning_tokens)
            sec, toks = score_users(small, hists, refs, h_small, 128, sampling)
            table.add("default model scoring", f"greedy, batch 128, {len(hists)} users",
                      len(hists) / sec, "users/s", f"{toks:.1f}-token reasoning (mean), "
                      f"{small.model_version}")

    print(f"\n{name}, torch {torch.__version__}, shape {shape} ({n_params / 1e9:.2f}B, {dtype}), "
          f"data {source}, user prompts {np.mean(lens):.0f} tokens, "
          f"{time.perf_counter() - t0:.0f} s in all\n")
    print(table.markdown(), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(table.rows, indent=1))
    sys.exit(1 if table.failed else 0)


if __name__ == "__main__":
    main()
