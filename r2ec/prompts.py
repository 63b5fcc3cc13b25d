"""User and item prompts, and the reasoning format the default model is taught.

User prompt (after the authors' `UserGenPrompter`): an instruction, then one line per history
item, oldest first, and a last line saying how long ago the newest one was:

    first: [<i50> Star Wars (1977)] (5)
    same day: [<i181> Return of the Jedi (1983)] (4)
    3 weeks later: [<i1> Toy Story (1995)] (3)
    now, 2 days later

The model writes its reasoning as the assistant and stops at <answer>; h_T is the hidden state
there. Item prompt (the authors' `ItemPrompter`): an instruction and "{Key}: {value}" lines; the
assistant turn is pre-filled with "<answer>", whose hidden state is the item's row of H_V.

Differences from the authors' prompts, on purpose:
- Times are gaps between consecutive events ("3 weeks later") and the gap from the newest event
  to "now", instead of every event's age relative to the target. Every line then depends on
  that user's past only, so the state at the end of line j is the same whatever comes after it,
  and one forward pass over a history can be read out after every line (the multi-target warm
  start). Only the "now" line depends on the reference time, and it sits after the lines.
- Coarse buckets ("3 days later"), which a small tokenizer learns as single tokens.
- Item prompts drop attributes whose value the title already shows (MovieLens' year).

Every piece of text is a *segment* that is tokenised on its own (`R2ec` concatenates the ids):
the instruction, each line, the "now" line with the chat template's end of turn. Packing in
training and prompting at inference therefore produce the same ids by construction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from r2ec.config import PromptConfig

ANSWER = "<answer>"
ANSWER_END = "</answer>"
PROMPT_FORMAT = 2  # 1: ages relative to the target time (before the multi-target warm start)
FIRST = "first"


def item_token(item_id: str) -> str:
    return f"<i{item_id}>"


@dataclass(frozen=True)
class HistoryItem:
    item_id: str
    title: str
    rating: float | None
    ts: datetime


def gap(delta_seconds: float) -> str:
    """Coarse gap between two events: 'same day', '1 day later', '3 weeks later', '2 years later'."""
    days = max(0.0, delta_seconds) / 86400
    if days < 1:
        return "same day"
    for unit, size, limit in (("day", 1, 14), ("week", 7, 9 * 7), ("month", 30.44, 730)):
        if days < limit:
            n = int(days // size)
            return f"{n} {unit}{'s' if n != 1 else ''} later"
    n = int(days // 365.25)
    return f"{n} year{'s' if n != 1 else ''} later"


def all_gaps(max_years: int = 30) -> list[str]:
    """Every string `gap` can return up to `max_years` (template fragments for the tokenizer)."""
    out = ["same day"] + [f"{n} day{'s' if n != 1 else ''} later" for n in range(1, 14)]
    out += [f"{n} weeks later" for n in range(2, 9)]
    out += [f"{n} month{'s' if n != 1 else ''} later" for n in range(2, 24)]
    out += [f"{n} year{'s' if n != 1 else ''} later" for n in range(1, max_years + 1)]
    return out


def _words(text: str, n: int) -> str:
    w = text.split()
    return " ".join(w[:n]) + ("..." if len(w) > n else "")


def rating_text(rating: float | None) -> str:
    return "" if rating is None or rating != rating else f" ({rating:g})"


def line_prefix(previous: datetime | None, ts: datetime) -> str:
    """'\\n{gap}: [' (or '\\nfirst: [' for the first line of a prompt)."""
    when = FIRST if previous is None else gap((ts - previous).total_seconds())
    return f"\n{when}: ["


def now_line(last: datetime | None, ref_time: datetime) -> str:
    return "\nnow" if last is None else f"\nnow, {gap((ref_time - last).total_seconds())}"


class Prompter:
    """Writes prompt segments for one PromptConfig; `has_token(tok)` tells whether the tokenizer
    knows an item-id token (only then is it written)."""

    def __init__(self, cfg: PromptConfig, has_token=lambda _tok: False):
        self.cfg = cfg
        self.has_token = has_token

    # -- user side -------------------------------------------------------------------------
    def user_instruction(self) -> str:
        c = self.cfg
        return (
            f"Analyze in depth and finally recommend the next {c.category} I might {c.verb} "
            f"inside {ANSWER} and {ANSWER_END}. For example, {ANSWER}a {c.category}{ANSWER_END}. "
            f"Below are the {c.category_plural} I {c.verb_past}, oldest first, with the time "
            f"between them and my ratings (out of 5):"
        )

    def title(self, item_id: str, title: str) -> str:
        tok = item_token(item_id)
        t = _words(title or "", self.cfg.max_title_words)
        return f"{tok} {t}" if self.cfg.item_id_tokens and self.has_token(tok) else t

    def history_line(self, h: HistoryItem, previous: datetime | None) -> str:
        """One line segment; `previous` is the time of the line before it (None: first line)."""
        return f"{line_prefix(previous, h.ts)}{self.title(h.item_id, h.title)}]{rating_text(h.rating)}"

    def window(self, history: Sequence[HistoryItem], drop_oldest: int = 0) -> list[HistoryItem]:
        return list(history)[-self.cfg.window:][drop_oldest:]

    def user_lines(self, history: Sequence[HistoryItem], drop_oldest: int = 0) -> list[str]:
        recent = self.window(history, drop_oldest)
        return [self.history_line(h, recent[i - 1].ts if i else None) for i, h in enumerate(recent)]

    def user_content(self, history: Sequence[HistoryItem], ref_time: datetime,
                     drop_oldest: int = 0) -> str:
        """The whole user turn as text (for reading; the model gets the segments' ids)."""
        recent = self.window(history, drop_oldest)
        last = recent[-1].ts if recent else None
        return (self.user_instruction() + "".join(self.user_lines(history, drop_oldest))
                + now_line(last, ref_time))

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
            # A value the title already shows ("Toy Story (1995)" and year 1995) costs tokens
            # and adds nothing.
            if value and value not in (title or ""):
                lines.append(f"{key.replace('_', ' ').capitalize()}: {value}")
        if description:
            lines.append(f"Description: {_words(description, self.cfg.description_words)}")
        return f"{self.item_instruction()}\n" + "\n".join(lines)


def item_messages(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}, {"role": "assistant", "content": ANSWER}]
