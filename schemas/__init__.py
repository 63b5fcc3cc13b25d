"""Table schemas: every Delta table declared once, and the conformance check jobs run before writing."""

from r2ec_batch.schemas.conform import SchemaMismatch, conform
from r2ec_batch.schemas.tables import (
    ALL_TABLES,
    EVAL_RANKINGS,
    EVALUATIONS,
    INTERACTIONS,
    ITEM_BLOCKLIST,
    ITEM_EMBEDDINGS,
    ITEMS,
    MODEL_REGISTRY,
    PUBLISHED_RUNS,
    QUARANTINE,
    RATIONALES,
    RECOMMENDATIONS,
    SCORING_RUNS,
    TRAINING_SAMPLES,
    USER_HISTORIES,
    TableSpec,
)

__all__ = [
    "ALL_TABLES", "EVALUATIONS", "EVAL_RANKINGS", "INTERACTIONS", "ITEMS", "ITEM_BLOCKLIST",
    "ITEM_EMBEDDINGS",
    "MODEL_REGISTRY", "PUBLISHED_RUNS", "QUARANTINE", "RATIONALES", "RECOMMENDATIONS",
    "SCORING_RUNS", "TRAINING_SAMPLES",
    "USER_HISTORIES", "SchemaMismatch", "TableSpec", "conform",
]
