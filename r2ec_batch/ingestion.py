"""One ingest, as `jobs/ingest.py` asks for it: a source's candidate rows (`sources`) split by
the validation rules, reconciled file by file (every line read is accepted or quarantined,
checked before anything is written), and merged into `items`, `interactions` and `quarantine`
on their keys, so that ingesting the same files again changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from r2ec_batch import delta_io, sources
from r2ec_batch.cli import JobError
from r2ec_batch.schemas import INTERACTIONS, ITEMS, QUARANTINE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceFiles:
    """Where a source's rows are (the flags of jobs/ingest.py)."""

    source: str
    path: str | None = None
    reviews: str | None = None
    meta: str | None = None
    paper_filters: bool = True
    encoding: str = "ISO-8859-1"


def read_source(spark: SparkSession, src: SourceFiles) -> tuple[sources.Candidates, str]:
    """The candidate rows and the name recorded as their `source`."""
    if src.source == "ml-100k":
        return sources.read_ml100k_atomic(spark, src.path), src.source
    if src.source == "movielens":
        return sources.read_movielens_raw(spark, src.path, src.encoding), src.source
    cand = sources.read_amazon2023(spark, src.reviews, src.meta, src.paper_filters)
    return cand, f"amazon2023:{cand.files['items'].rsplit('/', 1)[-1]}"


def ingest(spark: SparkSession, warehouse: str, cand: sources.Candidates, source: str,
           echo: Callable[[str], None] = log.info) -> dict[str, dict]:
    """Validate, reconcile (each file's line goes to `echo`) and merge; the merges' metrics
    by table. Raises JobError, with nothing written, when a file does not reconcile."""
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    items_ok, items_bad, items_fixed = sources.validate_items(cand.items)
    items_ok, items_fixed = items_ok.cache(), items_fixed.cache()
    # Events may refer to items of this ingest or of an earlier one.
    known = items_ok.select("item_id")
    if delta_io.exists(spark, warehouse, ITEMS):
        known = known.unionByName(delta_io.read(spark, warehouse, ITEMS).select("item_id")).distinct()
    inter_ok, inter_bad = sources.validate_interactions(cand.interactions, known, items_bad)
    inter_ok = inter_ok.cache()
    refused = items_bad.drop("item_id").unionByName(inter_bad).cache()
    if _reconcile(cand, items_ok, inter_ok, refused, items_fixed, echo):
        for r in refused.groupBy("reason").count().orderBy(F.desc("count")).limit(10).collect():
            log.info("quarantined %d row(s): %s", r["count"], r["reason"][:200])

    delta_io.add_missing_columns(spark, warehouse, INTERACTIONS)
    delta_io.add_missing_columns(spark, warehouse, QUARANTINE)
    listed = refused.withColumn("action", F.lit("refused")).unionByName(
        items_fixed.withColumn("action", F.lit("repaired")))
    stamp = {"source": F.lit(source), "ingested_at": F.lit(now).cast("timestamp")}
    return {
        "items": delta_io.merge_into(items_ok.withColumns(stamp), ITEMS, warehouse,
                                     update_columns=["title", "attributes"]),
        "interactions": delta_io.merge_into(
            inter_ok.withColumns(stamp), INTERACTIONS, warehouse,
            update_columns=["rating", "source_file", "source_line"]),
        "quarantine": delta_io.merge_into(_quarantine_rows(listed, source, now), QUARANTINE,
                                          warehouse,
                                          update_columns=["reason", "action", "raw_bytes_hex"]),
    }


def _reconcile(cand: sources.Candidates, items_ok: DataFrame, inter_ok: DataFrame,
               refused: DataFrame, items_fixed: DataFrame, echo: Callable[[str], None]) -> int:
    """read = accepted + quarantined for every file, before anything is written; returns how
    many rows were quarantined. Every count comes from one query (one pass over the files and
    the validated rows, where one count each took five Spark jobs)."""
    def tagged(df: DataFrame, kind: str, file: str | None = None) -> DataFrame:
        name = F.col("file") if file is None else F.lit(file.rsplit("/", 1)[-1])
        return df.select(name.alias("file"), F.lit(kind).alias("kind"))

    rows = (tagged(cand.items.unionByName(cand.interactions, allowMissingColumns=True), "read")
            .unionByName(tagged(items_ok, "accepted", cand.files["items"]))
            .unionByName(tagged(inter_ok, "accepted", cand.files["interactions"]))
            .unionByName(tagged(refused, "quarantined"))
            .unionByName(tagged(items_fixed, "repaired")))
    n: dict[tuple[str, str], int] = {(r["file"], r["kind"]): r["count"]
                                     for r in rows.groupBy("file", "kind").count().collect()}
    for f in sorted({f for f, kind in n if kind == "read"}):
        read, ok, bad = (n.get((f, k), 0) for k in ("read", "accepted", "quarantined"))
        line = f"{f}: read {read:,} = accepted {ok:,} + quarantined {bad:,}"
        fixed = n.get((f, "repaired"), 0)
        echo(line + (f" ({fixed:,} accepted after repair)" if fixed else ""))
        if read != ok + bad:
            raise JobError(f"reconciliation failed ({line}); nothing written")
    return sum(c for (_, kind), c in n.items() if kind == "quarantined")


def _quarantine_rows(rows: DataFrame, source: str, now: datetime) -> DataFrame:
    # Hash of file, line number and content: stable across re-runs of the same file, distinct
    # for two identical lines (an exact duplicate is quarantined once per extra copy).
    row_hash = F.sha2(F.concat_ws("\u0001", "file", F.col("line_no").cast("string"), "raw"), 256)
    return rows.select(
        F.lit(source).alias("source"), row_hash.alias("row_hash"), "file", "line_no",
        F.substring("raw", 1, 4000).alias("raw"), F.substring("reason", 1, 500).alias("reason"),
        F.lit(now.date()).alias("ingest_date"), F.lit(now).cast("timestamp").alias("ingested_at"),
        # the original bytes, whole up to 1 MB (a longer line is refused for its length)
        "action", F.substring("raw_hex", 1, 2 * sources.MAX_LINE_CHARS).alias("raw_bytes_hex"),
    )
