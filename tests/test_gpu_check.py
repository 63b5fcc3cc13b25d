"""`bench/gpu_check.py`, the script a lent GPU runs as it is, taken through its CPU path with a
tiny shape in bf16 and gradient checkpointing (the settings it uses on a GPU), so that a bare
GPU machine does not find its bugs. The GPU run itself is marked `gpu`."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO

SCRIPT = REPO / "bench" / "gpu_check.py"


def run_check(tmp_path, *args: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    out = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--json", str(out), *args],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    rows = json.loads(out.read_text()) if out.is_file() else []
    return proc, rows


@pytest.mark.slow
def test_cpu_tiny_path_prints_every_row(tmp_path):
    proc, rows = run_check(tmp_path, "--device", "cpu", "--tiny", "--dtype", "bfloat16",
                           "--gradient-checkpointing", "--data", "synthetic",
                           # two steps a stage: the second is timed (the first warms up)
                           "--warmstart-steps", "2", "--recpo-steps", "2",
                           "--default-model", str(tmp_path / "no-model"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    by = {r["what"]: r for r in rows if r["what"] != "scoring, transformers"}
    scoring = [r for r in rows if r["what"] == "scoring, transformers"]
    assert [r["setting"].split(",")[0] for r in scoring] == ["batch 1", "batch 32", "batch 128"]
    for r in [by["warm start"], by["RecPO step"], *scoring]:
        assert math.isfinite(r["value"]) and r["value"] > 0, r
        assert "FAILED" not in r["note"]
    assert "gradient checkpointing" in by["RecPO step"]["note"]
    assert by["default model scoring"]["note"].startswith("skipped: no default model")
    # The table is the last thing printed: one line per row under its header.
    table = proc.stdout[proc.stdout.index("| what |"):].strip().splitlines()
    assert len(table) == 2 + len(rows)


def test_a_failing_row_is_reported_and_fails_the_run():
    """A row that breaks becomes a FAILED row of the table, the run goes on, and the script's
    exit status is 1 (`table.failed`). Checked on the script's own Table and step timing, in
    this process: a whole second run of the script cost the suite about half a minute."""
    from tests.conftest import load_bench

    gpu_check = load_bench("gpu_check")
    table = gpu_check.Table(torch.device("cpu"))
    with table.section("warm start", "LoRA r=4"):
        # one step cannot be timed after the first
        gpu_check.steady([{"train_s": 1.0, "readouts": 8}])
    with table.section("RecPO step", "G=4"):
        table.add("RecPO step", "G=4", 2.5, "s/step")
    assert table.failed
    failed = [r for r in table.rows if "FAILED" in r["note"]]
    assert [(r["what"], r["note"]) for r in failed] == \
        [("warm start", "FAILED: RuntimeError: need at least 2 training steps to time")]
    assert [r["what"] for r in table.rows] == ["warm start", "RecPO step"]  # it went on
    assert len(table.markdown().splitlines()) == 2 + len(table.rows)
    assert gpu_check.Table(torch.device("cpu")).failed is False


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_production_shape(tmp_path):
    proc, rows = run_check(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:]
