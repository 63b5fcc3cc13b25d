"""Champion promotion: a candidate clearly better on the same samples is promoted, one whose
paired interval straddles zero (or does not clear the margin) is rejected and the champion
stays; the first champion is checked against the transition baseline. The models' evaluations
and ranked lists are planted, so the statistics are known."""

from __future__ import annotations

import json
import shutil
from datetime import datetime

import pytest
from deltalake import DeltaTable

from r2ec import checkpoint
from r2ec_batch import delta_io, registry
from r2ec_batch.jobs import promote
from r2ec_batch.schemas import EVAL_RANKINGS, EVALUATIONS, TRAINING_SAMPLES

pytestmark = pytest.mark.spark


@pytest.fixture
def wh(ml_warehouse, tmp_path):
    out = tmp_path / "wh"
    for name in ("items", "training_samples"):
        shutil.copytree(ml_warehouse / name, out / name)
    return out


N_PAIRED = 1000


def _eval(spark, wh, version: str, hit_rank: dict[int, int]) -> float:
    """Plant `version`'s evaluation on the first N_PAIRED valid samples: the target at
    `hit_rank[sample_id]` (1..10) or missing (absent). Returns its NDCG@10."""
    import numpy as np
    import pandas as pd
    from pyspark.sql import functions as F

    valid = (delta_io.read(spark, wh, TRAINING_SAMPLES).filter(F.col("split") == "valid")
             .orderBy("sample_id").limit(N_PAIRED).select("sample_id", "target_item_id").toPandas())
    rows, gains = [], []
    for sid, target in zip(valid["sample_id"], valid["target_item_id"], strict=True):
        r = hit_rank.get(int(sid))
        gains.append(1 / np.log2(r + 1) if r else 0.0)
        for rank in range(1, 11):
            item = target if rank == r else f"filler-{rank}"
            rows.append((version, "valid", int(sid), rank, item, float(11 - rank)))
    delta_io.replace_where(
        spark.createDataFrame(pd.DataFrame(rows, columns=EVAL_RANKINGS.column_names),
                              EVAL_RANKINGS.schema),
        EVAL_RANKINGS, wh, {"model_version": version, "split": "valid"})
    ndcg = float(np.mean(gains))
    row = (version, "ml-100k", "valid", "ndcg", 10, ndcg, N_PAIRED, "greedy_reasoning",
           datetime(2026, 1, 1), None)
    delta_io.append(spark.createDataFrame([row], EVALUATIONS.schema), EVALUATIONS, wh)
    return ndcg


def _status(wh) -> dict[str, str]:
    reg = DeltaTable(str(wh / "model_registry")).to_pandas()
    return dict(zip(reg["model_version"], reg["status"], strict=True))


def _model(tiny_model_dir, tmp_path, name: str, bump: float):
    model, tok, prompt, _ = checkpoint.load(tiny_model_dir)
    with __import__("torch").no_grad():
        next(model.parameters()).add_(bump)
    return checkpoint.save(model, tok, tmp_path / name, prompt, base_model="t"), tmp_path / name


def test_promotion_on_paired_intervals(spark, wh, tiny_model_dir, tmp_path, capsys):
    import random

    models = [_model(tiny_model_dir, tmp_path, n, b) for n, b in
              (("a", 0.0), ("b", 1e-3), ("c", 2e-3), ("d", 3e-3))]
    (m1, d1), (m2, d2), (m3, d3), (m4, d4) = models
    v1, v2, v3, v4 = (m["model_version"] for m, _ in models)
    ids = sorted(DeltaTable(str(wh / "training_samples")).to_pandas().query("split == 'valid'")
                 ["sample_id"])[:N_PAIRED]
    rng = random.Random(0)
    # champion: the target at rank 10 for a random 10% of the samples (below the baseline)
    champ = {i: 10 for i in ids if rng.random() < 0.1}
    _eval(spark, wh, v1, champ)
    # First champion: promoted, but loudly flagged as below the transition baseline.
    assert promote.main(["--candidate", str(d1), "--warehouse", str(wh)]) == 0
    assert "does NOT beat the last-item transition baseline" in capsys.readouterr().out
    assert _status(wh) == {v1: "champion"}

    # Same hits as the champion on other samples (same rate): its mean may even be a little
    # higher, but the paired interval straddles zero -> rejected.
    noise = {i: 10 for i in ids if rng.random() < 0.11}
    n_noise = _eval(spark, wh, v2, noise)
    assert promote.main(["--candidate", str(d2), "--warehouse", str(wh)]) == 0
    out = capsys.readouterr().out
    assert "rejected" in out and f"paired over {N_PAIRED:,} samples" in out, out
    reg = DeltaTable(str(wh / "model_registry")).to_pandas().set_index("model_version")
    lo, hi = json.loads(reg.loc[v2, "metrics_json"])["ndcg10_difference_ci95"]
    assert lo < 0 < hi and n_noise > 0
    assert _status(wh) == {v1: "champion", v2: "rejected"}

    # Clearly better: every champion hit moves from rank 10 to rank 1, plus 10% more hits.
    better = {**{i: 1 for i in champ}, **{i: 2 for i in ids if i not in champ and rng.random() < 0.1}}
    _eval(spark, wh, v3, better)
    # ... but not by a margin larger than the whole gain: rejected
    assert promote.main(["--candidate", str(d3), "--margin", "0.5", "--unchanged-exit-code", "99",
                         "--warehouse", str(wh)]) == 99  # the DAG's "skipped": no Asset event
    assert "rejected" in capsys.readouterr().out
    _eval(spark, wh, v4, better)
    assert promote.main(["--candidate", str(d4), "--unchanged-exit-code", "99",
                         "--warehouse", str(wh)]) == 0
    assert "promoted" in capsys.readouterr().out
    assert _status(wh) == {v1: "retired", v2: "rejected", v3: "rejected", v4: "champion"}
    assert registry.resolve(spark, wh, "champion")[0] == str(d4.resolve())


@pytest.mark.slow
def test_require_baseline_refuses_a_first_champion_below_it(spark, wh, tiny_model_dir, tmp_path,
                                                             capsys):
    (m1, d1), (m2, d2) = (_model(tiny_model_dir, tmp_path, n, b) for n, b in (("a", 0.0),
                                                                           ("b", 1e-3)))
    ids = sorted(DeltaTable(str(wh / "training_samples")).to_pandas().query("split == 'valid'")
                 ["sample_id"])[:N_PAIRED]
    _eval(spark, wh, m1["model_version"], {i: 10 for i in ids[::10]})  # far below the baseline
    args = ["--require-baseline", "--warehouse", str(wh)]
    assert promote.main(["--candidate", str(d1), *args]) == 3
    assert "does NOT beat the last-item transition baseline" in capsys.readouterr().out
    assert _status(wh) == {m1["model_version"]: "rejected"}
    assert registry.champion(spark, wh) is None  # no champion rather than a poor one
    _eval(spark, wh, m2["model_version"], {i: 1 for i in ids})  # every target first: above it
    assert promote.main(["--candidate", str(d2), *args]) == 0
    assert "promoted" in capsys.readouterr().out
    assert _status(wh) == {m1["model_version"]: "rejected", m2["model_version"]: "champion"}


def test_candidate_without_evaluation_is_refused(spark, wh, tiny_model_dir, tmp_path, capsys):
    _, d = _model(tiny_model_dir, tmp_path, "x", 0.0)
    with pytest.raises(SystemExit) as e:
        promote.cli.run(promote.main, ["--candidate", str(d), "--warehouse", str(wh)])
    assert e.value.code == 2 and "run jobs/evaluate.py" in capsys.readouterr().err


def test_champion_is_a_version_not_a_folder(spark, wh, tiny_model_dir, tmp_path):
    """Rebuilding the champion's folder (or a fine-tune rewriting it) used to make every later
    job serve the new content as 'champion'. The registry pins the version: a folder that now
    holds another one is refused, naming both; the registered one still resolves."""
    from r2ec_batch.cli import JobError
    from r2ec_batch.jobs import embed_items

    (m1, d1), (m2, d2) = (_model(tiny_model_dir, tmp_path, "champ", 0.0),
                          _model(tiny_model_dir, tmp_path, "other", 0.01))
    v1, v2 = m1["model_version"], m2["model_version"]
    registry.register(spark, wh, m1, d1, "champion")
    assert registry.resolve_verified(spark, wh, "champion").version == v1
    shutil.rmtree(d1)
    shutil.copytree(d2, d1)  # the folder now holds a model the promotion gate never saw
    assert checkpoint.verify(d1)["model_version"] == v2  # it verifies against its own manifest
    with pytest.raises(JobError, match=f"holds {v2}, but the registry's entry is {v1}"):
        registry.resolve_verified(spark, wh, "champion")
    with pytest.raises(JobError, match=v1):
        embed_items.main(["--warehouse", str(wh)])
    assert registry.resolve_verified(spark, wh, str(d1)).version == v2  # by path: what it holds


@pytest.mark.slow
def test_concurrent_promotions_leave_exactly_one_champion(spark, wh, tiny_model_dir, tmp_path,
                                                         monkeypatch, caplog):
    """Two promotions at once in two processes (two JVMs and Delta clients): one in a child
    process, one in this test's session once the child's MERGE is under way, each MERGE slowed
    down so that both read the registry before either commits: the later one must meet the
    other's commit (the log says so) and the table ends with one champion, the last to commit,
    and the old one retired. (Two children race the same way at one more JVM start.)"""
    import logging
    import os
    import subprocess
    import sys
    import threading

    from tests.conftest import REPO

    (mx, dx), (ma, da), (mb, db) = (_model(tiny_model_dir, tmp_path, n, b)
                                    for n, b in (("x", 0.0), ("a", 1e-3), ("b", 2e-3)))
    registry.register(spark, wh, mx, dx, "champion")
    monkeypatch.setenv("R2EC_FAULT_SLOW_WRITE_S", "15")
    child = subprocess.Popen([sys.executable, str(REPO / "tests" / "promote_child.py"), str(wh),
                              str(da)], env={**os.environ, "PYTHONPATH": str(REPO)},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    here: dict[str, object] = {}

    def promote_here() -> None:
        try:
            registry.register(spark, wh, mb, db, "champion")
            here["ok"] = True
        except BaseException as e:  # noqa: BLE001 - reported by the assert below
            here["error"] = e

    mine = threading.Thread(target=promote_here, daemon=True)
    out = []
    with caplog.at_level(logging.WARNING, logger="r2ec_batch.delta_io"):
        for line in child.stdout:  # the child has read the registry once its MERGE is slowed
            out.append(line)
            if "slowing this write down on purpose" in line and not mine.is_alive():
                mine.start()
        child.wait(timeout=600)
        mine.join(timeout=600)
    logs = ["".join(out), caplog.text]
    assert child.returncode == 0, logs[0][-3000:]
    assert here == {"ok": True}, here
    assert sum("concurrent Delta commit conflicted" in x for x in logs) >= 1, \
        "no overlap: the test did not race the two promotions"
    status = _status(wh)
    assert sorted(status.values()) == ["champion", "retired", "retired"], status
    assert status[mx["model_version"]] == "retired"
    history = DeltaTable(str(wh / "model_registry")).history()
    last = max(history, key=lambda h: h["version"])
    assert last["operation"] == "MERGE"
    champion = next(v for v, s in status.items() if s == "champion")
    assert champion in (ma["model_version"], mb["model_version"])
