"""Progress bars that suit both a terminal and a log file."""

from __future__ import annotations

import sys
from collections.abc import Iterable

from tqdm.auto import tqdm


def progress_bar(total: int | None = None, desc: str = "", disable: bool = False, initial: int = 0,
                 iterable: Iterable | None = None) -> tqdm:
    """tqdm that redraws in a terminal, and writes a line only every 30 s into a log file
    (Airflow task logs, `make run > log`)."""
    tty = sys.stderr.isatty()
    return tqdm(iterable, total=total, initial=initial, desc=desc, disable=disable,
                mininterval=0.5 if tty else 30.0, dynamic_ncols=tty, leave=tty)
