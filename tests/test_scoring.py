"""Batch scoring through Spark pandas UDFs on real ML-100k with a small model:
embed_items -> score (+ publish) -> evaluate, re-runs, kill safety, mismatch refusal, fallbacks.
The `scored` warehouse (conftest) is shared with tests/test_publishing.py."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from deltalake import DeltaTable

from r2ec_batch.cli import run
from r2ec_batch.jobs import build_model, embed_items, evaluate, score
from r2ec_batch.jobs.report import published
from tests.conftest import ML100K_AS_OF, REPO, RUN, SMALL, sigkill_when

pytestmark = [pytest.mark.spark, pytest.mark.slow]


def _t(wh: Path, name: str) -> pd.DataFrame:
    return DeltaTable(str(wh / name)).to_pandas()


def _pub(wh: Path, name: str, run_date: str = RUN, variant: str = "champion") -> pd.DataFrame:
    """What analysts see: the published run of (run_date, variant)."""
    rows = published(str(wh), name, variant)
    return rows[rows["run_date"].astype(str) == run_date].reset_index(drop=True)


def test_every_user_gets_k_distinct_unseen_items_and_a_rationale(scored):
    wh, _ = scored
    recs = _pub(wh, "recommendations")
    hist = _t(wh, "user_histories")
    hist = hist[hist["as_of_date"].astype(str) == ML100K_AS_OF].set_index("user_id")
    assert recs["user_id"].nunique() == 943 and len(recs) == 9430
    for user, g in recs.groupby("user_id"):
        assert sorted(g["rank"]) == list(range(1, 11))
        assert g["item_id"].is_unique
        assert not set(g["item_id"]) & set(hist.loc[user, "history_item_ids"]), user
        assert g.sort_values("rank")["score"].is_monotonic_decreasing
    rats = _pub(wh, "rationales")
    assert len(rats) == 943 and rats["user_id"].is_unique and rats["fallback"].isna().all()
    assert (rats["tokens"] <= 6).all() and recs["model_version"].nunique() == 1
    # what analysts read: no item tokens, history references or special tokens left
    assert not rats["text"].str.contains(r"<i\d+>|<\||#\d+|<answer>", regex=True).any()
    emb = _t(wh, "item_embeddings")  # other tests may embed other models in this warehouse
    emb = emb[emb["model_version"] == recs["model_version"].iloc[0]]
    assert len(emb) == 1682 and emb["embedding"].map(len).nunique() == 1


def test_embed_items_skips_when_up_to_date(scored, capsys):
    wh, _ = scored
    v = DeltaTable(str(wh / "item_embeddings")).version()
    assert embed_items.main(["--warehouse", str(wh)]) == 0
    assert "up to date" in capsys.readouterr().out
    assert DeltaTable(str(wh / "item_embeddings")).version() == v


def test_rerun_same_date_is_identical(scored):
    wh, _ = scored
    key = ["user_id", "rank"]
    before = _pub(wh, "recommendations").sort_values(key).reset_index(drop=True)
    assert score.main(["--run-date", RUN, "--warehouse", str(wh), "--max-new-tokens", "6",
                       "--publish"]) == 0
    after = _pub(wh, "recommendations").sort_values(key).reset_index(drop=True)
    assert after["run_id"].nunique() == 1 and after["run_id"][0] != before["run_id"][0]
    assert after[key + ["item_id", "model_version"]].equals(before[key + ["item_id", "model_version"]])
    np.testing.assert_allclose(after["score"], before["score"], rtol=1e-5)
    assert len(_pub(wh, "rationales")) == 943
    # the table keeps at most the published run and the one before it for a (date, variant)
    raw = _t(wh, "recommendations")
    raw = raw[(raw["run_date"].astype(str) == RUN) & (raw["variant"] == "champion")]
    assert raw["run_id"].nunique() <= 2


def test_incremental_carries_unchanged_users(scored, capsys):
    wh, _ = scored
    assert score.main(["--run-date", "1998-04-24", "--as-of", RUN, "--incremental", "--publish",
                       "--warehouse", str(wh), "--max-new-tokens", "6"]) == 0
    out = capsys.readouterr().out
    assert "scored 0 users" in out and "943 carried over" in out and "published run" in out
    cols = ["user_id", "rank", "item_id", "score", "model_version"]
    day1 = _pub(wh, "recommendations")[cols].sort_values(cols[:2]).reset_index(drop=True)
    day2 = _pub(wh, "recommendations", "1998-04-24")[cols].sort_values(cols[:2]).reset_index(drop=True)
    assert day2.equals(day1)


def test_unknown_user_gets_popularity_fallback(scored, capsys):
    wh, _ = scored
    # Two users only: the audit against user_histories (943 users) refuses to publish the run.
    assert score.main(["--run-date", "1998-05-01", "--as-of", RUN, "--users", "196,no-such-user",
                       "--warehouse", str(wh), "--max-new-tokens", "6", "--top-k", "5",
                       "--publish"]) == 1
    assert "FAIL users with recommendations == users with histories" in capsys.readouterr().out
    assert _pub(wh, "recommendations", "1998-05-01").empty  # nothing published for that date
    recs = _t(wh, "recommendations")
    recs = recs[recs["run_date"].astype(str) == "1998-05-01"]
    assert set(recs["user_id"]) == {"196", "no-such-user"}
    ghost = recs[recs["user_id"] == "no-such-user"].sort_values("rank")
    assert len(ghost) == 5 and ghost["item_id"].is_unique
    rats = _t(wh, "rationales").set_index("user_id")
    rats = rats[rats["run_date"].astype(str) == "1998-05-01"]
    assert rats.loc["no-such-user", "fallback"] == "popularity"
    assert rats.loc["no-such-user", "text"] == "" and pd.isna(rats.loc["196", "fallback"])
    inter = _t(wh, "interactions")
    top = inter.groupby("item_id").size().sort_values(ascending=False)
    assert list(ghost["item_id"]) == list(top.index[:5])


def test_model_index_mismatch_is_refused(scored, tmp_path, capsys):
    wh, model = scored
    other = tmp_path / "other"
    assert build_model.main(["--out", str(other), "--register", "none", "--warehouse", str(wh),
                             "--seed", "1", *SMALL]) == 0
    with pytest.raises(SystemExit) as e:  # no index for that model yet
        run(score.main, ["--run-date", RUN, "--model", str(other), "--warehouse", str(wh)])
    assert e.value.code == 2 and "run jobs/embed_items.py" in capsys.readouterr().err
    version = json.loads((other / "manifest.json").read_text())["model_version"]
    champion = json.loads((model / "manifest.json").read_text())["model_version"]
    shutil.copytree(wh / "_index" / champion, wh / "_index" / version)  # someone else's index
    with pytest.raises(SystemExit) as e:
        run(score.main, ["--run-date", RUN, "--model", str(other), "--warehouse", str(wh)])
    assert e.value.code == 2
    assert f"built for model {champion}, not for {version}" in capsys.readouterr().err
    shutil.rmtree(wh / "_index" / version)


def test_evaluate_writes_rankings_and_metrics_that_recompute(scored):
    wh, _ = scored
    assert evaluate.main(["--split", "test", "--limit", "300", "--warehouse", str(wh),
                          "--max-new-tokens", "6"]) == 0
    ev = _t(wh, "evaluations")  # appended: this evaluation is the newest of its model/split
    ev = ev[(ev["split"] == "test") & (ev["evaluated_at"] == ev[ev["split"] == "test"]["evaluated_at"].max())]
    quality = ev[ev["metric"].str.startswith("rationale_")]
    assert {"rationale_distinct_lines", "rationale_internal_tokens"} <= set(quality["metric"])
    assert quality[quality["metric"] == "rationale_internal_tokens"]["value"].item() == 0.0
    beyond = ev[ev["metric"].isin(["coverage", "popularity_percentile", "popularity_bias",
                                   "novelty", "diversity"])]
    assert len(beyond) == 15 and set(beyond["k"]) == {5, 10, 20}
    cov = beyond[beyond["metric"] == "coverage"].set_index("k")["value"]
    assert 0 < cov[5] <= cov[10] <= cov[20] <= 1  # longer lists reach more of the catalogue
    ev = ev[ev["metric"].isin(["hit", "ndcg"])]
    assert len(ev) == 6 and set(ev["k"]) == {5, 10, 20} and (ev["n_samples"] == 300).all()
    ranks = _t(wh, "eval_rankings")  # other tests may have ranked other splits and models
    ranks = ranks[(ranks["split"] == "test") & (ranks["model_version"] == ev["model_version"].iloc[0])]
    assert len(ranks) == 300 * 20
    assert cov[20] == pytest.approx(ranks["item_id"].nunique() / len(_t(wh, "items")))
    samples = _t(wh, "training_samples").set_index("sample_id")
    pos = []
    for sid, g in ranks.groupby("sample_id"):
        items = list(g.sort_values("rank")["item_id"])
        target = samples.loc[sid, "target_item_id"]
        pos.append(items.index(target) + 1 if target in items else 0)
        assert not set(items) & set(samples.loc[sid, "history_item_ids"])
    pos = np.array(pos)
    for k in (5, 10, 20):
        hit = (pos > 0) & (pos <= k)
        # a miss (pos 0) contributes 0; log2(max(pos,1)+1) keeps the unused branch finite
        want = np.where(hit, 1 / np.log2(np.maximum(pos, 1) + 1), 0).mean()
        got = ev[(ev["metric"] == "ndcg") & (ev["k"] == k)]["value"].item()
        assert got == pytest.approx(want, abs=1e-9)
        assert ev[(ev["metric"] == "hit") & (ev["k"] == k)]["value"].item() == pytest.approx(hit.mean())


def test_score_killed_mid_write_keeps_what_readers_see(scored, tmp_path):
    wh, _ = scored
    table = wh / "recommendations"
    key = ["user_id", "rank"]
    before = _pub(wh, "recommendations").sort_values(key).reset_index(drop=True)
    files = {p.name for p in table.rglob("*.parquet")}
    args = ["jobs/score.py", "--run-date", RUN, "--warehouse", str(wh), "--max-new-tokens", "6"]
    sigkill_when(args, lambda: bool({p.name for p in table.rglob("*.parquet")} - files), 3)
    after = _pub(wh, "recommendations").sort_values(key).reset_index(drop=True)
    assert after.equals(before)
    done = subprocess.run([str(REPO / "bin" / "r2ec-submit"), *args, "--publish"], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _pub(wh, "recommendations")["run_id"][0] != before["run_id"][0]


def test_business_rules_hold_on_every_row(scored, spark, tmp_path):
    """Everything a user ever saw, a blocklist and unavailable items are never recommended, and
    every list is still k long (the rules act inside the index search)."""
    from pyspark.sql import functions as F

    from r2ec_batch import delta_io
    from r2ec_batch.schemas import ITEM_BLOCKLIST, ITEMS

    wh = tmp_path / "wh"
    shutil.copytree(scored[0], wh)  # a copy: the items table is changed below
    base = _pub(wh, "recommendations")
    frequent = list(base["item_id"].value_counts().index[:6])  # would be recommended a lot
    blocked, unavailable = frequent[:3], frequent[3:]
    delta_io.overwrite(spark.createDataFrame(
        [(i, "test", pd.Timestamp("2026-01-01").to_pydatetime()) for i in blocked],
        ITEM_BLOCKLIST.schema), ITEM_BLOCKLIST, wh)
    items = delta_io.read(spark, wh, ITEMS).localCheckpoint()
    delta_io.overwrite(items.withColumn("attributes", F.when(
        F.col("item_id").isin(unavailable),
        F.map_concat("attributes", F.create_map(F.lit("available"), F.lit("false"))))
        .otherwise(F.col("attributes"))), ITEMS, wh)
    inter = _t(wh, "interactions")
    heavy = list(inter["user_id"].value_counts().index[:40])  # long pasts: "all" matters
    assert score.main(["--run-date", RUN, "--variant", "rules", "--users", ",".join(heavy),
                       "--exclude-seen", "all", "--available-attribute", "available",
                       "--max-new-tokens", "4", "--warehouse", str(wh)]) == 0
    recs = _t(wh, "recommendations")  # a run for some users: audited runs cover them all
    recs = recs[recs["variant"] == "rules"]
    assert recs["user_id"].nunique() == 40 and len(recs) == 400  # k = 10 each
    assert not set(recs["item_id"]) & set(blocked + unavailable)
    end = pd.Timestamp(ML100K_AS_OF, tz="UTC") + pd.Timedelta(days=1)
    seen = inter[inter["ts"] < end].groupby("user_id")["item_id"].apply(set)
    for user, g in recs.groupby("user_id"):
        assert sorted(g["rank"]) == list(range(1, 11)) and g["item_id"].is_unique
        assert not set(g["item_id"]) & seen[user], user
    # the heavy users' window-only lists did contain older seen items: the rule changed lists
    window_only = base[base["user_id"].isin(heavy)]
    assert any(set(g["item_id"]) & seen[u] for u, g in window_only.groupby("user_id"))
