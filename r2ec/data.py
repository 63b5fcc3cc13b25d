"""Adapters from the tables' pandas form (what jobs hand the engine) to engine inputs.

The engine never reads tables itself: jobs read Delta with Spark and pass pandas frames with
the columns of `schemas/` (items: item_id, title, attributes; samples/histories:
history_item_ids, history_titles, history_ratings, history_ts, ...).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd

from r2ec.prompts import HistoryItem


def to_datetime(x) -> datetime:
    """A naive UTC datetime from any timestamp a table frame holds (tz-aware or not)."""
    ts = pd.Timestamp(x)
    return (ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo else ts).to_pydatetime()


def rating_value(r) -> float | None:
    """A rating as float, None when missing (None or NaN)."""
    return None if r is None or (isinstance(r, float) and np.isnan(r)) else float(r)


def histories(df: pd.DataFrame) -> list[list[HistoryItem]]:
    """One list of HistoryItem (oldest first) per row of a samples/histories frame."""
    out = []
    for ids, titles, ratings, tss in zip(df["history_item_ids"], df["history_titles"],
                                         df["history_ratings"], df["history_ts"], strict=True):
        out.append([HistoryItem(str(i), t or "", rating_value(r), to_datetime(ts))
                    for i, t, r, ts in zip(ids, titles, ratings, tss, strict=True)])
    return out


def times(values) -> list[datetime]:
    return [to_datetime(v) for v in values]


@dataclass
class Catalog:
    """The items in a fixed order (sorted by id): row i of H_V is `ids[i]`."""

    ids: list[str]
    titles: list[str]
    attributes: list[Mapping[str, str]]

    @classmethod
    def from_frame(cls, items: pd.DataFrame) -> Catalog:
        df = items.sort_values("item_id", kind="stable")
        attrs = [dict(a) if a is not None else {} for a in df["attributes"]]
        return cls([str(i) for i in df["item_id"]], list(df["title"]), attrs)

    def __post_init__(self) -> None:
        self.row = {item: i for i, item in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, item_ids) -> list[int]:
        """Rows of the known ids (unknown ids are skipped)."""
        return [self.row[i] for i in item_ids if i in self.row]
