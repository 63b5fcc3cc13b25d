"""Typed configuration of the engine, one help string per field (TRL's GRPOConfig style).

Defaults follow the paper (arXiv 2505.16994) or the authors' code (github.com/YRYangang/RRec)
where they differ; a default of our own says why next to it.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any, TypeVar

T = TypeVar("T")

# Defaults that several modules share, written once here.
# The recommendation head's temperature: score = cosine(h_T, H_V) / tau (the authors' code; the
# paper writes a plain inner product).
TAU = 0.02
# History items per user (the paper's window): in prompts, histories and the protocol's samples.
HISTORY_WINDOW = 20
# `fallback` of a user who got the most popular items: no usable history, or a scoring error.
FALLBACK_POPULARITY = "popularity"
FALLBACK_ERROR = "error"


def option(default: Any = MISSING, help: str = "", **kw) -> Any:  # noqa: A002 - mirrors argparse
    """A dataclass field with its help string (the CLI flags and `--help` are made from it,
    `r2ec_batch.cli.add_dataclass_args`). A list or dict default is copied per instance."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


def restate(base: type, name: str, default: Any, why: str = "") -> Any:
    """A field of `base` again in a subclass with this subclass's default: the help stays the
    base's (plus `why`, the reason for this default), so it is written once."""
    text = base.__dataclass_fields__[name].metadata["help"]
    return option(default, f"{text} ({why})" if why else text)


@dataclass
class PromptConfig:
    """How user and item prompts are written (`r2ec.prompts`); saved with each model, because a
    model only works with the prompts it was trained on."""

    category: str = option("movie", "singular noun of one catalogue item in the prompts")
    category_plural: str = option("movies", "plural noun in the user prompt")
    verb_past: str = option("watched", "what the user did ('purchased' in the paper's Amazon prompts)")
    verb: str = option("watch", "what the user will do next ('purchase' in the paper)")
    window: int = option(HISTORY_WINDOW, "history items per user prompt (paper: 20)")
    max_title_words: int = option(20, "titles are cut to this many words (the authors drop longer ones)")
    description_words: int = option(100, "item descriptions are cut to this many words (authors' code)")
    item_id_tokens: bool = option(
        True, "write '<i{item_id}>' before each title when the tokenizer has that token "
        "(measured: +12% N@10 for the small model; production backbones have no such tokens)")
    max_prompt_tokens: int = option(1024, "oldest history lines are dropped beyond this length")

    @classmethod
    def for_dataset(cls, name: str) -> PromptConfig:
        """Category words for the datasets the project knows (the authors' three + MovieLens)."""
        presets = {
            "ml-100k": ("movie", "movies", "watched", "watch"),
            "movielens": ("movie", "movies", "watched", "watch"),
            "CDs_and_Vinyl": ("CD or vinyl", "CDs and vinyl", "purchased", "purchase"),
            "Video_Games": ("video game", "video games", "purchased", "purchase"),
            "Musical_Instruments": ("musical instrument", "musical instruments", "purchased",
                                    "purchase"),
        }
        if name not in presets:
            raise ValueError(f"no prompt preset for {name!r}; known: {', '.join(presets)}")
        c, cp, vp, v = presets[name]
        return cls(category=c, category_plural=cp, verb_past=vp, verb=v)


@dataclass
class SamplingConfig:
    """How reasonings are generated. Evaluation is greedy (temperature 0), as in the paper."""

    temperature: float = option(0.0, "0 = greedy; RecPO rollouts use 1.5 (paper) / 2.0 (authors' code)")
    top_k: int = option(0, "0 = off; paper rollouts: 200, authors' launch script: 50")
    top_p: float = option(1.0, "nucleus sampling mass")
    max_new_tokens: int = option(
        32, "reasoning budget in tokens; <answer> is appended when it runs out (paper: 512 for a "
        "2-3B model; 32 keeps the small CPU model's scoring fast)")
    min_new_tokens: int = option(
        2, "<answer> and end of turn cannot end the reasoning before this many tokens. A small "
        "model's <answer> can out-score every single item token right where its reasoning names "
        "items (measured: 2% against 0.6% each), so greedy decoding would end it there")
    seed: int = option(0, "torch seed set before each generate call")


@dataclass
class DefaultModelConfig:
    """The embedded default model: a small Qwen2 whose tokenizer is trained on the catalogue
    (docs/default-model.md: throughput, not size, limits quality on 2 cores)."""

    hidden_size: int = option(128, "model width")
    num_layers: int = option(2, "decoder layers")
    num_heads: int = option(2, "attention heads")
    head_dim: int = option(64, "64 keeps the vLLM (incl. the CPU build) door open")
    intermediate_size: int = option(512, "MLP width")
    vocab_size: int = option(6000, "BPE vocabulary asked for (the trained one can be smaller)")
    max_position_embeddings: int = option(1024, "longest sequence")
    user_prompts_for_tokenizer: int = option(3000, "training user prompts added to the BPE corpus")
    seed: int = option(0, "initialisation seed")


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build `cls` from a dict, refusing keys it does not know (a typo must not pass silently)."""
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown field(s) {sorted(unknown)}")
    return cls(**data)
