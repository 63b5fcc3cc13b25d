"""The embedded default model: a tokenizer trained on the catalogue, and a small Qwen2.

Built by the project itself, offline, in the same checkpoint format as any production
backbone (so vLLM can load it too). Its weights start random; `r2ec.warmstart` then trains it
(the paper's no-reasoning stage) and `r2ec.recpo` fine-tunes it with RecPO.

    bin/r2ec-submit jobs/build_model.py --out models/default     # reads items + samples from Delta
"""

from __future__ import annotations

import logging
import random
import tempfile
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from r2ec import checkpoint
from r2ec.checkpoint import R2ecSettings
from r2ec.config import DefaultModelConfig, PromptConfig
from r2ec.data import Catalog, histories, times
from r2ec.prompts import ANSWER, ANSWER_END, FIRST, Prompter, all_gaps, item_token
from r2ec.reasoning import BECAUSE, GENRES, line_ref
from r2ec.tokenizer import CHAT_TEMPLATE, IM_END, IM_START, train_tokenizer

log = logging.getLogger(__name__)


def template_fragments(prompter: Prompter, ratings: list[float],
                       attribute_keys: Iterable[str] = ()) -> list[str]:
    """Pieces of the prompt templates that become single tokens: the instruction sentences
    (split at the special tokens they contain), the '\n{gap}: [' line starts, the '\nnow, {gap}'
    lines and the '] ({rating})' line ends: a history line is then its item token, its title
    and two template tokens."""
    pieces = []
    for sentence in (prompter.user_instruction(), prompter.item_instruction()):
        for special in (ANSWER, ANSWER_END):
            sentence = sentence.replace(special, "\x00")
        pieces += [p for p in sentence.split("\x00") if p.strip()]
    pieces += [f"\n{g}: [" for g in [FIRST, *all_gaps()]]
    pieces += ["\nnow"] + [f"\nnow, {g}" for g in all_gaps()]
    # Years in titles, "Toy Story (1995)": Qwen2's split makes every digit a token, 6 per year.
    pieces += [f" ({y})" for y in range(1900, 2031)]
    pieces += [f"] ({r:g})" for r in sorted(set(ratings))]
    # The chat turns' role lines and the item prompt's keys, and the reasoning's two headings.
    # Keys end at the colon, so that values keep their leading space (" Drama" is then the same
    # token in item prompts and in the reasoning's "Genres: Drama"); a title starts with its
    # item token, so "Title: " takes the space.
    pieces += ["user\n", "assistant\n", "\nTitle: "]
    pieces += [f"\n{k.replace('_', ' ').capitalize()}:" for k in sorted(attribute_keys)]
    pieces += [GENRES, BECAUSE] + [line_ref(k) for k in range(1, prompter.cfg.window + 1)]
    return pieces


def _chat(text_user: str, assistant: str | None = None) -> str:
    s = f"{IM_START}user\n{text_user}{IM_END}\n{IM_START}assistant\n"
    return s + assistant if assistant else s


def build(items: pd.DataFrame, samples: pd.DataFrame | None, out_dir: str | Path,
          cfg: DefaultModelConfig | None = None, prompt: PromptConfig | None = None) -> dict:
    """Train the tokenizer, initialise the model, save a checkpoint; returns its manifest."""
    cfg, prompt = cfg or DefaultModelConfig(), prompt or PromptConfig()
    catalog = Catalog.from_frame(items)
    # The BPE corpus is written without item-id tokens: those are added whole afterwards.
    plain = Prompter(prompt, has_token=lambda _t: False)
    corpus = [_chat(plain.item_content(i, t, a), ANSWER)
              for i, t, a in zip(catalog.ids, catalog.titles, catalog.attributes, strict=True)]
    ratings = [1.0, 2.0, 3.0, 4.0, 5.0]
    if samples is not None and len(samples):
        rng = random.Random(cfg.seed)
        pick = samples.iloc[sorted(rng.sample(range(len(samples)),
                                              min(cfg.user_prompts_for_tokenizer, len(samples))))]
        for hist, ref in zip(histories(pick), times(pick["target_ts"]), strict=True):
            corpus.append(_chat(plain.user_content(hist, ref)))
        ratings = sorted({float(r) for rs in samples["history_ratings"].head(5000) for r in rs
                          if r is not None and r == r} | set(ratings))
    keys = {k for a in catalog.attributes for k in a if k != "description"}
    fragments = template_fragments(plain, ratings, keys)
    tok = train_tokenizer(corpus, cfg.vocab_size, fragments=fragments,
                          item_tokens=[item_token(i) for i in catalog.ids])
    tok.chat_template = CHAT_TEMPLATE
    log.info("tokenizer: %d tokens (%d item tokens, %d template fragments)", len(tok),
             len(catalog), len(fragments))

    config = Qwen2Config(
        vocab_size=len(tok), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads, head_dim=cfg.head_dim,
        max_position_embeddings=cfg.max_position_embeddings, tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, rope_theta=10000.0, use_sliding_window=False,
    )
    # One save/load cycle first: loading re-serialises a tokenizer slightly differently (as
    # Qwen2's class), and model_version hashes the files, so start from that fixed point.
    with tempfile.TemporaryDirectory() as d:
        tok.save_pretrained(d)
        config.save_pretrained(d)
        tok = AutoTokenizer.from_pretrained(d, local_files_only=True)
    torch.manual_seed(cfg.seed)
    model = Qwen2ForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model: Qwen2 %dx%d, %.2fM parameters", cfg.hidden_size, cfg.num_layers, n_params / 1e6)
    return checkpoint.save(
        model, tok, out_dir, R2ecSettings(prompt),
        base_model=f"r2ec-default-qwen2-{cfg.hidden_size}x{cfg.num_layers}",
        extra={"stage": "build", "default_model_config": asdict(cfg), "parameters": n_params},
    )
