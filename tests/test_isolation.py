"""Fault isolation of the scoring UDF's chunks (udfs/isolation.py), on its own: which users are
scored, which get the error row, how often the model is called, and how the chunk size moves."""

from __future__ import annotations

import pytest
import torch

from r2ec_batch.udfs.isolation import ChunkRunner, describe, is_out_of_memory


class Scorer:
    """Scores users a..b-1 as ("ok", i); raises for the users in `bad`, and out-of-memory for
    a chunk of more than `fits` users. Records every call."""

    def __init__(self, bad=(), fits: int | None = None, oom=MemoryError):
        self.bad, self.fits, self.oom, self.calls = set(bad), fits, oom, []

    def __call__(self, a: int, b: int):
        self.calls.append((a, b))
        if self.fits is not None and b - a > self.fits:
            raise self.oom(f"chunk of {b - a} does not fit")
        if self.bad & set(range(a, b)):
            raise ValueError(f"cannot tokenize user {sorted(self.bad & set(range(a, b)))[0]}\nmore")
        return [("ok", i) for i in range(a, b)]


def error_row(i: int, exc: BaseException):
    return ("error", i, describe(exc))


def test_one_bad_user_costs_only_itself():
    s = Scorer(bad={37})
    runner = ChunkRunner(chunk_size=16)
    out = runner.run(100, s, error_row)
    assert [r[1] for r in out] == list(range(100))  # every user once, in order
    assert [r for r in out if r[0] == "error"] == [("error", 37, "ValueError: cannot tokenize user 37")]
    assert runner.failed_users == 1 and runner.scored_users == 99
    # the failing chunk of 16 is bisected: 7 chunks + 2 per level over 4 levels; no other
    # chunk is touched twice, and the chunk size is unchanged (not an out-of-memory)
    assert len(s.calls) == 7 + 2 * 4 and runner.chunk_size == 16
    assert sum(b - a for a, b in s.calls if not (a <= 37 < b)) == 99


def test_out_of_memory_halves_the_chunk_size_for_the_rest_of_the_partition():
    s = Scorer(fits=5)
    runner = ChunkRunner(chunk_size=16)
    first = runner.run(40, s, error_row)
    assert [r[0] for r in first] == ["ok"] * 40
    assert runner.chunk_size == 4  # 16 -> 8 -> 4, and it stays there
    second = runner.run(12, s, error_row)  # the next Arrow batch of the same partition
    assert [r[0] for r in second] == ["ok"] * 12
    assert s.calls[-3:] == [(0, 4), (4, 8), (8, 12)]  # no new failure: straight at size 4
    assert runner.failed_users == 0


@pytest.mark.parametrize("oom", [MemoryError, torch.OutOfMemoryError,
                                 lambda m: RuntimeError(f"CUDA error: out of memory ({m})")])
def test_every_kind_of_out_of_memory_is_recognised(oom):
    runner = ChunkRunner(chunk_size=8)
    assert [r[0] for r in runner.run(8, Scorer(fits=2, oom=oom), error_row)] == ["ok"] * 8
    assert runner.chunk_size == 2


def test_a_user_too_large_alone_gets_the_error_row():
    s = Scorer(fits=0)
    runner = ChunkRunner(chunk_size=4, systemic_after=100)
    out = runner.run(3, s, error_row)
    assert [r[0] for r in out] == ["error"] * 3 and runner.chunk_size == 1
    assert out[0][2] == "MemoryError: chunk of 1 does not fit"


def test_a_fault_of_every_user_fails_the_task():
    runner = ChunkRunner(chunk_size=4)
    with pytest.raises(RuntimeError, match="8 users in a row failed one by one"):
        runner.run(1000, Scorer(bad=set(range(1000))), error_row)
    # also when it starts half-way (a device lost after a while): 8 in a row, then it stops
    s = Scorer(bad=set(range(500, 1000)))
    with pytest.raises(RuntimeError, match="8 users in a row"):
        ChunkRunner(chunk_size=4).run(1000, s, error_row)
    assert max(a for a, _ in s.calls) < 512


def test_describe_is_short_and_printable():
    text = describe(ValueError("bad \x1b[31mtitle\x07 " + "x" * 500 + "\nsecond line"))
    assert text.startswith("ValueError: bad ?[31mtitle? x") and len(text) == 200
    assert "second line" not in text
    assert describe(KeyError()) == "KeyError"
    assert is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert not is_out_of_memory(RuntimeError("index out of range"))


def test_a_model_partition_gets_at_least_one_batch_and_at_most_rows_per_task():
    from r2ec_batch.udfs.scoring import ROWS_PER_TASK, model_partitions

    assert model_partitions(4, parallelism=2, chunk_size=64) == 1  # one model load, not two
    assert model_partitions(0, parallelism=8, chunk_size=64) == 1
    assert model_partitions(200, parallelism=2, chunk_size=64) == 2
    assert model_partitions(200, parallelism=16, chunk_size=64) == 4  # one batch each at least
    assert model_partitions(10 * ROWS_PER_TASK, parallelism=2, chunk_size=64) == 10
