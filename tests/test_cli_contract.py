"""One exit-code contract for every job: bad flag values and corrupted artifacts are one line
on stderr with status 2, never a silent default or a traceback; and no job imports another."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


def test_a_misspelt_boolean_is_an_error_not_false(capsys):
    from r2ec_batch.jobs import train_recpo

    with pytest.raises(SystemExit) as e:
        train_recpo._args(["--stage", "warmstart", "--out", "x", "--ws-lora-enabled", "ture"])
    assert e.value.code == 2 and "not a boolean: 'ture'" in capsys.readouterr().err
    a = train_recpo._args(["--stage", "warmstart", "--out", "x", "--ws-lora-enabled", "off"])
    assert a.ws_lora_enabled is False


def test_a_broken_config_file_is_a_usage_error(tmp_path, capsys):
    from r2ec_batch.jobs import train_recpo

    bad = tmp_path / "c.json"
    bad.write_text("{not json")
    with pytest.raises(SystemExit) as e:
        train_recpo._args(["--stage", "recpo", "--out", "x", "--config", str(bad)])
    assert e.value.code == 2 and "--config" in capsys.readouterr().err


def test_no_job_imports_another_job():
    jobs = {p.stem for p in (REPO / "jobs").glob("*.py") if p.stem != "__init__"}
    for path in (REPO / "jobs").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                named = {a.name for a in node.names}
                assert not (node.module == "r2ec_batch.jobs" and named & jobs), path.name
                assert not node.module.startswith(("r2ec_batch.jobs.", "jobs")), path.name


@pytest.mark.spark
def test_a_corrupted_checkpoint_is_one_line_and_status_2(ml_warehouse, tmp_path):
    """Through spark-submit, as a user runs it: the refusal happens before any work."""
    from r2ec_batch.jobs import build_model

    model = tmp_path / "m"
    assert build_model.main(["--out", str(model), "--register", "none", "--warehouse",
                             str(ml_warehouse), "--hidden-size", "64", "--num-heads", "2",
                             "--head-dim", "32", "--intermediate-size", "128",
                             "--vocab-size", "2000"]) == 0
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    res = subprocess.run([str(REPO / "bin" / "r2ec-submit"), "jobs/embed_items.py", "--model",
                          str(model), "--warehouse", str(ml_warehouse)],
                         capture_output=True, text=True, timeout=300, cwd=REPO,
                         env={**os.environ, "PYSPARK_PYTHON": sys.executable,
                              "PYSPARK_DRIVER_PYTHON": sys.executable})
    # spark-submit hands the Python driver's stderr to its own stdout: read both
    out = res.stdout + res.stderr
    assert res.returncode == 2, out[-2000:]
    err_lines = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert len(err_lines) == 1 and "corrupted or truncated" in err_lines[0], out[-3000:]
    assert "Traceback" not in out
