"""What each column of each table means, in the words a catalog shows analysts.

`jobs/register_tables.py` writes these as column comments (and each TableSpec's description as
the table comment), so `DESCRIBE TABLE r2ec.recommendations` answers what a column holds without
opening the code. A test checks that every column of every table in `ALL_TABLES` has one.
"""

from __future__ import annotations

from r2ec_batch.schemas.tables import ALL_TABLES, TableSpec

_RUN = {
    "run_date": "the day the lists are for (UTC); partition column",
    "variant": "champion, challenger or another name: models scored side by side for one date",
    "run_id": "the scoring run (UTC start time + random suffix); read only runs in published_runs",
}
_HISTORY = {
    "history_item_ids": "the previous <= 20 items, oldest first",
    "history_titles": "their titles, same order",
    "history_ratings": "their ratings, same order (null where the source has none)",
    "history_ts": "their event times (UTC), same order",
}

COLUMN_COMMENTS: dict[str, dict[str, str]] = {
    "interactions": {
        "user_id": "the user, as the source names them",
        "item_id": "the item, as the source names it (joins items.item_id)",
        "ts": "event time, UTC",
        "rating": "the user's rating (null where the source has none)",
        "source": "dataset the event came from (ml-100k, amazon-...)",
        "ingested_at": "when jobs/ingest.py accepted the row (UTC)",
        "source_file": "input file the event was read from",
        "source_line": "line in that file: the order of events within the same second",
    },
    "items": {
        "item_id": "the item, as the source names it",
        "title": "title (movies: with the year)",
        "attributes": "free-form attributes: year, genres, price, category, ...",
        "source": "dataset the item came from",
        "ingested_at": "when jobs/ingest.py accepted the row (UTC)",
    },
    "quarantine": {
        "source": "dataset the row came from",
        "row_hash": "hash of the raw row: the same bad row is recorded once",
        "file": "input file",
        "line_no": "line in that file",
        "raw": "the row as read (undecodable bytes shown as U+FFFD)",
        "reason": "why it was refused or repaired",
        "ingest_date": "day of the ingest run (UTC); partition column",
        "ingested_at": "time of the ingest run (UTC)",
        "action": "refused (not in the tables) or repaired (accepted with U+FFFD); null = refused",
        "raw_bytes_hex": "a repaired row's original bytes, hex",
    },
    "user_histories": {
        "as_of_date": "histories hold events up to the end of this day (UTC); partition column",
        "user_id": "the user",
        **_HISTORY,
        "history_len": "number of items in the history (<= 20)",
        "last_ts": "time of the user's latest event",
        "history_hash": "hash of the history: unchanged users are not re-scored",
    },
    "training_samples": {
        "sample_id": "position in the protocol's order (stable sort by target time)",
        "user_id": "the user",
        "position": "index of the target in the user's time-ordered events (>= 1)",
        **_HISTORY,
        "target_item_id": "the item that came next: what the model should rank first",
        "target_ts": "its event time (UTC)",
        "target_rating": "its rating",
        "split": "train, valid or test (80/10/10 along sample_id); partition column",
    },
    "item_embeddings": {
        "model_version": "the model that encoded the items; partition column",
        "item_id": "the item",
        "embedding": "H_V: the model's last hidden state of the item prompt (not normalised)",
        "created_at": "when jobs/embed_items.py wrote it (UTC)",
    },
    "recommendations": {
        **_RUN,
        "user_id": "the user",
        "rank": "1 = best",
        "item_id": "the recommended item (never one of the user's history items)",
        "score": "cosine(h_T, h_v) / tau: comparable within one model version only",
        "model_version": "the model that scored the list",
    },
    "rationales": {
        **_RUN,
        "user_id": "the user",
        "text": "the reasoning the model wrote before ranking, items named by title",
        "tokens": "its length in model tokens",
        "history_hash": "hash of the history it was written for",
        "fallback": "'popularity' when the model could not score the user (no history); else null",
        "model_version": "the model that wrote it",
    },
    "published_runs": {
        "run_date": "the day the published lists are for",
        "variant": "champion, challenger or another name",
        "run_id": "the audited run readers see (the newest row per run_date and variant)",
        "model_version": "the model that scored it",
        "as_of_date": "the user_histories date it was scored from",
        "top_k": "list length",
        "users": "users in the run",
        "recommendations": "rows in the run",
        "published_at": "when it was published (UTC)",
        "published_by": "the job or Airflow run that published it",
        "error_users": "users scored with an error (popular list, fallback 'error'); null: "
                       "published before errors were counted",
    },
    "scoring_runs": {
        "run_id": "the scoring run (recommendations.run_id)",
        "part": "0: the job that started the run; n: its n-th --resume",
        "run_date": "the day the run's lists are for",
        "variant": "champion, challenger or another name",
        "model_version": "the model that scored it",
        "as_of_date": "the user_histories date it was scored from",
        "top_k": "list length",
        "settings": "what the lists depend on (JSON); a resume must have the same",
        "started_at": "when the job started (UTC)",
        "finished_at": "when it ended (UTC); null: it stopped before the end, resume the run",
        "users_scored": "users the model scored in this part",
        "users_carried": "users whose earlier list was copied (--incremental)",
        "errors": "users scored with an error (fallback 'error')",
        "commits": "data commits of this part (two per slice of users)",
        "tokens_generated": "reasoning tokens of the stored rationales, summed",
        "tokens_p50": "median reasoning tokens per scored user",
        "tokens_p95": "95th percentile of reasoning tokens per scored user",
        "wall_seconds_read": "driver seconds before scoring (histories, rules, carry-over)",
        "wall_seconds_score": "driver seconds the UDF stages took (all slices)",
        "wall_seconds_write": "driver seconds of the commits",
        "task_seconds_reasoning": "seconds the UDF tasks spent generating, summed over tasks",
        "task_seconds_search": "seconds the UDF tasks spent on h_T and the index search, summed",
        "devices": "device kinds that scored (cpu, or the GPU's name)",
        "device_count": "distinct host/device pairs that scored",
    },
    "evaluations": {
        "model_version": "the model evaluated",
        "dataset": "dataset name (ml-100k, ...)",
        "split": "train, valid or test",
        "metric": "hit, ndcg, coverage, novelty, ..., rationale_* (see the README)",
        "k": "cut-off of the list (0 where the metric has none)",
        "value": "the metric's value",
        "n_samples": "samples evaluated",
        "mode": "no_reasoning, greedy_reasoning or reasoning_xN_tT",
        "evaluated_at": "when (UTC); the newest per model, split, mode, metric and k is current",
        "data_version": "Delta version of training_samples read: compare only equal versions",
    },
    "eval_rankings": {
        "model_version": "the model evaluated; partition column",
        "split": "train, valid or test",
        "sample_id": "training_samples.sample_id",
        "rank": "1 = best",
        "item_id": "the ranked item",
        "score": "cosine(h_T, h_v) / tau",
    },
    "model_registry": {
        "model_version": "name of the trained model",
        "path": "where its checkpoint lives",
        "status": "candidate, champion (exactly one), rejected or retired",
        "parent_version": "the model it was trained from",
        "stage": "build, warmstart or recpo",
        "valid_ndcg10": "NDCG@10 on the valid split at registration",
        "metrics_json": "promotion evidence: paired difference and its 95% interval",
        "config_json": "the full training config and the training_samples version trained on",
        "created_at": "registration time (UTC)",
        "updated_at": "last status change (UTC)",
    },
    "item_blocklist": {
        "item_id": "an item no one may be recommended",
        "reason": "why (legal, quality, business)",
        "added_at": "when it was added (UTC)",
    },
}


def column_comment(spec: TableSpec, column: str) -> str:
    return COLUMN_COMMENTS[spec.name][column]


def missing_comments() -> list[str]:
    """`table.column` of every column without a comment (a test keeps this empty)."""
    return [f"{name}.{c}" for name, spec in ALL_TABLES.items() for c in spec.column_names
            if c not in COLUMN_COMMENTS.get(name, {})]
