"""Scale: `jobs/score.py` over users replicated to 10k and 100k, with the catalogue replicated
to 50k items (synthetic titles), without and with (greedy) reasoning: users/s, the job's wall
time, peak memory of the driver (JVM + Python) and of the largest Python worker, and commits;
then a 10k run killed (SIGKILL of the driver) after half its slices and resumed, whose lists
must equal the uninterrupted run's.

    .venv/bin/python bench/scale.py --out bench/results/scale-cpu-2026-12-02.json

Builds its own warehouse under --work from ML-100k (ingest, histories, a small model built from
scratch with the same flags as the tests, its 50k-item index), so it needs `make setup data`
only. The model is small on purpose: the benchmark is about how cost and memory grow with
users, which the model's size scales but does not change. Nothing here is a test; the README
quotes the table it prints.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pandas as pd
import psutil

REPO = Path(__file__).resolve().parents[1]
SUBMIT = [str(REPO / "bin" / "r2ec-submit"), "--conf", "spark.ui.showConsoleProgress=false"]
AS_OF = "1998-04-23"
TINY = ["--hidden-size", "64", "--num-heads", "2", "--head-dim", "32", "--intermediate-size",
        "128", "--vocab-size", "2000"]


def submit(job: str, *args: str, env: dict | None = None, check: bool = True) -> dict:
    """Run a job; its wall time, output, exit status and peak memory (sampled every 0.2 s:
    the driver = the submit's whole process tree but Python workers; a worker = one
    pyspark.daemon child)."""
    start = time.perf_counter()
    proc = subprocess.Popen([*SUBMIT, f"jobs/{job}.py", *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})})
    peak = {"driver_mib": 0.0, "worker_mib": 0.0}

    def rss(p: psutil.Process) -> tuple[bool, float]:
        """(is a Python worker, resident MiB); (False, 0) for a process that just ended."""
        try:
            worker = "pyspark" in " ".join(p.cmdline()) and "daemon" in " ".join(p.cmdline())
            return worker, p.memory_info().rss / 2**20
        except psutil.Error:
            return False, 0.0

    def sample() -> None:
        root = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                seen = [rss(p) for p in [root, *root.children(recursive=True)]]
            except psutil.Error:
                seen = []
            peak["driver_mib"] = max(peak["driver_mib"], sum(m for w, m in seen if not w))
            peak["worker_mib"] = max([peak["worker_mib"], *(m for w, m in seen if w)])
            time.sleep(0.2)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    out, _ = proc.communicate()
    watcher.join()
    if check and proc.returncode:
        raise SystemExit(f"{job} failed ({proc.returncode}):\n{out[-4000:]}")
    return {"wall_s": time.perf_counter() - start, "out": out, "rc": proc.returncode, **peak}


def build(work: Path, items: int) -> Path:
    """A warehouse with ML-100k's events, `items` catalogue rows, a small champion model and
    its index."""
    data, wh = work / "data", work / "warehouse"
    shutil.rmtree(work, ignore_errors=True)
    data.mkdir(parents=True)
    src = REPO / "data" / "raw" / "ml-100k"
    shutil.copy(src / "ml-100k.inter", data / "ml-100k.inter")
    lines = (src / "ml-100k.item").read_text(encoding="utf-8").splitlines()
    header, rows = lines[0], lines[1:]
    extra = []
    for r in range(1, -(-items // len(rows))):
        for row in rows:
            f = row.split("\t")
            extra.append("\t".join([f"{f[0]}x{r}", f"{f[1]} (edition {r})", *f[2:]]))
    (data / "ml-100k.item").write_text("\n".join([header, *rows, *extra][: items + 1]) + "\n",
                                       encoding="utf-8")
    w = ["--warehouse", str(wh)]
    submit("ingest", "--source", "ml-100k", "--path", str(data), *w)
    submit("build_histories", "--as-of", AS_OF, *w)  # build_model reads training_samples
    submit("build_model", "--out", str(work / "model"), "--register", "champion", *TINY, *w)
    submit("embed_items", *w)
    return wh


def replicate_histories(wh: Path, users: int, day: str) -> None:
    """user_histories of `day` = ML-100k's users' histories copied under new ids to `users`."""
    import pyarrow as pa
    from deltalake import DeltaTable, write_deltalake

    table = DeltaTable(str(wh / "user_histories"))
    schema = table.to_pyarrow_table().schema
    hist = table.to_pandas()
    base = hist[hist["as_of_date"].astype(str) == AS_OF].reset_index(drop=True)
    copies = -(-users // len(base))
    rep = pd.concat([base.assign(user_id=base["user_id"] + (f"#{r}" if r else ""))
                     for r in range(copies)], ignore_index=True).head(users)
    rep["as_of_date"] = pd.Timestamp(day).date()
    write_deltalake(str(wh / "user_histories"),
                    pa.Table.from_pandas(rep[schema.names], schema=schema, preserve_index=False),
                    mode="append", partition_by=["as_of_date"])


def lists(wh: Path, run_id: str) -> pd.DataFrame:
    from deltalake import DeltaTable

    recs = DeltaTable(str(wh / "recommendations")).to_pandas(
        columns=["run_id", "user_id", "rank", "item_id"])
    recs = recs[recs["run_id"] == run_id].drop(columns="run_id")
    return recs.sort_values(["user_id", "rank"]).reset_index(drop=True)


def score(wh: Path, day: str, mode: str, extra=(), env=None, check=True) -> dict:
    args = ["--run-date", day, "--as-of", day, "--warehouse", str(wh), "--commit-users", "25000",
            *extra]
    if mode == "no_reasoning":
        args.append("--no-reasoning")
    res = submit("score", *args, env=env, check=check)
    m = re.search(r"scored ([\d,]+) users in ([\d.]+)s \(([\d.]+) users/s\)", res["out"])
    run = re.search(r"run (\S+Z-[0-9a-f]+)", res["out"])
    commits = re.search(r"(\d+) commits", res["out"])
    return {**res, "users": int(m.group(1).replace(",", "")) if m else None,
            "udf_users_per_s": float(m.group(3)) if m else None,
            "run_id": run.group(1) if run else None,
            "commits": int(commits.group(1)) if commits else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--work", default="artifacts/scale", help="scratch folder (rebuilt)")
    p.add_argument("--out", default="artifacts/scale/scale.json")
    p.add_argument("--scales", default="10000,100000")
    p.add_argument("--items", type=int, default=50_000)
    p.add_argument("--modes", default="no_reasoning,greedy_reasoning")
    a = p.parse_args()
    work = Path(a.work).resolve()
    t = time.perf_counter()
    wh = build(work, a.items)
    print(f"warehouse with {a.items:,} items and the model's index built in "
          f"{time.perf_counter() - t:.0f}s", flush=True)
    rows = []
    for i, users in enumerate(int(x) for x in a.scales.split(",")):
        day = str((pd.Timestamp("2100-01-01") + pd.Timedelta(days=i)).date())
        replicate_histories(wh, users, day)
        for mode in a.modes.split(","):
            r = score(wh, day, mode)
            row = {"users": users, "items": a.items, "mode": mode,
                   "udf_users_per_s": r["udf_users_per_s"], "job_wall_s": round(r["wall_s"], 1),
                   "driver_peak_mib": round(r["driver_mib"]), "worker_peak_mib":
                   round(r["worker_mib"]), "commits": r["commits"]}
            rows.append(row)
            print(json.dumps(row), flush=True)

    # Killed after two of its four slices, then resumed: the lists equal the clean run's.
    users = int(a.scales.split(",")[0])
    day = str((pd.Timestamp("2100-01-01") + pd.Timedelta(days=0)).date())
    clean = score(wh, day, "greedy_reasoning", ["--commit-users", str(users // 4)])
    killed = score(wh, day, "greedy_reasoning", ["--commit-users", str(users // 4)],
                   env={"R2EC_FAULT_KILL_AFTER_SLICES": "2"}, check=False)
    from deltalake import DeltaTable

    ledger = DeltaTable(str(wh / "scoring_runs")).to_pandas()
    dead = ledger[ledger["finished_at"].isna()].sort_values("started_at")["run_id"].iloc[-1]
    held = lists(wh, dead)["user_id"].nunique()
    resumed = score(wh, day, "greedy_reasoning", ["--commit-users", str(users // 4),
                                                   "--resume", dead])
    same = lists(wh, dead).equals(lists(wh, clean["run_id"]))
    resume = {"users": users, "killed_exit": killed["rc"], "held_when_killed": held,
              "scored_on_resume": resumed["users"], "lists_equal_clean_run": same,
              "users_in_run": int(lists(wh, dead)["user_id"].nunique())}
    print(json.dumps(resume), flush=True)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "resume": resume, "cpus": os.cpu_count()}, indent=2))
    print("\n| users | items | mode | UDF users/s | score.py wall s | driver peak MiB | "
          "largest worker MiB | commits |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['users']:,} | {r['items']:,} | {r['mode'].replace('_', ' ')} | "
              f"{r['udf_users_per_s']} | {r['job_wall_s']} | {r['driver_peak_mib']:,} | "
              f"{r['worker_peak_mib']:,} | {r['commits']} |")


if __name__ == "__main__":
    main()
