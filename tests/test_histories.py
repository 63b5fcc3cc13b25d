"""jobs/build_histories.py on real ML-100k: the paper's samples and split, and as-of histories."""

from __future__ import annotations

import pandas as pd
import pytest
from deltalake import DeltaTable

from r2ec_batch.jobs import build_histories
from tests.conftest import ML100K_AS_OF, delta_version

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def samples(ml_warehouse) -> pd.DataFrame:
    return DeltaTable(str(ml_warehouse / "training_samples")).to_pandas()


@pytest.fixture(scope="module")
def events(ml_warehouse) -> pd.DataFrame:
    return DeltaTable(str(ml_warehouse / "interactions")).to_pandas()


def test_sample_counts_and_split(samples):
    assert len(samples) == 100_000 - 943
    assert sorted(samples["sample_id"]) == list(range(len(samples)))
    assert samples["split"].value_counts().to_dict() == {"train": 79_245, "valid": 9_906,
                                                         "test": 9_906}
    ids = samples.groupby("split")["sample_id"].agg(["min", "max"])
    assert ids.loc["train", "max"] == 79_244 and ids.loc["test", "min"] == 89_151
    t = samples.groupby("split")["target_ts"].agg(["min", "max"])
    assert t.loc["train", "max"] <= t.loc["valid", "min"]
    assert t.loc["valid", "max"] <= t.loc["test", "min"]


def test_samples_follow_each_users_timeline(samples, events):
    assert samples["history_item_ids"].map(len).between(1, 20).all()
    user = "196"
    order = ["ts", "source_file", "source_line"]  # same-second events in file order
    ev = events[events["user_id"] == user].sort_values(order).reset_index(drop=True)
    mine = samples[samples["user_id"] == user].sort_values("position")
    assert list(mine["position"]) == list(range(1, len(ev)))
    for _, s in mine.iterrows():
        p = s["position"]
        assert s["target_item_id"] == ev.loc[p, "item_id"]
        assert list(s["history_item_ids"]) == list(ev.loc[max(0, p - 20):p - 1, "item_id"])
        got_ts = pd.to_datetime(s["history_ts"], utc=True)
        assert list(got_ts) == list(pd.to_datetime(ev.loc[max(0, p - 20):p - 1, "ts"], utc=True))
    pairs = zip(mine["history_titles"], mine["history_item_ids"], strict=True)
    assert all(len(titles) == len(ids) for titles, ids in pairs)


def test_user_histories_as_of(spark, ml_warehouse, events, tmp_path):
    import shutil

    wh = tmp_path / "wh"
    shutil.copytree(ml_warehouse, wh)  # this test's own copy: it adds a date's histories
    hist = DeltaTable(str(wh / "user_histories")).to_pandas()
    latest = hist[hist["as_of_date"].astype(str) == ML100K_AS_OF]
    assert len(latest) == 943 and latest["history_len"].eq(20).all()

    # An earlier date sees only earlier events; a re-run of it gives the same partition.
    day = "1997-12-01"
    assert build_histories.main(["--as-of", day, "--skip-samples", "--warehouse", str(wh)]) == 0
    v1 = delta_version(wh / "user_histories")
    first = DeltaTable(str(wh / "user_histories")).to_pandas()
    assert build_histories.main(["--as-of", day, "--skip-samples", "--warehouse", str(wh)]) == 0
    second = DeltaTable(str(wh / "user_histories")).to_pandas()
    assert delta_version(wh / "user_histories") == v1 + 1
    key = ["as_of_date", "user_id"]
    a = first.sort_values(key).reset_index(drop=True)
    b = second.sort_values(key).reset_index(drop=True)
    assert a[key + ["history_hash", "history_len"]].equals(b[key + ["history_hash", "history_len"]])

    early = second[second["as_of_date"].astype(str) == day].set_index("user_id")
    cutoff = pd.Timestamp("1997-12-02", tz="UTC")
    before = events[events["ts"] < cutoff]
    assert set(early.index) == set(before["user_id"])
    u = early.index[0]
    ev = before[before["user_id"] == u].sort_values(["ts", "source_file", "source_line"])
    assert list(early.loc[u, "history_item_ids"]) == list(ev["item_id"].iloc[-20:])
    assert (pd.to_datetime(early["last_ts"], utc=True) < cutoff).all()
    # The other date's partition is untouched.
    assert (second["as_of_date"].astype(str) == ML100K_AS_OF).sum() == 943
