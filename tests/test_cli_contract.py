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
    from r2ec_batch.jobs import train as train_job

    with pytest.raises(SystemExit) as e:
        train_job.parse_args(["--stage", "warmstart", "--out", "x", "--ws-lora-enabled", "ture"])
    assert e.value.code == 2 and "not a boolean: 'ture'" in capsys.readouterr().err
    a = train_job.parse_args(["--stage", "warmstart", "--out", "x", "--ws-lora-enabled", "off"])
    assert a.ws_lora_enabled is False


def test_a_broken_config_file_is_a_usage_error(tmp_path, capsys):
    from r2ec_batch.jobs import train as train_job

    bad = tmp_path / "c.json"
    bad.write_text("{not json")
    with pytest.raises(SystemExit) as e:
        train_job.parse_args(["--stage", "recpo", "--out", "x", "--config", str(bad)])
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
@pytest.mark.slow
def test_a_corrupted_checkpoint_is_one_line_and_status_2(scored_copy, tmp_path):
    """Through spark-submit, as a user runs it: the refusal happens before any work."""
    import shutil

    wh, champion = scored_copy
    model = tmp_path / "m"
    shutil.copytree(champion, model)  # the shared model folder stays whole
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    res = subprocess.run([str(REPO / "bin" / "r2ec-submit"), "jobs/embed_items.py", "--model",
                          str(model), "--warehouse", str(wh)],
                         capture_output=True, text=True, timeout=300, cwd=REPO,
                         env={**os.environ, "PYSPARK_PYTHON": sys.executable,
                              "PYSPARK_DRIVER_PYTHON": sys.executable})
    # spark-submit hands the Python driver's stderr to its own stdout: read both
    out = res.stdout + res.stderr
    assert res.returncode == 2, out[-2000:]
    err_lines = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert len(err_lines) == 1 and "corrupted or truncated" in err_lines[0], out[-3000:]
    assert "Traceback" not in out


@pytest.mark.parametrize("flag, value", [("--top-k", "1000000000"), ("--top-k", "0"),
                                         ("--max-new-tokens", "100000"), ("--samples", "1000"),
                                         ("--chunk-size", "0")])
def test_knobs_have_bounds(flag, value, capsys):
    """top_k 1e9 asked for ~256 GB per worker, a huge reasoning budget held the GPU pool for
    hours: every such knob has a maximum as well as a minimum."""
    from r2ec_batch.jobs import score

    with pytest.raises(SystemExit) as e:
        score.main(["--run-date", "2026-01-01", flag, value])
    assert e.value.code == 2 and f"{value} is outside [" in capsys.readouterr().err


def test_predicate_values_cannot_widen_a_replace_where():
    """replaceWhere's predicate quotes every value: a value that closes its quote and adds an
    OR (which would replace every partition) stays one literal."""
    from r2ec_batch.delta_io import sql_identifier, sql_string

    assert sql_string("a' OR variant = 'b") == "'a\\' OR variant = \\'b'"
    assert sql_string("x\\") == "'x\\\\'"  # a trailing backslash cannot escape the quote
    with pytest.raises(ValueError):
        sql_identifier("variant` = 'a' OR `x")
    with pytest.raises(ValueError):
        sql_string("a\x00")


@pytest.mark.spark
def test_replace_where_with_a_quote_replaces_only_its_literal(spark, tmp_path):
    from datetime import date

    from deltalake import DeltaTable

    from r2ec_batch import delta_io
    from r2ec_batch.schemas import RECOMMENDATIONS

    def rows(variant, score):
        return spark.createDataFrame([(date(2026, 1, 1), variant, "r1", "u1", 1, "i1", score, "m")],
                                     RECOMMENDATIONS.schema)

    wh = tmp_path / "wh"
    delta_io.append(rows("a", 1.0).unionByName(rows("b", 1.0)), RECOMMENDATIONS, wh)
    evil = "a' OR variant = 'b"
    delta_io.replace_where(rows(evil, 2.0), RECOMMENDATIONS, wh, {"variant": evil})
    got = DeltaTable(str(wh / "recommendations")).to_pandas().set_index("variant")["score"]
    assert got.to_dict() == {"a": 1.0, "b": 1.0, evil: 2.0}  # a and b untouched


def test_resume_with_a_remote_out_is_refused_not_restarted(capsys):
    """The training state is not uploaded, so a remote --out with --resume would silently start
    from scratch: refused instead."""
    from r2ec_batch.jobs import train as train_job

    with pytest.raises(SystemExit) as e:
        train_job.parse_args(["--stage", "recpo", "--out", "s3a://bucket/models/x", "--resume"])
    assert e.value.code == 2 and "--resume needs a local --out" in capsys.readouterr().err


def test_a_spark_properties_file_takes_spark_keys_only(tmp_path):
    """$R2EC_SPARK_PROPERTIES (read by build_spark, passed on by bin/r2ec-submit): the three
    separators of a properties file; anything but a spark.* setting stops with its line; a
    path that is not a file stops bin/r2ec-submit before a JVM starts."""
    from r2ec_batch.cli import JobError
    from r2ec_batch.session import properties_file

    good = tmp_path / "good.conf"
    good.write_text("# small data\nspark.a 1\n\nspark.b=x=y\nspark.c : two words\n")
    assert properties_file(good) == {"spark.a": "1", "spark.b": "x=y", "spark.c": "two words"}
    for bad in ("java.io.tmpdir /tmp", "spark.a", "--conf spark.a=1"):
        path = tmp_path / "bad.conf"
        path.write_text(f"spark.ok 1\n{bad}\n")
        with pytest.raises(JobError, match=r"bad\.conf:2: expected 'spark\.<name> <value>'"):
            properties_file(path)
    done = subprocess.run([str(REPO / "bin" / "r2ec-submit"), "jobs/ingest.py", "--help"],
                          env={**os.environ, "R2EC_SPARK_PROPERTIES": str(tmp_path / "none")},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "is not a file" in done.stderr
