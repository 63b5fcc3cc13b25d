"""Batch scoring through Spark pandas UDFs on real ML-100k users (the slice) with a small model:
embed_items -> score (+ publish) -> evaluate, re-runs, kill safety, mismatch refusal, fallbacks.
The `scored` warehouse (conftest) is shared and only read; a test that writes tables works on
its own copy (`scored_copy`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from deltalake import DeltaTable

from r2ec_batch.cli import run
from r2ec_batch.jobs import build_model, embed_items, evaluate, score
from r2ec_batch.live_runs import published
from tests.conftest import ML100K_AS_OF, RUN, SLICE_USERS, SMALL, sigkill_when

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
    assert recs["user_id"].nunique() == SLICE_USERS and len(recs) == 10 * SLICE_USERS
    for user, g in recs.groupby("user_id"):
        assert sorted(g["rank"]) == list(range(1, 11))
        assert g["item_id"].is_unique
        assert not set(g["item_id"]) & set(hist.loc[user, "history_item_ids"]), user
        assert g.sort_values("rank")["score"].is_monotonic_decreasing
    rats = _pub(wh, "rationales")
    assert len(rats) == SLICE_USERS and rats["user_id"].is_unique and rats["fallback"].isna().all()
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


def test_rerun_same_date_is_identical(scored_copy):
    wh, _ = scored_copy
    key = ["user_id", "rank"]
    before = _pub(wh, "recommendations").sort_values(key).reset_index(drop=True)
    assert score.main(["--run-date", RUN, "--warehouse", str(wh), "--max-new-tokens", "6",
                       "--publish"]) == 0
    after = _pub(wh, "recommendations").sort_values(key).reset_index(drop=True)
    assert after["run_id"].nunique() == 1 and after["run_id"][0] != before["run_id"][0]
    assert after[key + ["item_id", "model_version"]].equals(before[key + ["item_id", "model_version"]])
    np.testing.assert_allclose(after["score"], before["score"], rtol=1e-5)
    assert len(_pub(wh, "rationales")) == SLICE_USERS
    # Scoring never deletes a run (a publication of it may be in flight; maintain_tables removes
    # never-published runs after their window): the one that was live stays whole beside the new.
    raw = _t(wh, "recommendations")
    raw = raw[(raw["run_date"].astype(str) == RUN) & (raw["variant"] == "champion")]
    per_run = raw.groupby("run_id").size()
    assert per_run[before["run_id"][0]] == per_run[after["run_id"][0]] == 10 * SLICE_USERS


def test_incremental_rescores_only_the_user_whose_history_changed(scored, spark, tmp_path,
                                                                 capsys):
    """A day on which one user watched one more film: --incremental re-scores that user alone
    and carries every other list over from the day before, unchanged."""
    from pyspark.sql import functions as F

    from r2ec_batch import delta_io
    from r2ec_batch.jobs import build_histories
    from r2ec_batch.schemas import INTERACTIONS

    wh = tmp_path / "wh"
    shutil.copytree(scored[0], wh)  # this test's own copy: it adds an event and a run
    day2, user = "1998-04-24", "1"
    inter = delta_io.read(spark, wh, INTERACTIONS)
    seen = {r["item_id"] for r in inter.filter(F.col("user_id") == user).collect()}
    unseen = next(i for i in sorted(DeltaTable(str(wh / "items")).to_pandas()["item_id"])
                  if i not in seen)
    event = (inter.filter(F.col("user_id") == user).limit(1)
             .withColumn("item_id", F.lit(unseen))
             .withColumn("ts", F.lit(f"{day2} 12:00:00").cast("timestamp"))
             .withColumn("source_line", F.lit(10**9).cast("long")))
    delta_io.append(event, INTERACTIONS, wh)
    w = ["--warehouse", str(wh)]
    assert build_histories.main(["--as-of", day2, "--skip-samples", *w]) == 0
    capsys.readouterr()
    assert score.main(["--run-date", day2, "--as-of", day2, "--incremental", "--publish",
                       "--max-new-tokens", "6", *w]) == 0
    out = capsys.readouterr().out
    assert "scored 1 users" in out and f"{SLICE_USERS - 1} carried over" in out and "published run" in out
    cols = ["user_id", "rank", "item_id", "score", "model_version"]
    before = _pub(wh, "recommendations")[cols].sort_values(cols[:2]).reset_index(drop=True)
    after = _pub(wh, "recommendations", day2)[cols].sort_values(cols[:2]).reset_index(drop=True)
    others = after["user_id"] != user
    assert after[others].reset_index(drop=True).equals(
        before[before["user_id"] != user].reset_index(drop=True))
    assert (after["user_id"] == user).sum() == 10  # the re-scored user has a whole list
    rats = {d: _pub(wh, "rationales", d).set_index("user_id")["history_hash"] for d in (RUN, day2)}
    assert rats[day2][user] != rats[RUN][user]
    assert (rats[day2].drop(user) == rats[RUN].reindex(rats[day2].drop(user).index)).all()


def test_unknown_user_gets_popularity_fallback(scored_copy, capsys):
    wh, _ = scored_copy
    # Two users only: the audit against user_histories (every user) refuses to publish the run.
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


def test_model_index_mismatch_is_refused(scored_copy, tmp_path, capsys):
    wh, model = scored_copy
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


def test_evaluate_writes_rankings_and_metrics_that_recompute(scored_copy):
    wh, _ = scored_copy
    n = 150  # of the slice's 200 test samples
    assert evaluate.main(["--split", "test", "--limit", str(n), "--warehouse", str(wh),
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
    ev = ev[ev["metric"].isin(["hit", "ndcg"])]
    assert len(ev) == 6 and set(ev["k"]) == {5, 10, 20} and (ev["n_samples"] == n).all()
    ranks = _t(wh, "eval_rankings")  # other tests may have ranked other splits and models
    ranks = ranks[(ranks["split"] == "test") & (ranks["model_version"] == ev["model_version"].iloc[0])]
    assert len(ranks) == n * 20
    n_items = len(_t(wh, "items"))
    for k in (5, 10, 20):  # coverage@k: distinct items in the first k of every list / catalogue
        assert cov[k] == pytest.approx(ranks[ranks["rank"] <= k]["item_id"].nunique() / n_items)
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


def test_score_killed_mid_write_keeps_what_readers_see(scored_copy, tmp_path):
    wh, _ = scored_copy
    table = wh / "recommendations"
    key = ["user_id", "rank"]
    before = _pub(wh, "recommendations").sort_values(key).reset_index(drop=True)
    files = {p.name for p in table.rglob("*.parquet")}
    args = ["jobs/score.py", "--run-date", RUN, "--warehouse", str(wh), "--max-new-tokens", "6"]
    sigkill_when(args, lambda: bool({p.name for p in table.rglob("*.parquet")} - files), 3)
    after = _pub(wh, "recommendations").sort_values(key).reset_index(drop=True)
    assert after.equals(before)
    assert score.main([*args[1:], "--publish"]) == 0  # the re-run, in this process
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


def test_a_failing_user_costs_only_itself_and_is_counted(scored_copy, spark, capsys):
    """60 users, one of them planted to fail (R2EC_FAULT_FAIL_KEY: its chunk raises, as a
    title the tokenizer rejects would), with a batch budget that also forces the out-of-memory
    path (64 users do not fit, 4 do): every other user is scored as in the normal run, the
    planted one gets the popular list with fallback 'error' and the error as rationale; the
    audit refuses the run under the default error budget (0.1%) and publishes it, with the
    count, under a larger one."""
    import os
    import subprocess

    from pyspark.sql import functions as F

    from r2ec.data import histories, times
    from r2ec.model import R2ec
    from r2ec_batch import delta_io
    from r2ec_batch.jobs import publish
    from r2ec_batch.schemas import USER_HISTORIES
    from tests.conftest import REPO

    wh, model_dir = scored_copy
    day = "1998-05-02"
    hist = (delta_io.read(spark, wh, USER_HISTORIES).filter(F.col("as_of_date") == F.lit(RUN))
            .orderBy("user_id").limit(60).localCheckpoint())
    delta_io.replace_partition(hist, USER_HISTORIES, wh, "as_of_date", RUN)
    pdf = hist.toPandas()
    bad = pdf["user_id"].iloc[17]
    r2ec = R2ec.load(model_dir, device="cpu")
    lengths = [len(p) + 6 for p in r2ec.user_prompts(histories(pdf), times([pd.Timestamp(RUN)] * 60))]
    budget = 4 * max(lengths)
    assert sorted(lengths)[len(lengths) // 2] * 64 > budget  # a chunk of 64 does not fit

    args = ["--run-date", day, "--as-of", RUN, "--warehouse", str(wh), "--max-new-tokens", "6"]
    done = subprocess.run([str(REPO / "bin" / "r2ec-submit"), "jobs/score.py", *args,
                           "--max-batch-tokens", str(budget), "--publish"], cwd=REPO,
                          env={**os.environ, "R2EC_FAULT_FAIL_KEY": bad},
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "1 scored with an error" in done.stdout
    assert "FAIL users scored with an error <= 0.10% of users (1)" in done.stdout
    assert _pub(wh, "recommendations", day).empty  # over the budget: nothing published

    rats = _t(wh, "rationales")
    rats = rats[rats["run_date"].astype(str) == day].set_index("user_id")
    assert len(rats) == 60 and rats.loc[bad, "fallback"] == "error"
    assert rats.loc[bad, "text"] == f"ValueError: planted failure for {bad} (R2EC_FAULT_FAIL_KEY)"
    assert rats.drop(bad)["fallback"].isna().all()  # the ordinary users, reasoned as usual
    recs = _t(wh, "recommendations")
    recs = recs[recs["run_date"].astype(str) == day]
    mine = recs[recs["user_id"] == bad].sort_values("rank")
    assert len(mine) == 10 and not set(mine["item_id"]) & set(pdf.set_index("user_id").loc[
        bad, "history_item_ids"])
    # the others' lists are those of the normal run (chunks of 64, no budget) for the same users
    normal_run = _pub(wh, "recommendations")
    for user, g in recs[recs["user_id"] != bad].groupby("user_id"):
        want = normal_run[normal_run["user_id"] == user].sort_values("rank")["item_id"].tolist()
        assert g.sort_values("rank")["item_id"].tolist() == want, user

    assert publish.main([*args[:-2], "--max-error-rate", "0.02"]) == 0
    assert len(_pub(wh, "recommendations", day)) == 600
    runs = _t(wh, "published_runs")
    assert runs[runs["run_date"].astype(str) == day]["error_users"].tolist() == [1]


def test_a_run_killed_mid_way_resumes_to_the_same_lists(scored_copy, spark, capsys):
    """200 users in slices of 50: the driver is SIGKILLed after two slices are committed (and
    one slice is then cut between its two commits by hand, as a kill there would leave it);
    `--resume RUN_ID` scores only the users the run does not hold, nobody twice, and the lists
    equal those of the clean run; the ledger holds both parts and what each cost."""
    import os
    import subprocess

    from pyspark.sql import functions as F

    from r2ec_batch import delta_io
    from r2ec_batch.schemas import RATIONALES, USER_HISTORIES
    from tests.conftest import REPO

    wh, _ = scored_copy
    day = "1998-05-03"
    hist = (delta_io.read(spark, wh, USER_HISTORIES).filter(F.col("as_of_date") == F.lit(RUN))
            .orderBy("user_id").limit(200).localCheckpoint())
    delta_io.replace_partition(hist, USER_HISTORIES, wh, "as_of_date", RUN)
    args = ["--run-date", day, "--as-of", RUN, "--warehouse", str(wh), "--max-new-tokens", "6",
            "--commit-users", "50"]
    killed = subprocess.run([str(REPO / "bin" / "r2ec-submit"), "jobs/score.py", *args],
                            cwd=REPO, env={**os.environ, "R2EC_FAULT_KILL_AFTER_SLICES": "2"},
                            capture_output=True, text=True, timeout=900)
    assert killed.returncode == -9 or killed.returncode == 137, killed.stderr[-3000:]
    ledger = _t(wh, "scoring_runs")
    ledger = ledger[ledger["run_date"].astype(str) == day]
    assert len(ledger) == 1 and pd.isna(ledger["finished_at"].iloc[0])  # died before the end
    run_id = ledger["run_id"].iloc[0]
    rats = _t(wh, "rationales")
    held = set(rats[rats["run_id"] == run_id]["user_id"])
    assert 0 < len(held) < 200
    cut = sorted(held)[:7]  # a slice stopped between its commits: recommendations, no rationale
    delta_io.delete_matching(spark.createDataFrame([(run_id, u) for u in cut],
                                                   "run_id string, user_id string"),
                             RATIONALES, wh, ["run_id", "user_id"])

    with pytest.raises(SystemExit) as e:  # the same run cannot be continued with other settings
        run(score.main, [*args, "--top-k", "5", "--resume", run_id])
    assert e.value.code == 2 and "other settings (top_k)" in capsys.readouterr().err
    assert score.main([*args, "--resume", run_id, "--publish"]) == 0
    out = capsys.readouterr().out
    assert f"scored {200 - len(held) + len(cut)} users" in out and "part 1: resumed" in out

    recs = _pub(wh, "recommendations", day)
    assert recs["run_id"].unique().tolist() == [run_id] and len(recs) == 2000
    assert not recs.duplicated(["user_id", "rank"]).any()
    rats = _pub(wh, "rationales", day)
    assert len(rats) == 200 and rats["user_id"].is_unique
    clean = _pub(wh, "recommendations")  # the uninterrupted run of the same model and day
    clean = clean[clean["user_id"].isin(set(recs["user_id"]))]
    key = ["user_id", "rank"]
    assert recs.sort_values(key)[key + ["item_id"]].reset_index(drop=True).equals(
        clean.sort_values(key)[key + ["item_id"]].reset_index(drop=True))
    ledger = _t(wh, "scoring_runs")
    ledger = ledger[ledger["run_date"].astype(str) == day].sort_values("part").set_index("part")
    assert list(ledger.index) == [0, 1] and ledger.loc[1, "finished_at"] is not pd.NaT
    assert ledger.loc[1, "users_scored"] == 200 - len(held) + len(cut)
    assert ledger.loc[1, "tokens_generated"] == rats[~rats["user_id"].isin(held - set(cut))][
        "tokens"].sum()
    assert ledger.loc[1, "devices"] == "cpu" and ledger.loc[1, "device_count"] >= 1
    assert ledger.loc[1, "task_seconds_reasoning"] > 0 and ledger.loc[1, "wall_seconds_score"] > 0
