"""Fault isolation for the scoring UDF: one bad user, or one chunk too large for the device,
must not fail a Spark task (Spark would retry the same chunk, same size, and fail the job).

`ChunkRunner.run` scores a batch chunk by chunk. When a chunk raises:
- out of memory (CUDA's, the host's, or the engine's `max_batch_tokens` guard, a MemoryError
  raised before the model runs): the chunk size is
  halved for the rest of the partition, logged, and the chunk is tried again in smaller pieces;
- anything else: the chunk is split in two and each half tried, down to single users;
- a single user who still fails gets `on_error(i, exc)` (the scoring UDF's 'error' fallback row).

A fault that is not about particular users (every user fails) would otherwise cost ~2 calls per
user; so when `systemic_after` users in a row (default: two chunks' worth) failed one by one with
no user scored between them, the task fails as before, with the last error as its cause.
Pure Python, no Spark: tested on its own (tests/test_isolation.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

MESSAGE_CHARS = 200  # of an error message kept with the user's row


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    try:
        import torch

        if isinstance(exc, torch.OutOfMemoryError):
            return True
    except ImportError:  # pragma: no cover - torch is a dependency of the engine
        pass
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def describe(exc: BaseException) -> str:
    """'ErrorClass: first line of the message', short and printable, for a table row."""
    first = (str(exc).strip().splitlines() or [""])[0]
    text = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text[:MESSAGE_CHARS]


class ChunkRunner(Generic[T]):
    """Scores one partition's users; holds the chunk size that out-of-memory errors shrink."""

    def __init__(self, chunk_size: int, systemic_after: int = 0):
        self.chunk_size = max(1, chunk_size)
        self.systemic_after = systemic_after or 2 * self.chunk_size
        self.failed_users = 0
        self.failed_in_a_row = 0
        self.scored_users = 0
        self.splits = 0

    def run(self, n: int, score: Callable[[int, int], Sequence[T]],
            on_error: Callable[[int, BaseException], T]) -> list[T]:
        """Results for users 0..n-1 in order; `score(a, b)` scores users a..b-1."""
        out: list[T] = []
        start = 0
        while start < n:
            end = min(n, start + self.chunk_size)
            out += self._attempt(start, end, score, on_error)
            start = end
        return out

    def _attempt(self, a: int, b: int, score, on_error) -> list[T]:
        try:
            results = list(score(a, b))
        except Exception as exc:  # noqa: BLE001 - isolated below; KeyboardInterrupt passes
            return self._recover(a, b, exc, score, on_error)
        self.scored_users += b - a
        self.failed_in_a_row = 0
        return results

    def _recover(self, a: int, b: int, exc: Exception, score, on_error) -> list[T]:
        size = b - a
        if size == 1:
            self.failed_users += 1
            self.failed_in_a_row += 1
            log.warning("user %d of the batch failed alone: %s", a, describe(exc))
            if self.failed_in_a_row >= self.systemic_after:
                raise RuntimeError(f"{self.failed_in_a_row} users in a row failed one by one: "
                                   f"not a fault of particular users") from exc
            return [on_error(a, exc)]
        self.splits += 1
        if is_out_of_memory(exc):
            piece = max(1, size // 2)
            if piece < self.chunk_size:
                log.warning("out of memory on a chunk of %d users (%s): chunk size %d -> %d for "
                            "the rest of this partition", size, describe(exc), self.chunk_size,
                            piece)
                self.chunk_size = piece
            bounds = [(s, min(b, s + piece)) for s in range(a, b, piece)]
        else:
            log.warning("a chunk of %d users failed (%s): trying its halves", size, describe(exc))
            mid = a + size // 2
            bounds = [(a, mid), (mid, b)]
        out: list[T] = []
        for s, e in bounds:
            out += self._attempt(s, e, score, on_error)
        return out
