"""Scoring throughput: `jobs/score.py` through Spark pandas UDFs versus the same engine looping
in one process over the same users, at 1x, 4x, 16x ML-100k's 943 users (histories replicated
under new user ids), with the champion (default) model and greedy reasoning.

    .venv/bin/python bench/throughput.py --warehouse warehouse --scales 1,4,16

Works on a copy of the warehouse's user_histories (in OUT/warehouse), so the real tables are
untouched. Spark figures: users/s of the UDF stage as the job reports it, and the job's whole
wall time (JVM start, reads, writes included). Loop figures: Recommender.recommend in this
process with all cores' torch threads. Target: Spark/loop >= 0.8 on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import torch
from deltalake import DeltaTable, write_deltalake

from r2ec.config import SamplingConfig
from r2ec.data import histories, times
from r2ec.index import ItemIndex
from r2ec.model import R2ec
from r2ec.recommend import Recommender

REPO = Path(__file__).resolve().parents[1]


def _champion(wh: Path) -> str:
    reg = DeltaTable(str(wh / "model_registry")).to_pandas()
    return reg[reg["status"] == "champion"].iloc[0]["path"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--warehouse", default="warehouse")
    p.add_argument("--out", default="artifacts/throughput")
    p.add_argument("--scales", default="1,4,16")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="loop's torch threads")
    a = p.parse_args()
    src, out = Path(a.warehouse).resolve(), Path(a.out).resolve()
    wh = out / "warehouse"
    shutil.rmtree(wh, ignore_errors=True)
    wh.mkdir(parents=True)
    for name in ("items", "interactions", "model_registry", "item_embeddings", "_index"):
        shutil.copytree(src / name, wh / name)
    source = DeltaTable(str(src / "user_histories"))
    # Appended rows keep the table's own arrow schema: pandas alone would write naive
    # timestamps (timestamp_ntz), a layout the jobs refuse.
    schema = source.to_pyarrow_table().schema
    hist = source.to_pandas()
    base = hist[hist["as_of_date"] == hist["as_of_date"].max()].reset_index(drop=True)
    model_dir = _champion(src)
    r2ec = R2ec.load(model_dir, device="cpu")
    index = ItemIndex.load(src / "_index" / r2ec.model_version, expect_model_version=r2ec.model_version)
    rec = Recommender(r2ec, index)
    sampling = SamplingConfig(max_new_tokens=a.max_new_tokens)
    rows = []
    for scale in (int(x) for x in a.scales.split(",")):
        day = pd.Timestamp("2100-01-01") + pd.Timedelta(days=scale)
        rep = pd.concat([base.assign(user_id=base["user_id"] + (f"#{r}" if r else ""),
                                     as_of_date=day.date()) for r in range(scale)], ignore_index=True)
        rows_arrow = pa.Table.from_pandas(rep[schema.names], schema=schema, preserve_index=False)
        write_deltalake(str(wh / "user_histories"), rows_arrow, mode="append",
                        partition_by=["as_of_date"])
        ref_end = times(pd.to_datetime(rep["as_of_date"]) + pd.Timedelta(days=1))
        torch.set_num_threads(a.threads)
        t = time.perf_counter()
        rec.recommend(histories(rep), ref_end, sampling=sampling)
        loop = len(rep) / (time.perf_counter() - t)
        t = time.perf_counter()
        done = subprocess.run(
            [str(REPO / "bin" / "r2ec-submit"), "--conf", "spark.ui.showConsoleProgress=false",
             "jobs/score.py", "--run-date", str(day.date()), "--warehouse", str(wh),
             "--max-new-tokens", str(a.max_new_tokens)], cwd=REPO, capture_output=True, text=True)
        wall = time.perf_counter() - t
        if done.returncode:
            raise SystemExit((done.stdout + done.stderr)[-3000:])
        spark = float(re.search(r"\(([\d.]+) users/s\)", done.stdout).group(1))
        row = {"users": len(rep), "loop_users_per_s": round(loop, 1),
               "spark_udf_users_per_s": round(spark, 1), "spark_over_loop": round(spark / loop, 2),
               "spark_job_wall_s": round(wall, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    (out / "throughput.json").write_text(json.dumps({"model": r2ec.model_version, "rows": rows,
                                                     "max_new_tokens": a.max_new_tokens}, indent=2))
    print("\n| users | loop users/s | Spark UDF users/s | Spark/loop | score.py wall s |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['users']:,} | {r['loop_users_per_s']} | {r['spark_udf_users_per_s']} | "
              f"{r['spark_over_loop']} | {r['spark_job_wall_s']} |")


if __name__ == "__main__":
    main()
