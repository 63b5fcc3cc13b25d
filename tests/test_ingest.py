"""jobs/ingest.py on real ML-100k, on a bad-input fixture, and on the other two formats."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from deltalake import DeltaTable

from r2ec_batch.jobs import ingest
from tests.conftest import delta_version

pytestmark = pytest.mark.spark


def _table(wh: Path, name: str):
    return DeltaTable(str(wh / name)).to_pandas()


def test_ml100k_counts(ml_warehouse):
    inter = _table(ml_warehouse, "interactions")
    items = _table(ml_warehouse, "items")
    assert len(inter) == 100_000
    assert inter["user_id"].nunique() == 943
    # Source order: every event knows its line (line 1 is the header).
    assert set(inter["source_file"]) == {"ml-100k.inter"}
    assert sorted(inter["source_line"]) == list(range(2, 100_002))
    first = inter.set_index("source_line").loc[2]
    assert (first["user_id"], first["item_id"]) == ("196", "242")
    assert len(items) == 1_682
    assert set(inter["item_id"]) <= set(items["item_id"])
    assert _table(ml_warehouse, "quarantine").empty
    toy = items.set_index("item_id").loc["1"]
    assert toy["title"] == "Toy Story (1995)" and dict(toy["attributes"])["year"] == "1995"


def test_second_ingest_changes_nothing(spark, ml_warehouse, ml100k_dir, capsys):
    before = {t: delta_version(ml_warehouse / t) for t in ("interactions", "items", "quarantine")}
    snapshot = _table(ml_warehouse, "interactions").sort_values(["user_id", "item_id", "ts"])
    assert ingest.main(["--source", "ml-100k", "--path", str(ml100k_dir),
                        "--warehouse", str(ml_warehouse)]) == 0
    out = capsys.readouterr().out
    assert "ml-100k.inter: read 100,000 = accepted 100,000 + quarantined 0" in out
    assert "interactions: inserted 0, updated 0" in out
    after = {t: delta_version(ml_warehouse / t) for t in before}
    assert after == before, "an identical re-ingest must not even commit"
    again = _table(ml_warehouse, "interactions").sort_values(["user_id", "item_id", "ts"])
    assert again.reset_index(drop=True).equals(snapshot.reset_index(drop=True))
    assert again["source_line"].notna().all(), "the source order survives a re-ingest"


ITEM_HEADER = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"
INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float"
GOOD_TS = 881250949


def _write_bad_fixture(folder: Path) -> dict[str, Counter]:
    """Atomic files with a known number of bad rows of each kind; returns the expected reasons."""
    items = [ITEM_HEADER] + [f"{i}\tMovie {i}\t199{i}\tDrama" for i in range(1, 6)]
    items += [
        "6\t\t1990\tDrama",            # missing title
        "2\tOther title\t1991\tComedy",  # duplicate item id
        "7\tOnly two fields",           # wrong field count
    ]
    item_bytes = ("\n".join(items) + "\n").encode() + b"8\tCaf\xe9 Society\t1990\tDrama\n"
    (folder / "bad.item").write_bytes(item_bytes)

    good = [f"{u}\t{i}\t{(u + i) % 5 + 1}\t{GOOD_TS + 60 * (u * 10 + i)}"
            for u in (10, 11) for i in range(1, 6)]
    good.append(f"12\t8\t4\t{GOOD_TS}")  # refers to the item whose title is repaired
    bad = [
        f"\t1\t4\t{GOOD_TS}",                 # missing user id
        f"10\t999\t3\t{GOOD_TS}",             # unknown item
        f"10\t6\t3\t{GOOD_TS}",               # item quarantined above: says so
        "10\t1\t3\tyesterday",                # unparseable timestamp
        f"10\t2\tfive\t{GOOD_TS}",            # unparseable rating
        f"10\t2\t55\t{GOOD_TS + 1}",          # rating out of range
        "10\t2\t3\t12",                       # timestamp out of range (1970)
        good[0],                              # exact duplicate
        good[1].rsplit("\t", 2)[0] + f"\t1\t{good[1].rsplit(chr(9), 1)[1]}",  # same key, other rating
        "u" * 200 + f"\t1\t4\t{GOOD_TS}",      # absurdly long id
        "10\t1\t4",                           # wrong field count
    ]
    inter_bytes = ("\n".join([INTER_HEADER] + good + bad) + "\n").encode()
    inter_bytes += b"12\t1\t4\t88125\xff0949\n"  # not UTF-8
    (folder / "bad.inter").write_bytes(inter_bytes)
    return {
        "bad.item": Counter({"missing title": 1, "duplicate item id": 1, "expected 4 fields": 1}),
        "bad.inter": Counter({"missing user id": 1, "unknown item id": 1,
                              "item 6: its catalogue row (bad.item line 7) was refused": 1,
                              "unparseable timestamp": 1, "unparseable rating": 1,
                              "rating out of range": 1, "timestamp out of range": 1,
                              "exact duplicate": 1, "same user, item and time": 1,
                              "user id longer than": 1, "expected 4 fields": 1,
                              "text is not valid UTF-8": 1}),
    }


def _kind(reason: str, kinds) -> str:
    hits = [k for k in kinds if reason.startswith(k)]
    assert len(hits) == 1, f"unexpected reason {reason!r}"
    return hits[0]


@pytest.mark.slow
def test_bad_input_goes_to_quarantine_with_reasons(spark, tmp_path, capsys):
    data, wh = tmp_path / "in", tmp_path / "wh"
    data.mkdir()
    expected = _write_bad_fixture(data)
    assert ingest.main(["--source", "ml-100k", "--path", str(data), "--warehouse", str(wh)]) == 0
    out = capsys.readouterr().out
    # the item with a latin-1 byte in its title is repaired, not refused, and counts as accepted
    assert "bad.item: read 9 = accepted 6 + quarantined 3 (1 accepted after repair)" in out
    assert "bad.inter: read 23 = accepted 11 + quarantined 12" in out

    q = _table(wh, "quarantine")
    refused, repaired = q[q["action"] == "refused"], q[q["action"] == "repaired"]
    assert len(refused) + len(repaired) == len(q)
    for file, want in expected.items():
        got = Counter(_kind(r, want) for r in refused[refused["file"] == file]["reason"])
        assert got == want, file
    assert q["line_no"].notna().all() and q["row_hash"].is_unique
    dup = q[q["reason"].str.startswith("exact duplicate")].iloc[0]
    assert dup["reason"] == "exact duplicate of line 2" and dup["line_no"] == 20
    # the repair: title kept with U+FFFD, original bytes recorded, and its event accepted
    (fix,) = repaired.itertuples()
    assert fix.file == "bad.item" and fix.line_no == 10
    assert bytes.fromhex(fix.raw_bytes_hex) == b"8\tCaf\xe9 Society\t1990\tDrama"
    items = _table(wh, "items").set_index("item_id")
    assert items.loc["8", "title"] == "Caf\ufffd Society (1990)"
    inter = _table(wh, "interactions")
    assert len(inter) == 11 and len(items) == 6 and (inter["item_id"] == "8").sum() == 1

    # Re-ingesting the same bad files adds nothing anywhere.
    versions = {t: delta_version(wh / t) for t in ("interactions", "items", "quarantine")}
    assert ingest.main(["--source", "ml-100k", "--path", str(data), "--warehouse", str(wh)]) == 0
    assert {t: delta_version(wh / t) for t in versions} == versions


@pytest.mark.parametrize("case", ["missing", "empty", "no_columns"])
def test_unusable_file_stops_before_writing(spark, tmp_path, capsys, case):
    data, wh = tmp_path / "in", tmp_path / "wh"
    data.mkdir()
    (data / "x.item").write_text(ITEM_HEADER + "\n1\tA\t1990\tDrama\n")
    if case == "empty":
        (data / "x.inter").write_text("")
    elif case == "no_columns":
        (data / "x.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n1\t1\t5\n")
    with pytest.raises(SystemExit) as e:
        ingest.cli.run(ingest.main, ["--source", "ml-100k", "--path", str(data),
                                     "--warehouse", str(wh)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1
    msg = err[-1]
    assert msg.startswith("error: ") and "inter" in msg
    assert {"missing": "file not found", "empty": "file is empty",
            "no_columns": "missing required column(s) rating"}[case] in msg
    assert not wh.exists() or not any(wh.iterdir()), "nothing may be written"


@pytest.mark.slow
def test_movielens_raw_format(spark, tmp_path):
    data, wh = tmp_path / "in", tmp_path / "wh"
    data.mkdir()
    flags = ["0"] * 19
    flags[3] = flags[5] = "1"  # Animation, Comedy
    (data / "u.item").write_bytes(
        ("1|Toy Story (1995)|01-Jan-1995||http://x|" + "|".join(flags) + "\n").encode("latin-1")
        + "2|Cité des enfants perdus, La (1995)|01-Jan-1995||http://y|".encode("latin-1")
        + ("|".join(["0"] * 19) + "\n").encode()
    )
    (data / "u.data").write_text(f"1\t1\t5\t{GOOD_TS}\n1\t2\t3\t{GOOD_TS + 5}\n2\t1\tx\t{GOOD_TS}\n")
    assert ingest.main(["--source", "movielens", "--path", str(data), "--warehouse", str(wh)]) == 0
    items = _table(wh, "items").set_index("item_id")
    assert items.loc["2", "title"] == "Cité des enfants perdus, La (1995)"  # latin-1 decoded
    assert dict(items.loc["1", "attributes"])["genres"] == "Animation Comedy"
    assert len(_table(wh, "interactions")) == 2
    assert list(_table(wh, "quarantine")["reason"]) == ["unparseable rating 'x'"]


@pytest.mark.slow
def test_amazon2023_format(spark, tmp_path):
    data, wh = tmp_path / "in", tmp_path / "wh"
    data.mkdir()
    meta = [
        {"parent_asin": "B1", "title": "Guitar Strings", "price": 9.99, "average_rating": 4.5,
         "rating_number": 10, "description": ["Bright tone."], "categories": ["Music", "Strings"],
         "main_category": "Musical Instruments"},
        {"parent_asin": "B2", "title": "Capo", "price": "None", "description": []},  # paper filter
        {"parent_asin": "B3", "title": "x", "price": 1.0},                          # paper filter
    ]
    reviews = [
        {"user_id": "U1", "parent_asin": "B1", "asin": "B1a", "rating": 5.0,
         "timestamp": GOOD_TS * 1000},
        {"user_id": "U1", "parent_asin": "B2", "asin": "B2", "rating": 4.0,
         "timestamp": GOOD_TS * 1000 + 5},
    ]
    (data / "meta.jsonl").write_text("\n".join(json.dumps(m) for m in meta) + "\n")
    (data / "reviews.jsonl").write_text(
        "\n".join(json.dumps(r) for r in reviews) + "\n{not json\n")
    assert ingest.main(["--source", "amazon2023", "--reviews", str(data / "reviews.jsonl"),
                        "--meta", str(data / "meta.jsonl"), "--warehouse", str(wh)]) == 0
    items = _table(wh, "items")
    assert list(items["item_id"]) == ["B1"]
    attrs = dict(items.iloc[0]["attributes"])
    assert attrs["price"] == "9.99" and attrs["categories"] == "Music > Strings"
    inter = _table(wh, "interactions")
    assert list(inter["item_id"]) == ["B1"] and inter.iloc[0]["rating"] == 5.0
    reasons = sorted(_table(wh, "quarantine")["reason"])
    assert reasons == ["item B2: its catalogue row (meta.jsonl line 2) was refused",
                       "paper filter: price is not numeric", "paper filter: title of <=1 character",
                       "unparseable JSON"]


@pytest.mark.slow
def test_control_bytes_cost_no_item_and_no_event(spark, tmp_path, capsys):
    """A catalogue whose most popular title holds \\x01 (the byte the old reader split lines
    on), others with NUL and ESC, an attribute with a control byte; events of those items.
    Every valid event is accepted, the titles are repaired and listed with their original bytes,
    an id with a control byte is refused, and an event of a refused item names its row."""
    data, wh = tmp_path / "in", tmp_path / "wh"
    data.mkdir()
    items = [ITEM_HEADER.encode(),
             b"50\tStar \x01Wars\t1977\tAction Sci-Fi",      # the popular one
             b"51\tNul\x00 Title\t1990\tDrama",
             b"52\tEsc \x1b[31mRed\x1b[0m\t1991\tCom\x1bedy",  # ESC in title and genres
             b"53\tPlain\t1992\tDrama",
             b"5\x014\tBad id\t1993\tDrama"]                 # a control byte in the id
    (data / "c.item").write_bytes(b"\n".join(items) + b"\n")
    events = [f"{u}\t{i}\t4\t{GOOD_TS + 60 * (10 * u + k)}".encode()
              for k, (u, i) in enumerate((u, i) for u in range(1, 41) for i in ("50",))]
    events += [f"7\t{i}\t3\t{GOOD_TS + 99 + k}".encode() for k, i in enumerate(("51", "52", "53"))]
    events += [b"8\t5\x014\t3\t881250949",           # refers to the refused item
               b"u\x1b9\t53\t3\t881250950",           # control byte in the user id
               b"9\t53\tbad\x1b[2J" + b"x" * 5000 + b"\t881250951"]  # a long, escaping rating
    (data / "c.inter").write_bytes(b"\n".join([INTER_HEADER.encode(), *events]) + b"\n")
    assert ingest.main(["--source", "ml-100k", "--path", str(data), "--warehouse", str(wh)]) == 0
    out = capsys.readouterr().out
    assert "c.item: read 5 = accepted 4 + quarantined 1 (3 accepted after repair)" in out
    assert "c.inter: read 46 = accepted 43 + quarantined 3" in out
    inter = _table(wh, "interactions")
    assert (inter["item_id"] == "50").sum() == 40 and len(inter) == 43
    titles = _table(wh, "items").set_index("item_id")["title"]
    assert titles["50"] == "Star \ufffdWars (1977)" and titles["51"] == "Nul\ufffd Title (1990)"
    assert titles["52"] == "Esc \ufffd[31mRed\ufffd[0m (1991)"
    genres = dict(_table(wh, "items").set_index("item_id").loc["52", "attributes"])["genres"]
    assert genres == "Com\ufffdedy"
    q = _table(wh, "quarantine").set_index("line_no")
    item_q, inter_q = q[q["file"] == "c.item"], q[q["file"] == "c.inter"]
    assert sorted(item_q[item_q["action"] == "repaired"].index) == [2, 3, 4]
    assert bytes.fromhex(item_q.loc[2, "raw_bytes_hex"]) == items[1]  # the original bytes
    assert item_q.loc[6, "reason"] == "item id holds control characters"
    assert bytes.fromhex(item_q.loc[6, "raw_bytes_hex"]) == items[5]
    reasons = dict(zip(inter_q.index, inter_q["reason"], strict=True))
    assert reasons[45] == "item 5\ufffd4: its catalogue row (c.item line 6) was refused"
    assert reasons[46] == "user id holds control characters"
    assert reasons[47].startswith("unparseable rating 'bad\ufffd[2Jxxx") and len(reasons[47]) < 100
    assert not any(c in r for r in q["reason"] for c in "\x00\x01\x1b")
    assert bytes.fromhex(inter_q.loc[47, "raw_bytes_hex"]) == events[-1]


def test_a_second_input_file_is_an_error_not_ignored(spark, tmp_path, capsys):
    data = tmp_path / "in"
    data.mkdir()
    (data / "a.item").write_text(ITEM_HEADER + "\n1\tA\t1990\tDrama\n")
    for name in ("a.inter", "b.inter"):
        (data / name).write_text(INTER_HEADER + f"\n1\t1\t4\t{GOOD_TS}\n")
    with pytest.raises(SystemExit) as e:
        ingest.cli.run(ingest.main, ["--source", "ml-100k", "--path", str(data),
                                     "--warehouse", str(tmp_path / "wh")])
    assert e.value.code == 2
    assert "2 files match *.inter (a.inter, b.inter)" in capsys.readouterr().err
