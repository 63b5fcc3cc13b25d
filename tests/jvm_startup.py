"""JVM start-up settings of the test suite (conftest.py applies them once per run).

Most of the suite's JVMs live for seconds: a `bin/r2ec-submit` of a job on a few thousand rows
spends more CPU starting Java (loading and JIT-compiling Spark's classes) than working. Two
settings of the JDK itself cut that; measured on 2 cores, an empty job submitted with
bin/r2ec-submit took 9.3 s of wall time and 14 CPU-s with the JDK's defaults, 4.2 s and 4.5 CPU-s
with both:
- a class-data-sharing archive (the JDK's dynamic CDS, JDK 13+) of the classes a Spark + Delta
  JVM loads, made once per checkout by one warm-up submit (tests/jvm_warmup.py) and mapped by
  every later JVM instead of parsing and verifying those classes again;
- for child JVMs only, the C1 compiler alone and the serial collector: C2's compiler threads
  and the parallel collector compete with the job for the two cores over code that runs a few
  times. The session's own JVM lives for the whole run and keeps C2.
JVM messages go to stderr (`-Xlog:all=warning:stderr`), never into a job's stdout that a test
reads. An archive is valid only for the JDK and class path it was made with: the file name is a
hash of both, and a JVM that cannot map it says so on stderr and runs without it. Nothing here
changes what a job computes; a SPARK_SUBMIT_OPTS already set is left as it is.

What is left of a short job's cost is the JIT warming up Spark's and Delta's code, which no
start-up archive removes. Measured on 2026-12-06 (2 cores, an ingest of the 200-user slice
submitted with bin/r2ec-submit, ~26 s wall with the settings above; 11.5 s for the same ingest in
an already-warm session): an archive made from a real ingest instead of tests/jvm_warmup.py,
24.5 s (it adds the ~1,250 classes the warm-up does not load; not worth a job-specific archive);
Temurin 25's AOT cache (`-XX:AOTCacheOutput`, classes linked and method profiles kept), 26-29 s
with or without C1 alone: no gain, so the suite stays on the JDK the jobs run on.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "jvm"
LOGS = "-Xlog:disable -Xlog:all=warning:stderr"
CHILD_JIT = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
SESSION_OPTS = "R2EC_TEST_SESSION_JVM_OPTS"  # the session JVM's, for pytest-xdist workers


def _archive_key() -> str:
    """The JDK (its version text) and the JVM's class path (pyspark's jars) the archive is for."""
    import pyspark

    jars = Path(pyspark.__file__).parent / "jars"
    java = subprocess.run(["java", "-version"], capture_output=True, text=True, check=True).stderr
    names = "\n".join(sorted(p.name for p in jars.glob("*.jar")))
    return hashlib.sha256(f"{java}\n{jars}\n{names}".encode()).hexdigest()[:16]


def class_archive() -> Path | None:
    """This checkout's archive for this JDK and pyspark, made now when missing (30-40 s on 2 cores, once);
    None, with a warning, when the JDK cannot make one."""
    archive = CACHE / f"spark-{_archive_key()}.jsa"
    if archive.is_file():
        return archive
    CACHE.mkdir(parents=True, exist_ok=True)
    for stale in CACHE.glob("spark-*.jsa"):
        stale.unlink()
    partial = CACHE / f"making-{os.getpid()}.jsa"
    env = {**os.environ, "SPARK_SUBMIT_OPTS": f"-XX:ArchiveClassesAtExit={partial} "
                                              "-Xlog:disable -Xlog:all=error:stderr"}
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run([str(REPO / "bin" / "r2ec-submit"), "--conf",
                               "spark.ui.showConsoleProgress=false",
                               str(REPO / "tests" / "jvm_warmup.py"), tmp],
                              env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    if done.returncode != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        warnings.warn("no JVM class-data archive (the suite runs, with slower JVM starts): "
                      f"{done.stderr.strip()[-500:]}", stacklevel=2)
        return None
    os.replace(partial, archive)  # whole or absent: a killed run leaves only a making-* file
    return archive


def configure(environ=os.environ) -> str | None:
    """Set SPARK_SUBMIT_OPTS for every child JVM; returns the options for the session's own
    JVM (None: leave the environment as it is, for a user's own SPARK_SUBMIT_OPTS)."""
    if environ.get("SPARK_SUBMIT_OPTS") is not None:
        # a user's own, or a pytest-xdist worker's, which inherits what its controller set
        return environ.get(SESSION_OPTS)
    archive = class_archive()
    shared = f"-XX:SharedArchiveFile={archive} " if archive else ""
    environ["SPARK_SUBMIT_OPTS"] = f"{shared}{CHILD_JIT} {LOGS}"
    environ[SESSION_OPTS] = f"{shared}{LOGS}"
    return environ[SESSION_OPTS]


if __name__ == "__main__":  # make the archive ahead of a run: python tests/jvm_startup.py
    print(class_archive() or "no archive", file=sys.stderr)
