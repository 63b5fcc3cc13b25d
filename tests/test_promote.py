"""Champion promotion: a better candidate is promoted, a worse one is rejected and the champion
stays; the first champion is checked against the transition baseline."""

from __future__ import annotations

import shutil
from datetime import datetime

import pytest
from deltalake import DeltaTable

from r2ec import checkpoint
from r2ec_batch import delta_io, registry
from r2ec_batch.jobs import promote
from r2ec_batch.schemas import EVALUATIONS

pytestmark = pytest.mark.spark


@pytest.fixture
def wh(ml_warehouse, tmp_path):
    out = tmp_path / "wh"
    for name in ("items", "training_samples"):
        shutil.copytree(ml_warehouse / name, out / name)
    return out


def _eval(spark, wh, version: str, ndcg10: float) -> None:
    row = (version, "ml-100k", "valid", "greedy_reasoning", "ndcg", 10, ndcg10, 100,
           datetime(2026, 1, 1))
    df = spark.createDataFrame([row], "model_version string, dataset string, split string, "
                                      "mode string, metric string, k int, value double, "
                                      "n_samples long, evaluated_at timestamp")
    delta_io.merge_into(df.select(*EVALUATIONS.column_names), EVALUATIONS, wh,
                        update_columns=["value"])


def _status(wh) -> dict[str, str]:
    reg = DeltaTable(str(wh / "model_registry")).to_pandas()
    return dict(zip(reg["model_version"], reg["status"], strict=True))


def _model(tiny_model_dir, tmp_path, name: str, bump: float):
    model, tok, prompt, _ = checkpoint.load(tiny_model_dir)
    with __import__("torch").no_grad():
        next(model.parameters()).add_(bump)
    return checkpoint.save(model, tok, tmp_path / name, prompt, base_model="t"), tmp_path / name


def test_promotion_both_ways(spark, wh, tiny_model_dir, tmp_path, capsys):
    (m1, d1), (m2, d2), (m3, d3) = (_model(tiny_model_dir, tmp_path, n, b)
                                    for n, b in (("a", 0.0), ("b", 1e-3), ("c", 2e-3)))
    v1, v2, v3 = m1["model_version"], m2["model_version"], m3["model_version"]
    _eval(spark, wh, v1, 0.0001)
    # First champion: promoted, but loudly flagged as below the transition baseline.
    assert promote.main(["--candidate", str(d1), "--warehouse", str(wh)]) == 0
    assert "does NOT beat the last-item transition baseline" in capsys.readouterr().out
    assert _status(wh) == {v1: "champion"}

    _eval(spark, wh, v2, 0.0500)  # better than the champion by more than the margin
    assert promote.main(["--candidate", str(d2), "--margin", "0.01", "--warehouse", str(wh)]) == 0
    assert "promoted" in capsys.readouterr().out
    assert _status(wh) == {v1: "retired", v2: "champion"}

    _eval(spark, wh, v3, 0.0550)  # better, but not by the margin: rejected
    assert promote.main(["--candidate", str(d3), "--margin", "0.01", "--warehouse", str(wh)]) == 0
    assert "rejected" in capsys.readouterr().out
    assert _status(wh) == {v1: "retired", v2: "champion", v3: "rejected"}
    assert registry.resolve(spark, wh, "champion") == str(d2.resolve())


def test_candidate_without_evaluation_is_refused(spark, wh, tiny_model_dir, tmp_path, capsys):
    _, d = _model(tiny_model_dir, tmp_path, "x", 0.0)
    with pytest.raises(SystemExit) as e:
        promote.cli.run(promote.main, ["--candidate", str(d), "--warehouse", str(wh)])
    assert e.value.code == 2 and "run jobs/evaluate.py" in capsys.readouterr().err
