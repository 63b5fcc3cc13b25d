"""Every Delta table of the product, declared once.

A `TableSpec` carries the table's name (also its folder under the warehouse), its Spark schema,
its key, its partition columns and a one-line description that the README repeats for analysts.
Jobs never spell a column list themselves: they build a DataFrame, pass it through
`schemas.conform` and write it with the helpers in `r2ec_batch/delta_io.py`.

Ids are strings everywhere (MovieLens ids are numbers, Amazon's are ASINs); the engine maps
item ids to rows of its item table itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql.types import (
    ArrayType,
    DateType,
    DoubleType,
    FloatType,
    IntegerType,
    LongType,
    MapType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)


@dataclass(frozen=True)
class TableSpec:
    name: str
    schema: StructType
    key: tuple[str, ...]
    partition_by: tuple[str, ...] = ()
    description: str = ""
    # Columns readers filter on inside a partition (one user's lists, one sample's ranking):
    # jobs/maintain_tables.py Z-orders the files by them, so such a read skips most files.
    cluster_by: tuple[str, ...] = ()

    @property
    def column_names(self) -> list[str]:
        return [f.name for f in self.schema.fields]


def _f(name: str, dtype, nullable: bool = True) -> StructField:
    return StructField(name, dtype, nullable)


_S, _TS, _D = StringType(), TimestampType(), DateType()

INTERACTIONS = TableSpec(
    name="interactions",
    schema=StructType([
        _f("user_id", _S, False),
        _f("item_id", _S, False),
        _f("ts", _TS, False),
        _f("rating", FloatType()),
        _f("source", _S, False),
        _f("ingested_at", _TS, False),
        # Where the event was read: events in the same second keep this order (the protocol's
        # stable sort). Nullable only so that a table from before these columns can be migrated
        # in place (ingest adds them, a re-ingest fills them); build_histories refuses nulls.
        _f("source_file", _S),
        _f("source_line", LongType()),
    ]),
    key=("user_id", "item_id", "ts"),
    cluster_by=("user_id",),
    description="One row per accepted user-item event (rating/review/purchase), UTC time, with "
                "the file and line it was read from (its order among same-second events).",
)

ITEMS = TableSpec(
    name="items",
    schema=StructType([
        _f("item_id", _S, False),
        _f("title", _S, False),
        _f("attributes", MapType(_S, _S)),
        _f("source", _S, False),
        _f("ingested_at", _TS, False),
    ]),
    key=("item_id",),
    description="The catalogue: title plus free-form attributes (year, genres, price, ...).",
)

QUARANTINE = TableSpec(
    name="quarantine",
    schema=StructType([
        _f("source", _S, False),
        _f("row_hash", _S, False),
        _f("file", _S, False),
        _f("line_no", LongType()),
        _f("raw", _S),
        _f("reason", _S, False),
        _f("ingest_date", _D, False),
        _f("ingested_at", _TS, False),
        # 'refused' (not in the tables) or 'repaired' (accepted with U+FFFD in place of bytes
        # that are not UTF-8); null on rows written before repairs existed, which were refused.
        _f("action", _S),
        _f("raw_bytes_hex", _S),  # a repaired row's original bytes, hex
    ]),
    key=("source", "row_hash"),
    partition_by=("ingest_date",),
    description="Input rows that were refused or repaired, with the reason; nothing read is ever "
                "dropped silently.",
)

_HISTORY_FIELDS = [
    _f("history_item_ids", ArrayType(_S, False), False),
    _f("history_titles", ArrayType(_S, True), False),
    _f("history_ratings", ArrayType(FloatType(), True), False),
    _f("history_ts", ArrayType(_TS, False), False),
]

USER_HISTORIES = TableSpec(
    name="user_histories",
    schema=StructType([
        _f("as_of_date", _D, False),
        _f("user_id", _S, False),
        *_HISTORY_FIELDS,
        _f("history_len", IntegerType(), False),
        _f("last_ts", _TS, False),
        _f("history_hash", _S, False),
    ]),
    key=("as_of_date", "user_id"),
    partition_by=("as_of_date",),
    cluster_by=("user_id",),
    description="Each user's latest <=20 items up to the end of as_of_date (UTC), oldest first.",
)

TRAINING_SAMPLES = TableSpec(
    name="training_samples",
    schema=StructType([
        _f("sample_id", LongType(), False),
        _f("user_id", _S, False),
        _f("position", IntegerType(), False),
        *_HISTORY_FIELDS,
        _f("target_item_id", _S, False),
        _f("target_ts", _TS, False),
        _f("target_rating", FloatType()),
        _f("split", _S, False),
    ]),
    key=("sample_id",),
    partition_by=("split",),
    cluster_by=("user_id",),
    description="(previous <=20 items -> next item) samples; sample_id = position in the stable "
                "order by target time (the reference preprocessing's interaction_id); split "
                "80/10/10 along that order.",
)

ITEM_EMBEDDINGS = TableSpec(
    name="item_embeddings",
    schema=StructType([
        _f("model_version", _S, False),
        _f("item_id", _S, False),
        _f("embedding", ArrayType(FloatType(), False), False),
        _f("created_at", _TS, False),
    ]),
    key=("model_version", "item_id"),
    partition_by=("model_version",),
    description="H_V: the model's last-token hidden state of each item prompt (not normalised).",
)

# Scoring output is written per run (write-audit-publish): a scoring run appends its rows under
# a new run_id in (run_date, variant); `published_runs` says which run of each (run_date,
# variant) analysts see. Recommendations and rationales of a run therefore become visible
# together, in the one commit that publishes the run, and only after it passed its audit.
_RUN_FIELDS = [
    _f("run_date", _D, False),
    # champion, challenger, or any name ([A-Za-z0-9_-]): two models scored for one date side by
    # side; analysts' default view is the published champion
    _f("variant", _S, False),
    _f("run_id", _S, False),  # UTC time of the scoring run + a random suffix: sorts by age
]

RECOMMENDATIONS = TableSpec(
    name="recommendations",
    schema=StructType([
        *_RUN_FIELDS,
        _f("user_id", _S, False),
        _f("rank", IntegerType(), False),
        _f("item_id", _S, False),
        _f("score", FloatType(), False),
        _f("model_version", _S, False),
    ]),
    key=("run_date", "variant", "run_id", "user_id", "rank"),
    partition_by=("run_date", "variant"),
    cluster_by=("user_id",),
    description="Top-k per user, run date and variant; score = cosine(h_T, h_v) / tau; history "
                "items never appear. Only runs listed in published_runs are meant for readers.",
)

RATIONALES = TableSpec(
    name="rationales",
    schema=StructType([
        *_RUN_FIELDS,
        _f("user_id", _S, False),
        _f("text", _S, False),
        _f("tokens", IntegerType(), False),
        _f("history_hash", _S, False),
        _f("fallback", _S),
        _f("model_version", _S, False),
    ]),
    key=("run_date", "variant", "run_id", "user_id"),
    partition_by=("run_date", "variant"),
    cluster_by=("user_id",),
    description="The reasoning the model wrote before recommending (empty with --no-reasoning).",
)

PUBLISHED_RUNS = TableSpec(
    name="published_runs",
    schema=StructType([
        _f("run_date", _D, False),
        _f("variant", _S, False),
        _f("run_id", _S, False),
        _f("model_version", _S, False),
        _f("as_of_date", _D, False),
        _f("top_k", IntegerType(), False),
        _f("users", LongType(), False),
        _f("recommendations", LongType(), False),
        _f("published_at", _TS, False),
        _f("published_by", _S, False),  # the job or Airflow run that published it
        # users whose scoring failed (popular list, fallback 'error'); null: published before
        # it was counted
        _f("error_users", LongType(), True),
    ]),
    key=("run_date", "variant", "published_at"),
    description="Every publication of an audited scoring run, appended; the newest row per "
                "(run_date, variant) is the run analysts see (publishing an older run_id again "
                "rolls back).",
)

SCORING_RUNS = TableSpec(
    name="scoring_runs",
    schema=StructType([
        _f("run_id", _S, False),
        _f("part", IntegerType(), False),  # 0: the first job of the run; n: its n-th --resume
        _f("run_date", _D, False),
        _f("variant", _S, False),
        _f("model_version", _S, False),
        _f("as_of_date", _D, False),
        _f("top_k", IntegerType(), False),
        _f("settings", _S, False),  # what the lists depend on, as JSON; a resume must match
        _f("started_at", _TS, False),
        _f("finished_at", _TS),  # null: the job stopped before the end (resume it)
        _f("users_scored", LongType()),
        _f("users_carried", LongType()),
        _f("errors", LongType()),
        _f("commits", IntegerType()),  # data commits of this part (2 per slice of users)
        _f("tokens_generated", LongType()),
        _f("tokens_p50", DoubleType()),
        _f("tokens_p95", DoubleType()),
        _f("wall_seconds_read", DoubleType()),
        _f("wall_seconds_score", DoubleType()),
        _f("wall_seconds_write", DoubleType()),
        _f("task_seconds_reasoning", DoubleType()),  # summed over the UDF tasks
        _f("task_seconds_search", DoubleType()),  # h_T + index search, summed over the tasks
        _f("devices", _S),  # the device kinds that scored, e.g. "cpu" or "NVIDIA H200"
        _f("device_count", IntegerType()),  # distinct (host, device) pairs that scored
    ]),
    key=("run_id", "part"),
    description="One row per scoring job of a run (a resumed run has several): its settings and "
                "what it cost (users, tokens, seconds per stage, devices).",
)

EVALUATIONS = TableSpec(
    name="evaluations",
    schema=StructType([
        _f("model_version", _S, False),
        _f("dataset", _S, False),
        _f("split", _S, False),
        _f("metric", _S, False),
        _f("k", IntegerType(), False),
        _f("value", DoubleType(), False),
        _f("n_samples", LongType(), False),
        _f("mode", _S, False),
        _f("evaluated_at", _TS, False),
        # Delta version of training_samples the evaluation read (null on rows from before it
        # was recorded): two evaluations are comparable only on the same data.
        _f("data_version", LongType()),
    ]),
    key=("model_version", "dataset", "split", "mode", "metric", "k", "evaluated_at"),
    description="Offline metrics (hit, ndcg at k, rationale quality) of a model on a split, "
                "paper protocol; appended, one row per metric and evaluation: the history is "
                "kept, the newest evaluated_at is the current figure.",
)

EVAL_RANKINGS = TableSpec(
    name="eval_rankings",
    schema=StructType([
        _f("model_version", _S, False),
        _f("split", _S, False),
        _f("sample_id", LongType(), False),
        _f("rank", IntegerType(), False),
        _f("item_id", _S, False),
        _f("score", FloatType(), False),
    ]),
    key=("model_version", "split", "sample_id", "rank"),
    partition_by=("model_version",),
    cluster_by=("split", "sample_id"),
    description="Ranked lists behind `evaluations`, so anyone can recompute the metrics.",
)

MODEL_REGISTRY = TableSpec(
    name="model_registry",
    schema=StructType([
        _f("model_version", _S, False),
        _f("path", _S, False),
        _f("status", _S, False),  # candidate | champion | rejected | retired
        _f("parent_version", _S),
        _f("stage", _S, False),  # build | warmstart | recpo
        _f("valid_ndcg10", DoubleType()),
        _f("metrics_json", _S),
        _f("config_json", _S),
        _f("created_at", _TS, False),
        _f("updated_at", _TS, False),
    ]),
    key=("model_version",),
    description="Every trained model; exactly one row has status 'champion', the one scoring uses.",
)

ITEM_BLOCKLIST = TableSpec(
    name="item_blocklist",
    schema=StructType([
        _f("item_id", _S, False),
        _f("reason", _S),
        _f("added_at", _TS, False),
    ]),
    key=("item_id",),
    description="Items never to recommend to anyone (legal, quality, business); read by "
                "jobs/score.py at every run, written by whoever owns the rule.",
)


ALL_TABLES: dict[str, TableSpec] = {
    t.name: t
    for t in (
        INTERACTIONS, ITEMS, QUARANTINE, USER_HISTORIES, TRAINING_SAMPLES, ITEM_EMBEDDINGS,
        RECOMMENDATIONS, RATIONALES, PUBLISHED_RUNS, SCORING_RUNS, EVALUATIONS, EVAL_RANKINGS,
        MODEL_REGISTRY, ITEM_BLOCKLIST,
    )
}
