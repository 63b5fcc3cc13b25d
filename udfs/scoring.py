"""pandas UDFs (`mapInPandas` iterators) that run the engine inside Spark's Python workers.

- Model and index are given by location (a path or a URI) and version: a worker fetches a
  remote one into its machine's cache once (`r2ec_batch.artifacts`), so executors never need the
  driver's disk.
- The model, tokenizer and index load once per Python worker (module-level cache keyed by model
  version, index location, backend and device; `spark.python.worker.reuse` keeps the worker,
  measured: 2 workers served 8 partitions), never per batch, never pickled into a task.
- Settings travel as a small frozen dataclass through `functools.partial`.
- Each Arrow batch (up to spark.sql.execution.arrow.maxRecordsPerBatch rows) is cut into
  model-sized chunks; a chunk that fails is split down to single users, an out-of-memory halves
  the chunk size for the rest of the partition, and a user who still fails gets the popular
  list with fallback 'error' and the error as rationale (`udfs/isolation.py`), so one user
  never fails the task.
- One torch / faiss thread per worker by default: with 2 threads per worker on 2 cores it ran
  2.7x slower (measured). On a GPU executor the device is the GPU Spark assigned to the task.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import pandas as pd

from r2ec.config import FALLBACK_ERROR, SamplingConfig

log = logging.getLogger(__name__)

# Besides each user's list: the seconds of the batch spent reasoning and on h_T + search,
# shared out over its users (so sums over any set of users are what they cost), and the
# host/device that scored it.
RECOMMEND_SCHEMA = ("key string, history_hash string, text string, tokens int, fallback string, "
                    "item_ids array<string>, scores array<float>, seconds_reasoning double, "
                    "seconds_search double, device string")
EMBED_SCHEMA = "item_id string, embedding array<float>"

_ENGINES: dict[tuple, object] = {}


@dataclass(frozen=True)
class ScoringSettings:
    model_location: str
    model_version: str
    index_location: str
    top_k: int = 10
    reasoning: bool = True
    samples: int = 1
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    backend: str = "transformers"
    device: str | None = None
    threads: int = 1
    chunk_size: int = 64
    max_batch_tokens: int = 0  # 0: no limit; else larger chunks count as out of memory
    popular: tuple[str, ...] = ()
    # business rules: never recommended to anyone (blocklist, unavailable), and the name of a
    # per-user column of further items never to recommend (everything the user ever saw)
    blocked: tuple[str, ...] = ()
    exclude_column: str | None = None
    key_column: str = "user_id"
    ref_column: str = "ref_ts"


def _set_threads(n: int) -> None:
    import faiss
    import torch

    if n > 0:
        torch.set_num_threads(n)
        faiss.omp_set_num_threads(n)


def _device(requested: str | None) -> str | None:
    """A GPU executor gets one GPU per task: use the one Spark assigned."""
    if requested:
        return requested
    try:
        from pyspark import TaskContext

        ctx = TaskContext.get()
        gpus = ctx.resources().get("gpu") if ctx else None
        if gpus and gpus.addresses:
            return f"cuda:{gpus.addresses[0]}"
    except Exception:  # noqa: BLE001 - no task context outside Spark
        pass
    return None


@functools.lru_cache(maxsize=8)
def _device_label(device) -> str:
    """'host/kind' for the run's cost record: 'cpu' or the GPU's name."""
    import socket

    import torch

    kind = (torch.cuda.get_device_name(device) if torch.device(device).type == "cuda"
            else torch.device(device).type)
    return f"{socket.gethostname()}/{kind}"


def _model(location: str, version: str, backend: str, device: str | None, threads: int):
    key = ("model", version, backend, device)
    if key not in _ENGINES:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        _set_threads(threads)
        from r2ec.model import R2ec
        from r2ec_batch.artifacts import local_model

        _ENGINES[key] = R2ec.load(local_model(location, version), device=device, backend=backend)
        log.info("worker %d loaded %s", os.getpid(), _ENGINES[key].model_version)
    return _ENGINES[key]


def _recommender(s: ScoringSettings):
    key = ("recommender", s.model_version, s.index_location, s.backend, _device(s.device), s.popular)
    if key not in _ENGINES:
        from r2ec.recommend import Recommender
        from r2ec_batch.artifacts import load_index

        r2ec = _model(s.model_location, s.model_version, s.backend, _device(s.device), s.threads)
        index = load_index(s.index_location, r2ec.model_version, tau=r2ec.tau)
        _ENGINES[key] = Recommender(r2ec, index, s.popular)
    return _ENGINES[key]


def recommend_partition(batches: Iterator[pd.DataFrame], settings: ScoringSettings
                        ) -> Iterator[pd.DataFrame]:
    from r2ec.data import histories, times
    from r2ec_batch.udfs.isolation import ChunkRunner, describe

    rec = _recommender(settings)
    runner = ChunkRunner(settings.chunk_size)  # one per partition: its chunk size may shrink
    blocked = frozenset(settings.blocked)
    # Test hook: a chunk holding this key raises, as a title the tokenizer rejects would (the
    # worker's environment comes from the job's process, so only a test that starts one sets it).
    planted = os.environ.get("R2EC_FAULT_FAIL_KEY")
    for pdf in batches:
        exclude = ([list(x) for x in pdf[settings.exclude_column]] if settings.exclude_column
                   else [[] for _ in range(len(pdf))])

        def score(a: int, b: int, pdf=pdf, exclude=exclude):
            part = pdf.iloc[a:b]  # converted per chunk: a malformed row fails its chunk only
            if planted and (part[settings.key_column].astype(str) == planted).any():
                raise ValueError(f"planted failure for {planted} (R2EC_FAULT_FAIL_KEY)")
            return rec.recommend(histories(part), times(part[settings.ref_column]),
                                 top_k=settings.top_k, reasoning=settings.reasoning,
                                 samples=settings.samples, sampling=settings.sampling,
                                 exclude=exclude[a:b], blocked=blocked,
                                 max_batch_tokens=settings.max_batch_tokens)

        def failed(i: int, exc: BaseException, pdf=pdf, exclude=exclude):
            ids = pdf["history_item_ids"].iloc[i]
            seen = {str(x) for x in ids} if ids is not None else set()
            return rec.fallback([], settings.top_k, seen | blocked | set(exclude[i]),
                                reason=FALLBACK_ERROR, note=describe(exc))

        before = dict(rec.seconds)
        results = runner.run(len(pdf), score, failed)
        share = 1.0 / max(len(pdf), 1)
        yield pd.DataFrame({
            "key": pdf[settings.key_column].astype(str).to_numpy(),
            "history_hash": pdf["history_hash"].to_numpy() if "history_hash" in pdf
            else [None] * len(pdf),
            "text": [r.rationale for r in results],
            "tokens": [r.rationale_tokens for r in results],
            "fallback": [r.fallback for r in results],
            "item_ids": [r.item_ids for r in results],
            "scores": [r.scores for r in results],
            "seconds_reasoning": (rec.seconds["reasoning"] - before["reasoning"]) * share,
            "seconds_search": (rec.seconds["search"] - before["search"]) * share,
            "device": _device_label(rec.r2ec.device),
        })
    if runner.failed_users or runner.splits:
        log.warning("partition done: %d user(s) scored, %d failed alone (fallback 'error'), "
                    "%d chunk split(s), final chunk size %d", runner.scored_users,
                    runner.failed_users, runner.splits, runner.chunk_size)


def embed_partition(batches: Iterator[pd.DataFrame], model_location: str, model_version: str,
                    backend: str = "transformers", device: str | None = None, threads: int = 1,
                    chunk_size: int = 256) -> Iterator[pd.DataFrame]:
    r2ec = _model(model_location, model_version, backend, _device(device), threads)
    for pdf in batches:
        for start in range(0, len(pdf), chunk_size):
            part = pdf.iloc[start: start + chunk_size]
            attrs = [dict(a) if a is not None else {} for a in part["attributes"]]
            prompts = r2ec.item_prompts(list(part["item_id"]), list(part["title"]), attrs)
            vectors = r2ec.encode_items(prompts)
            yield pd.DataFrame({"item_id": part["item_id"].to_numpy(),
                                "embedding": [v.astype("float32") for v in vectors]})


# Rows per Spark task once there are many: a lost task (an executor gone) costs a re-run of
# this many rows, not of a whole partition per core.
ROWS_PER_TASK = 2000


def model_partitions(n_rows: int, parallelism: int, chunk_size: int) -> int:
    """How many partitions a model UDF runs over `n_rows` in. Each partition's Python worker
    loads the model (seconds for a small one, a minute for a large one), so none is given less
    than one model batch (`chunk_size` rows): one per core (`parallelism`) while there is a
    batch for each, then one per ROWS_PER_TASK rows. 40 users -> 1 partition, not one model
    load per core for a few users each."""
    return max(1, min(parallelism, -(-n_rows // chunk_size)), n_rows // ROWS_PER_TASK)


def recommend_udf(settings: ScoringSettings):
    return functools.partial(recommend_partition, settings=settings)


def embed_udf(model_location: str, model_version: str, **kw):
    return functools.partial(embed_partition, model_location=model_location,
                             model_version=model_version, **kw)
