"""Memory as the warehouse grows: the nightly HTML report and the console report (deltalake
readers) with 10 against 100 dates of published runs, and the driver of the embedding
publication (the FAISS index of `item_embeddings`) with 1k against 100k items. Each
measurement runs in a fresh process and reports that process's peak resident memory, so the
figures do not mix.

    .venv/bin/python bench/memory.py --out bench/results/memory-cpu-2026-12-01.json

The warehouses are synthetic (written with deltalake; embeddings with Spark): per date one
published champion run of --users users x 10 items, its rationales, --events-per-date
interactions and an evaluation with its rankings. Nothing here is a test; the README quotes
the table it prints.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import date, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _peak_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_history(wh: Path, dates: int, users: int, items: int, events_per_date: int) -> None:
    """A warehouse with `dates` published runs (deltalake writes, no Spark)."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    from deltalake import write_deltalake

    from r2ec_batch.publishing import new_run_id
    from r2ec_batch.schemas import ALL_TABLES

    def write(name: str, df: pd.DataFrame) -> None:
        spec = ALL_TABLES[name]
        schema = pa.schema([(f.name, _arrow(f.dataType)) for f in spec.schema.fields])
        table = pa.Table.from_pandas(df[[f.name for f in spec.schema.fields]], schema=schema,
                                     preserve_index=False)
        write_deltalake(str(wh / name), table, mode="append",
                        partition_by=list(spec.partition_by) or None)

    rng = np.random.default_rng(0)
    ids = [str(i) for i in range(items)]
    write("items", pd.DataFrame({"item_id": ids, "title": [f"Film {i} (1990)" for i in ids],
                                 "attributes": [[("genres", "Drama")]] * items,
                                 "source": "bench", "ingested_at": datetime(2026, 1, 1)}))
    start = date(2026, 1, 1)
    for d in range(dates):
        day = start + timedelta(days=d)
        ts = datetime.combine(day, datetime.min.time())
        write("interactions", pd.DataFrame({
            "user_id": rng.integers(0, users, events_per_date).astype(str),
            "item_id": rng.integers(0, items, events_per_date).astype(str),
            "ts": [ts + timedelta(seconds=int(s)) for s in rng.integers(0, 86_400, events_per_date)],
            "rating": np.float32(4.0), "source": "bench", "ingested_at": ts,
            "source_file": "bench.inter", "source_line": np.arange(events_per_date, dtype=np.int64)}))
        run = new_run_id(ts + timedelta(days=1))
        users_ = np.repeat(np.arange(users).astype(str), 10)
        write("recommendations", pd.DataFrame({
            "run_date": day, "variant": "champion", "run_id": run, "user_id": users_,
            "rank": np.tile(np.arange(1, 11, dtype=np.int32), users),
            "item_id": rng.integers(0, items, users * 10).astype(str),
            "score": rng.random(users * 10, dtype=np.float32), "model_version": "r2ec-0123456789ab"}))
        write("rationales", pd.DataFrame({
            "run_date": day, "variant": "champion", "run_id": run,
            "user_id": np.arange(users).astype(str), "text": "Because of: [Film 1 (1990)]",
            "tokens": np.int32(6), "history_hash": "h", "fallback": None,
            "model_version": "r2ec-0123456789ab"}))
        write("published_runs", pd.DataFrame([{
            "run_date": day, "variant": "champion", "run_id": run,
            "model_version": "r2ec-0123456789ab", "as_of_date": day, "top_k": np.int32(10),
            "users": users, "recommendations": users * 10, "published_at": ts + timedelta(days=1),
            "published_by": "bench"}]))
    last = start + timedelta(days=dates - 1)
    write("user_histories", pd.DataFrame({
        "as_of_date": last, "user_id": np.arange(users).astype(str),
        "history_item_ids": [[str(x) for x in rng.integers(0, items, 20)] for _ in range(users)],
        "history_titles": [["Film"] * 20] * users, "history_ratings": [[4.0] * 20] * users,
        "history_ts": [[datetime(2026, 1, 1)] * 20] * users, "history_len": np.int32(20),
        "last_ts": datetime(2026, 1, 1), "history_hash": "h"}))


def _arrow(t):
    """The Arrow type of a Spark type (the schemas are Spark's)."""
    import pyarrow as pa
    from pyspark.sql import types as T

    simple = {T.StringType: pa.string(), T.IntegerType: pa.int32(), T.LongType: pa.int64(),
              T.FloatType: pa.float32(), T.DoubleType: pa.float64(), T.DateType: pa.date32(),
              T.TimestampType: pa.timestamp("us", "UTC"), T.BooleanType: pa.bool_()}
    if type(t) in simple:
        return simple[type(t)]
    if isinstance(t, T.ArrayType):
        return pa.list_(_arrow(t.elementType))
    if isinstance(t, T.MapType):
        return pa.map_(_arrow(t.keyType), _arrow(t.valueType))
    raise TypeError(t)


def child_report(wh: str) -> dict:
    """The nightly HTML report and the console report, in this (fresh) process."""
    import contextlib
    import io

    from r2ec_batch.jobs import report
    from r2ec_batch.report_html import render

    t = time.time()
    html, _ = render(wh)
    with contextlib.redirect_stdout(io.StringIO()):
        report.main(["--warehouse", wh])
    return {"seconds": round(time.time() - t, 1), "peak_mib": round(_peak_mib(), 1),
            "html_kb": len(html) // 1024}


def child_index(wh: str, items: int, dim: int) -> dict:
    """Synthetic embeddings of `items` x `dim` written by Spark, then the index published; the
    driver's peak memory before and after the publication."""
    from pyspark.sql import functions as F

    from r2ec_batch import delta_io
    from r2ec_batch.artifacts import publish_index
    from r2ec_batch.schemas import ITEM_EMBEDDINGS, ITEMS
    from r2ec_batch.session import build_spark

    spark = build_spark("r2ec-bench-memory", quiet=True)
    version = "r2ec-0123456789ab"
    base = spark.range(items).select(F.col("id").cast("string").alias("item_id"))
    delta_io.overwrite(base.select("item_id", F.format_string("Film %s", "item_id").alias("title"),
                                   F.create_map().cast("map<string,string>").alias("attributes"),
                                   F.lit("bench").alias("source"),
                                   F.current_timestamp().alias("ingested_at")), ITEMS, wh)
    emb = base.select(F.lit(version).alias("model_version"), "item_id",
                      F.transform(F.sequence(F.lit(1), F.lit(dim)),
                                  lambda x: F.rand(seed=7).cast("float")).alias("embedding"),
                      F.current_timestamp().alias("created_at"))
    delta_io.replace_partition(emb, ITEM_EMBEDDINGS, wh, "model_version", version)
    before = _peak_mib()
    t = time.time()
    built = publish_index(spark, wh, version, "flat", 0.02)
    return {"items": built["item_count"], "dim": built["dim"], "seconds": round(time.time() - t, 1),
            "driver_peak_before_mib": round(before, 1), "driver_peak_after_mib": round(_peak_mib(), 1),
            "embeddings_mib": round(items * dim * 4 / 2**20, 1)}


def _run_child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                         cwd=ROOT, timeout=3600)
    if out.returncode:
        raise SystemExit(f"child {args} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dates", default="10,100", help="published runs of the two report rows")
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--items", type=int, default=2000, help="catalogue of the report warehouses")
    p.add_argument("--events-per-date", type=int, default=10_000)
    p.add_argument("--index-items", default="1000,100000", help="items of the two index rows")
    p.add_argument("--dim", type=int, default=576, help="embedding size (SmolLM2's hidden size)")
    p.add_argument("--out", default="", help="also write the rows here (JSON)")
    p.add_argument("--child", nargs="*", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        kind, wh, *rest = a.child
        got = child_report(wh) if kind == "report" else child_index(wh, *map(int, rest))
        print(json.dumps(got))
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="r2ec-bench-memory-") as tmp:
        for d in map(int, a.dates.split(",")):
            wh = Path(tmp) / f"report-{d}"
            t = time.time()
            build_history(wh, d, a.users, a.items, a.events_per_date)
            got = _run_child("--child", "report", str(wh))
            rows.append({"what": "HTML + console report", "scale": f"{d} dates "
                         f"({d * a.users * 10:,} recommendation rows, {d * a.events_per_date:,} "
                         "interactions)", **got, "build_s": round(time.time() - t, 1)})
            print(json.dumps(rows[-1]), flush=True)
        for n in map(int, a.index_items.split(",")):
            got = _run_child("--child", "index", str(Path(tmp) / f"index-{n}"), str(n), str(a.dim))
            rows.append({"what": "embedding publication (driver)", "scale": f"{n:,} items x {a.dim}",
                         **got})
            print(json.dumps(rows[-1]), flush=True)
    print("\n| what | scale | peak memory MiB | seconds |\n|---|---|---:|---:|")
    for r in rows:
        peak = r.get("peak_mib", r.get("driver_peak_after_mib"))
        extra = (f" (before the publication {r['driver_peak_before_mib']}; embeddings "
                 f"{r['embeddings_mib']} MiB)") if "driver_peak_before_mib" in r else ""
        print(f"| {r['what']} | {r['scale']} | {peak}{extra} | {r['seconds']} |")
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    if "--child" not in sys.argv and str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    main()
