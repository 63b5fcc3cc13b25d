"""Several jobs in one Spark application, as the cluster test submits them.

    spark-submit ... tests/cluster_pipeline.py '[["ingest", "--source", ...], ["score", ...]]'

Each job's `main` runs in turn on the one session the submit created (the jobs take an existing
session, as in-process tests do), so the cluster pays one driver start and one set of executors
for the whole pipeline instead of one per job. Each step's Spark jobs carry the step's name as
their job group, which the application's REST API shows: the test uses it to kill a worker
while scoring, not while another step runs. The jobs come from the environment that runs this
file (the packaged one on the cluster), not from this checkout. Exits with the first non-zero
status, naming the job.
"""

from __future__ import annotations

import importlib
import json
import sys


def main(argv: list[str]) -> int:
    from r2ec_batch.session import build_spark

    steps = json.loads(argv[0])
    context = build_spark("r2ec-cluster-pipeline").sparkContext  # the session every job takes
    for job, *args in steps:
        if not job.isidentifier():
            raise SystemExit(f"not a job name: {job!r}")
        context.setJobGroup(job, f"cluster pipeline: {job}")
        code = importlib.import_module(f"r2ec_batch.jobs.{job}").main(args)
        print(f"cluster pipeline: {job} exited {code}", flush=True)
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
