"""User and item prompts (PAPER.md §7, the authors' `UserGenPrompter` and `ItemPrompter`).

User prompt: an instruction, then one line per history item, oldest first:
    "{age}: [{title}] ({rating})"
The model writes its reasoning as the assistant and stops at <answer>; h_T is the hidden state
there. Item prompt: an instruction and "{Key}: {value}" lines; the assistant turn is pre-filled
with "<answer>", whose hidden state is the item's row of H_V.

One deliberate difference: ages are coarse ("3 days ago", "2 months ago") instead of the authors'
"12d 3.4h ago". Coarse ages repeat, so a small tokenizer learns each "{age}: [" as one token
(SMALL_MODEL.md: ~1.7x more training samples per second), and a 3B model loses nothing by it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from r2ec.config import PromptConfig

ANSWER = "<answer>"
ANSWER_END = "</answer>"


def item_token(item_id: str) -> str:
    return f"<i{item_id}>"


@dataclass(frozen=True)
class HistoryItem:
    item_id: str
    title: str
    rating: float | None
    ts: datetime


def age(delta_seconds: float) -> str:
    """Coarse, human age of an event: 'today', '1 day ago', '3 weeks ago', '2 years ago'."""
    days = max(0.0, delta_seconds) / 86400
    if days < 1:
        return "today"
    for unit, size, limit in (("day", 1, 14), ("week", 7, 9 * 7), ("month", 30.44, 730)):
        if days < limit:
            n = int(days // size)
            return f"{n} {unit}{'s' if n != 1 else ''} ago"
    n = int(days // 365.25)
    return f"{n} year{'s' if n != 1 else ''} ago"


def all_ages(max_years: int = 30) -> list[str]:
    """Every string `age` can return up to `max_years` (template fragments for the tokenizer)."""
    out = ["today"] + [f"{n} day{'s' if n != 1 else ''} ago" for n in range(1, 14)]
    out += [f"{n} weeks ago" for n in range(2, 9)]
    out += [f"{n} month{'s' if n != 1 else ''} ago" for n in range(2, 24)]
    out += [f"{n} year{'s' if n != 1 else ''} ago" for n in range(1, max_years + 1)]
    return out


def _words(text: str, n: int) -> str:
    w = text.split()
    return " ".join(w[:n]) + ("..." if len(w) > n else "")


def rating_text(rating: float | None) -> str:
    return "" if rating is None or rating != rating else f" ({rating:g})"


class Prompter:
    """Writes prompts for one PromptConfig; `has_token(tok)` tells whether the tokenizer knows an
    item-id token (only then is it written)."""

    def __init__(self, cfg: PromptConfig, has_token=lambda _tok: False):
        self.cfg = cfg
        self.has_token = has_token

    # -- user side -------------------------------------------------------------------------
    def user_instruction(self) -> str:
        c = self.cfg
        return (
            f"Analyze in depth and finally recommend the next {c.category} I might {c.verb} "
            f"inside {ANSWER} and {ANSWER_END}. For example, {ANSWER}a {c.category}{ANSWER_END}. "
            f"Below are the {c.category_plural} I {c.verb_past}, with my ratings (out of 5):"
        )

    def title(self, item_id: str, title: str) -> str:
        tok = item_token(item_id)
        t = _words(title or "", self.cfg.max_title_words)
        return f"{tok} {t}" if self.cfg.item_id_tokens and self.has_token(tok) else t

    def history_line(self, h: HistoryItem, ref_time: datetime) -> str:
        when = age((ref_time - h.ts).total_seconds())
        return f"{when}: [{self.title(h.item_id, h.title)}]{rating_text(h.rating)}"

    def user_content(self, history: Sequence[HistoryItem], ref_time: datetime,
                     drop_oldest: int = 0) -> str:
        recent = list(history)[-self.cfg.window:][drop_oldest:]
        lines = [self.history_line(h, ref_time) for h in recent]
        return "\n".join([self.user_instruction(), *lines])

    def recap(self, items: Sequence[HistoryItem]) -> str:
        """A reasoning in the prompt's own line format, without ages: the warm start teaches the
        small model to write one (a few of the user's items) before <answer>, so that its
        reasoning is on-distribution for h_T from the first RecPO step."""
        return "\n".join(f"[{self.title(h.item_id, h.title)}]{rating_text(h.rating)}" for h in items)

    # -- item side -------------------------------------------------------------------------
    def item_instruction(self) -> str:
        return (f"Summarize key attributes of the following {self.cfg.category} "
                f"inside {ANSWER} and {ANSWER_END}.")

    def item_content(self, item_id: str, title: str, attributes: Mapping[str, str] | None) -> str:
        lines = [f"Title: {self.title(item_id, title)}"]
        attrs = dict(attributes or {})
        description = attrs.pop("description", None)
        for key in sorted(attrs):
            value = str(attrs[key]).strip()
            if value:
                lines.append(f"{key.replace('_', ' ').capitalize()}: {value}")
        if description:
            lines.append(f"Description: {_words(description, self.cfg.description_words)}")
        return f"{self.item_instruction()}\n\n" + "\n".join(lines)


def user_messages(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


def item_messages(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}, {"role": "assistant", "content": ANSWER}]
