"""The evaluation protocol's samples in plain pandas, for machines without Spark (a bare GPU
machine running a benchmark script): the same rule as `jobs/build_histories.py`, which
computes it with Spark windows over the `interactions` table; `tests/test_protocol.py` checks
that both give the same samples on ML-100k.

The rule (the reference preprocessing, RRec's `save_data`): each user's events sorted by time
with a stable sort (same-second events keep their input order); users in order of their first
event in the input; one sample per position >= 1 with the previous <= `window` events as its
history; all samples stably sorted by target time; sample_id = the index in that order; the
first int(.8 N) are train, up to int(.9 N) valid, the rest test.

    from r2ec.protocol import read_ml100k_atomic, protocol_samples
    items, events = read_ml100k_atomic("data/raw/ml-100k")
    samples = protocol_samples(events, items)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd

from r2ec.config import HISTORY_WINDOW

_EPOCH = datetime(1970, 1, 1)
_YEAR = re.compile(r"^\d{4}$")


def split_bounds(n: int, fractions: Sequence[float]) -> tuple[int, int]:
    """(end of train, end of valid) as the reference computes them: int(.8 N), int(.9 N).
    The cumulative fraction is rounded so that 0.8 + 0.1 is 0.9, not 0.9000000000000001."""
    return int(n * fractions[0]), int(n * round(fractions[0] + fractions[1], 12))


def read_ml100k_atomic(folder: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(items, events) from RecBole's ml-100k atomic files, as `jobs/ingest.py --source ml-100k`
    reads them: titles carry the year ("Toy Story (1995)"), the other item columns become
    attributes (release_year -> year, class -> genres); events keep the file's order, with
    naive UTC timestamps. No validation or quarantine: this is for known, clean files."""
    folder = Path(folder)

    def read(path: Path) -> pd.DataFrame:
        df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, encoding="utf-8",
                         encoding_errors="replace", quoting=3)
        return df.rename(columns=lambda c: c.split(":")[0])

    it = read(folder / "ml-100k.item")
    rename = {"release_year": "year", "class": "genres"}
    extra = [c for c in it.columns if c not in ("item_id", "movie_title")]
    titles = []
    for title, year in zip(it["movie_title"].str.strip(),
                           it.get("release_year", pd.Series([""] * len(it))).str.strip(),
                           strict=True):
        with_year = bool(_YEAR.match(year)) and title != "" and not title.endswith(f"({year})")
        titles.append(f"{title} ({year})" if with_year else title)
    items = pd.DataFrame({
        "item_id": it["item_id"].str.strip(), "title": titles,
        "attributes": [{rename.get(c, c): str(row[c]).strip() for c in extra}
                       for _, row in it.iterrows()]})
    ev = read(folder / "ml-100k.inter")
    events = pd.DataFrame({
        "user_id": ev["user_id"].str.strip(), "item_id": ev["item_id"].str.strip(),
        "rating": ev["rating"].astype(float),
        "ts": [_EPOCH + timedelta(seconds=int(float(t))) for t in ev["timestamp"]]})
    return items, events


def protocol_samples(events: pd.DataFrame, items: pd.DataFrame, window: int = HISTORY_WINDOW,
                     fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> pd.DataFrame:
    """`training_samples`-shaped rows (sample_id, user_id, position, history_item_ids,
    history_titles, history_ratings, history_ts, target_item_id, target_ts, target_rating,
    split) from events in input order (user_id, item_id, rating, ts)."""
    title = dict(zip(items["item_id"], items["title"], strict=True))
    by_user: dict[str, list[tuple]] = {}  # insertion order = order of first appearance
    for u, i, r, t in zip(events["user_id"], events["item_id"], events["rating"], events["ts"],
                          strict=True):
        by_user.setdefault(u, []).append((i, r, t))
    rows = []
    for u, evs in by_user.items():
        evs = sorted(evs, key=lambda e: e[2])  # stable: same-second events keep input order
        for k in range(1, len(evs)):
            h = evs[max(0, k - window): k]
            rows.append((u, k, [e[0] for e in h], [title.get(e[0], "") for e in h],
                         [e[1] for e in h], [e[2] for e in h], evs[k][0], evs[k][2], evs[k][1]))
    rows.sort(key=lambda s: s[7])  # stable: users in first-appearance order, then position
    df = pd.DataFrame(rows, columns=["user_id", "position", "history_item_ids", "history_titles",
                                     "history_ratings", "history_ts", "target_item_id",
                                     "target_ts", "target_rating"])
    n = len(df)
    train_end, valid_end = split_bounds(n, fractions)
    df.insert(0, "sample_id", range(n))
    df["split"] = ["train" if j < train_end else "valid" if j < valid_end else "test"
                   for j in range(n)]
    return df
