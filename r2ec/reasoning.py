"""The reasoning the default model writes, how it is taught without annotations, how it is shown
to analysts, and how its quality is measured.

Format (two lines, then <answer>):

    Because of: #1 #3
    Genres: Crime Drama

"#k" is the k-th most recent line of the user's own history in the prompt (#1 = the latest);
the genres are catalogue tags (MovieLens genres). Items are named by their place in the history
rather than by an item token: a small model learns "the latest well-rated lines" quickly, while
picking one item token out of the whole catalogue spreads its probability so thin that greedy
decoding never names one (measured: each item below 0.6%, so a generic token won). Stored
rationales replace every "#k" by "[its title]" and any item token by "[its title]", so an analyst
reads "Because of: [Heat (1995)] [Casino (1995)]" and never an internal token; a reference to a
line or item that does not exist is dropped, so every item named is a real item of the history
or the catalogue.

Teaching (the warm start; RecPO then changes what the model writes by reward): a pseudo
reasoning is written for each training readout from the data itself, no annotation needed.
Genres: the target item's tags ("target", the next item's genres are what the model should
work out) or the most frequent tags of the recent history ("profile"). Items: the history items
that co-occur most with the target in the training data ("cooccur") or the latest well-rated
ones ("recent").
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from r2ec.prompts import HistoryItem

BECAUSE = "Because of:"
GENRES = "\nGenres:"
_ITEM_TOKEN = re.compile(r"<i([^<>\s]+)>")
_LINE_REF = re.compile(r"#(\d+)")
_SPECIAL = re.compile(r"<\|[^|]*\|>|</?answer>|<pad>")
_BRACKETED = re.compile(r"\[([^\[\]]+)\]")


def item_tags(attributes: Mapping[str, str] | None) -> list[str]:
    """An item's tags: MovieLens genres (space-separated), else the last Amazon category."""
    a = dict(attributes or {})
    if a.get("genres"):
        return [g for g in str(a["genres"]).split() if g]
    if a.get("categories"):
        return [str(a["categories"]).split(" > ")[-1]]
    return []


def line_ref(k: int) -> str:
    """How the reasoning names the k-th most recent history line (k = 1: the latest)."""
    return f" #{k}"


def reasoning_text(tags: Sequence[str], lines_back: Sequence[int]) -> str:
    """The reasoning in its taught format; `lines_back` are k of the lines named (#k)."""
    return f"{BECAUSE}{''.join(line_ref(k) for k in lines_back)}{GENRES}{''.join(' ' + t for t in tags)}"


@dataclass
class Teacher:
    """Writes the pseudo reasoning of a (history, target) pair from the training data."""

    tags: Sequence[Sequence[str]]          # per catalogue row
    cooccur: np.ndarray | None             # (N, N) counts: history item row -> target row
    genres: str = "target"                 # "target" | "profile"
    anchors: str = "cooccur"               # "cooccur" | "recent"
    max_tags: int = 2
    max_items: int = 2

    def pick_tags(self, hist_rows: Sequence[int], target: int) -> list[str]:
        if self.genres == "target":
            return list(self.tags[target][: self.max_tags])
        counts = Counter(t for r in hist_rows[-5:] for t in self.tags[r])
        return [t for t, _ in counts.most_common(self.max_tags)]

    def pick_items(self, history: Sequence[HistoryItem], hist_rows: Sequence[int],
                   target: int) -> list[int]:
        """Positions in `history` of the items to name, oldest first."""
        n = len(history)
        if self.anchors == "cooccur" and self.cooccur is not None:
            # most co-occurring first; ties go to the more recent item
            order = sorted(range(n), key=lambda i: (-self.cooccur[hist_rows[i], target], -i))
            picked = order[: self.max_items]
        else:
            liked = [i for i in range(n) if (history[i].rating or 0) >= 4] or list(range(n))
            picked = liked[-self.max_items:]
        return sorted(picked)


def cooccurrence(histories_rows: Sequence[Sequence[int]], targets: Sequence[int], n: int
                 ) -> np.ndarray:
    """counts[h, t]: how often item h was in the history window when t came next (train)."""
    counts = np.zeros((n, n), dtype=np.float32)
    rows = np.fromiter((h for hs in histories_rows for h in hs), dtype=np.int64)
    cols = np.fromiter((t for hs, t in zip(histories_rows, targets, strict=True) for _ in hs),
                       dtype=np.int64)
    np.add.at(counts, (rows, cols), 1.0)
    return counts


def render(text: str, titles: Mapping[str, str], history: Sequence[str] = ()) -> str:
    """What an analyst reads: "#k" becomes "[title]" of the k-th most recent of `history`
    (titles, oldest first), item tokens become "[title]"; references to nothing are dropped,
    special tokens removed, runs of spaces collapsed."""
    def item(m: re.Match) -> str:
        title = titles.get(m.group(1))
        return f" [{title}]" if title else ""

    def line(m: re.Match) -> str:
        k = int(m.group(1))
        return f" [{history[-k]}]" if 1 <= k <= len(history) and history[-k] else ""

    out = _LINE_REF.sub(line, _ITEM_TOKEN.sub(item, _SPECIAL.sub("", text)))
    out = re.sub(r"[ \t]+", " ", out)
    return "\n".join(ln.strip() for ln in out.split("\n")).strip()


def rationale_metrics(rendered: Sequence[str], history_titles: Sequence[Sequence[str]],
                      recommended_tags: Sequence[Sequence[Sequence[str]]],
                      catalogue_titles: set[str], tag_vocabulary: set[str], k: int = 10
                      ) -> dict[str, float]:
    """Quality of stored rationales, averaged over users:
    - distinct_lines: distinct non-empty lines / lines (1 = no loop);
    - internal_tokens: share of rationales still showing an internal token (must be 0);
    - grounded_items: share of named items ("[title]") that are catalogue items;
    - history_items: share of named items that are in the user's own history;
    - grounded_genres: share of named genres that are catalogue tags;
    - genre_agreement@k: share of the top-k recommended items carrying a named genre;
    - named_genres_in_top@k: share of named genres that occur among the top-k's tags."""
    acc: dict[str, list[float]] = {m: [] for m in (
        "distinct_lines", "internal_tokens", "grounded_items", "history_items",
        "grounded_genres", f"genre_agreement@{k}", f"named_genres_in_top@{k}")}
    for text, hist, recs in zip(rendered, history_titles, recommended_tags, strict=True):
        lines = [x.strip() for x in text.split("\n") if x.strip()]
        if lines:
            acc["distinct_lines"].append(len(set(lines)) / len(lines))
        acc["internal_tokens"].append(float(bool(_ITEM_TOKEN.search(text) or _SPECIAL.search(text)
                                                 or _LINE_REF.search(text))))
        named = _BRACKETED.findall(text)
        if named:
            acc["grounded_items"].append(np.mean([t in catalogue_titles for t in named]))
            hs = set(hist)
            acc["history_items"].append(np.mean([t in hs for t in named]))
        heading = GENRES.strip()
        genres = [g for ln in lines if ln.startswith(heading) for g in ln[len(heading):].split()]
        if genres:
            acc["grounded_genres"].append(np.mean([g in tag_vocabulary for g in genres]))
            top = recs[:k]
            acc[f"genre_agreement@{k}"].append(
                np.mean([bool(set(t) & set(genres)) for t in top]) if top else 0.0)
            seen = {t for tags in top for t in tags}
            acc[f"named_genres_in_top@{k}"].append(np.mean([g in seen for g in genres]))
    return {m: float(np.mean(v)) if v else float("nan") for m, v in acc.items()}
