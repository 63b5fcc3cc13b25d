"""The evaluation protocol's sample order, checked against a literal re-statement of the
reference preprocessing (RRec's `save_data`): per user a stable sort by timestamp, users in
order of first appearance, samples stably sorted by target time, split at int(.8 N), int(.9 N).

Also: an `interactions` table from before the source-order columns is refused by
build_histories with a one-line error, migrated by a re-ingest, and then gives the same samples.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pandas as pd
import pytest
from deltalake import DeltaTable

from r2ec_batch.jobs import build_histories, ingest

pytestmark = pytest.mark.spark

HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float"
T0 = 881_250_949


def _toy_lines(seed: int = 3) -> list[tuple[str, str, int, int]]:
    """(user, item, rating, ts) in file order: 12 users, bursts of same-second events whose
    file order disagrees with item-id order (as strings and as numbers), interleaved users."""
    rng = random.Random(seed)
    lines = []
    for _ in range(40):
        ts = T0 + 3600 * rng.randrange(0, 30)  # few distinct seconds: many ties across users
        user = str(rng.randrange(1, 13))
        items = rng.sample(range(1, 60), rng.randrange(1, 5))
        lines += [(user, str(i), rng.randrange(1, 6), ts) for i in items]
    seen, out = set(), []
    for u, i, r, t in lines:  # the key (user, item, ts) must be unique, as ingest requires
        if (u, i, t) not in seen:
            seen.add((u, i, t))
            out.append((u, i, r, t))
    return out


def reference_samples(lines, window: int = 20, tie=None) -> pd.DataFrame:
    """The reference preprocessing, literally: dict insertion order for users, Python's stable
    sorted() by timestamp (or by `tie` too, to show what another tie rule changes)."""
    interact: dict[str, list] = {}
    for u, i, r, t in lines:
        interact.setdefault(u, []).append((i, r, t))
    samples = []
    for u, events in interact.items():
        events = sorted(events, key=(lambda e: (e[2], tie(e))) if tie else (lambda e: e[2]))
        for k in range(1, len(events)):
            st = max(k - window, 0)
            samples.append([u, [e[0] for e in events[st:k]], events[k][0], events[k][2], k])
    samples = sorted(samples, key=lambda s: s[3])
    df = pd.DataFrame(samples, columns=["user_id", "history_item_ids", "target_item_id", "ts",
                                        "position"])
    n = len(df)
    df["sample_id"] = range(n)
    df["split"] = ["train" if j < int(n * 0.8) else "valid" if j < int(n * 0.9) else "test"
                   for j in range(n)]
    return df


def _write(folder: Path, lines) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    items = {i for _, i, _, _ in lines}
    (folder / "toy.item").write_text(
        "item_id:token\tmovie_title:token_seq\n"
        + "".join(f"{i}\tMovie {i}\n" for i in sorted(items, key=int)))
    (folder / "toy.inter").write_text(
        HEADER + "\n" + "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in lines))


def _compare(got: pd.DataFrame, want: pd.DataFrame) -> list[str]:
    got = got.sort_values("sample_id").reset_index(drop=True)
    cols = ["sample_id", "user_id", "position", "target_item_id", "split"]
    problems = []
    if len(got) != len(want):
        return [f"{len(got)} samples, want {len(want)}"]
    for c in cols:
        if list(got[c]) != list(want[c]):
            problems.append(c)
    if [list(h) for h in got["history_item_ids"]] != list(want["history_item_ids"]):
        problems.append("history_item_ids")
    return problems


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    lines = _toy_lines()
    folder = tmp_path_factory.mktemp("toy_in")
    _write(folder, lines)
    return lines, folder


def test_samples_equal_the_reference(spark, toy, tmp_path):
    lines, folder = toy
    wh = tmp_path / "wh"
    assert ingest.main(["--source", "ml-100k", "--path", str(folder), "--warehouse", str(wh)]) == 0
    assert build_histories.main(["--as-of", "1998-01-01", "--warehouse", str(wh)]) == 0
    got = DeltaTable(str(wh / "training_samples")).to_pandas()
    want = reference_samples(lines)
    ties = sum(1 for a, b in zip(lines, lines[1:], strict=False) if a[0] == b[0] and a[3] == b[3])
    assert ties > 20, "the toy must be full of same-second events"
    assert _compare(got, want) == []
    # The toy discriminates: the earlier rule (ties by item id as a string) gives other samples.
    assert _compare(got, reference_samples(lines, tie=lambda e: e[0])) != []

    # user_histories follow the same order: the latest window of each user's timeline.
    hist = DeltaTable(str(wh / "user_histories")).to_pandas().set_index("user_id")
    for u in hist.index:
        mine = sorted([x for x in lines if x[0] == u], key=lambda x: x[3])
        assert list(hist.loc[u, "history_item_ids"]) == [x[1] for x in mine][-20:]


@pytest.mark.slow
def test_warehouse_without_source_order_is_refused_then_migrated(spark, toy, tmp_path, capsys):
    lines, folder = toy
    wh = tmp_path / "wh"
    assert ingest.main(["--source", "ml-100k", "--path", str(folder), "--warehouse", str(wh)]) == 0
    # Make it look like a warehouse of the earlier layout: interactions without the columns.
    path = str(wh / "interactions")
    old = spark.read.format("delta").load(path).drop("source_file", "source_line")
    old.write.format("delta").mode("overwrite").option("overwriteSchema", "true").save(path)

    with pytest.raises(SystemExit) as e:
        build_histories.cli.run(build_histories.main, ["--as-of", "1998-01-01",
                                                       "--warehouse", str(wh)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: table 'interactions'") and "jobs/ingest.py" in err
    assert not (wh / "training_samples").exists(), "nothing written"

    # A re-ingest of the same file adds the columns and fills them; then the samples are exact.
    assert ingest.main(["--source", "ml-100k", "--path", str(folder), "--warehouse", str(wh)]) == 0
    assert "updated" in capsys.readouterr().out
    inter = DeltaTable(path).to_pandas()
    assert inter["source_line"].notna().all() and set(inter["source_file"]) == {"toy.inter"}
    assert build_histories.main(["--as-of", "1998-01-01", "--warehouse", str(wh)]) == 0
    got = DeltaTable(str(wh / "training_samples")).to_pandas()
    assert _compare(got, reference_samples(lines)) == []


@pytest.mark.slow
def test_rows_without_source_order_are_refused(spark, toy, tmp_path, capsys):
    """Columns present but some rows never re-ingested: refused, not silently mixed."""
    lines, folder = toy
    wh = tmp_path / "wh"
    shutil.copytree(folder, tmp_path / "in")
    assert ingest.main(["--source", "ml-100k", "--path", str(tmp_path / "in"),
                        "--warehouse", str(wh)]) == 0
    spark.sql(f"UPDATE delta.`{wh / 'interactions'}` SET source_line = NULL WHERE user_id = '1'")
    with pytest.raises(SystemExit) as e:
        build_histories.cli.run(build_histories.main, ["--as-of", "1998-01-01",
                                                       "--warehouse", str(wh)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "have no source order" in err and "jobs/ingest.py" in err


def test_pandas_protocol_equals_the_spark_job_on_ml100k(ml_warehouse, ml100k_dir):
    """r2ec.protocol (for machines without Spark: the GPU benchmark) and build_histories give
    the same 99,057 samples on ML-100k: ids, users, positions, histories, targets, splits,
    titles and times."""
    from r2ec.protocol import protocol_samples, read_ml100k_atomic

    items, events = read_ml100k_atomic(ml100k_dir)
    mine = protocol_samples(events, items)
    spark_rows = DeltaTable(str(ml_warehouse / "training_samples")).to_pandas()
    spark_rows = spark_rows.sort_values("sample_id").reset_index(drop=True)
    assert len(mine) == len(spark_rows) == 99_057
    assert _compare(spark_rows, mine) == []
    assert [list(h) for h in spark_rows["history_titles"]] == list(mine["history_titles"])
    assert list(spark_rows["target_ts"].dt.tz_localize(None)) == list(mine["target_ts"])
    ingested = DeltaTable(str(ml_warehouse / "items")).to_pandas().set_index("item_id")
    assert dict(ingested["title"]) == dict(zip(items["item_id"], items["title"], strict=True))
    assert {k: dict(v) for k, v in ingested["attributes"].items()} == \
        dict(zip(items["item_id"], items["attributes"], strict=True))
