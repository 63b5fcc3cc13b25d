"""What the benchmark scripts share: one results table per run (rows with the protocol's
metrics, each method's ranked lists, paired bootstrap intervals against a reference row, the
valid curves and their plot), and the rationale summary of an R²ec evaluation. No Spark, no
Delta: the GPU benchmark runs it on a bare machine.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from r2ec.data import Catalog
from r2ec.evaluation import EvalResult
from r2ec.metrics import ndcg_from_lists, paired_bootstrap
from r2ec.reasoning import item_tags, rationale_metrics, render

log = logging.getLogger(__name__)
COLS = ["hit@5", "hit@10", "hit@20", "ndcg@5", "ndcg@10", "ndcg@20"]


def valid_curve(metrics_jsonl: Path, offset_min: float = 0.0) -> list[dict]:
    """(training minutes, valid NDCG@10) of a trainer's validations, from its metrics log."""
    out = []
    for line in metrics_jsonl.read_text().splitlines():
        r = json.loads(line)
        if r.get("split") == "valid":
            out.append({"minutes": round(offset_min + r["train_s"] / 60, 3), "step": r.get("step"),
                        "valid_ndcg@10": r["ndcg@10"]})
    return out


def rationales(res: EvalResult, test: pd.DataFrame, catalog: Catalog, titles: dict) -> dict:
    """Rationale quality of an evaluation (the shared metrics) and three examples."""
    tags = [item_tags(a) for a in catalog.attributes]
    rendered = [render(g.text, titles, list(h)[-20:])
                for g, h in zip(res.generations, test["history_titles"], strict=True)]
    metrics = rationale_metrics(
        rendered, [list(h) for h in test["history_titles"]],
        [[tags[r] for r in rows] for rows in res.top_rows], set(catalog.titles),
        {t for ts in tags for t in ts})
    examples = []
    for i in (0, len(test) // 2, len(test) - 1):
        examples.append({"sample_id": int(test["sample_id"].iat[i]), "user_id": test["user_id"].iat[i],
                         "history": list(test["history_titles"].iat[i])[-5:],
                         "rationale": rendered[i],
                         "top5": [catalog.titles[r] for r in res.top_rows[i][:5]],
                         "target": titles.get(test["target_item_id"].iat[i])})
    return {"metrics": metrics, "examples": examples}


class Table:
    """The rows, ranked lists and valid curves of one benchmark run."""

    def __init__(self, test: pd.DataFrame, catalog: Catalog):
        self.test, self.catalog = test, catalog
        self.rows: list[dict] = []
        self.lists: dict[str, np.ndarray] = {}  # method -> (S, 20) item ids
        self.curves: dict[str, list[dict]] = {}
        self.rationales: dict[str, dict] = {}  # method -> quality metrics and examples

    def record(self, method: str, res: EvalResult, seconds: float, note: str = "",
               curve: list[dict] | None = None) -> None:
        self.rows.append({"method": method, **{c: res.metrics[c] for c in COLS},
                          "wall_s": round(seconds, 1), "note": note})
        ids = np.asarray(self.catalog.ids, dtype=object)
        self.lists[method] = ids[res.top_rows]
        if curve:
            self.curves[method] = curve
        log.info("%s: %s (%.0fs)", method, {c: round(res.metrics[c], 4) for c in COLS}, seconds)

    def rankings(self):
        """The ranked lists as one Arrow table (method, sample_id, user_id, target, rank, item)."""
        import pyarrow as pa

        parts = []
        for method, lists in self.lists.items():
            n, k = lists.shape
            parts.append(pa.table({
                "method": [method] * (n * k),
                "sample_id": np.repeat(self.test["sample_id"].to_numpy(dtype=np.int64), k),
                "user_id": np.repeat(self.test["user_id"].to_numpy(dtype=object), k),
                "target_item_id": np.repeat(self.test["target_item_id"].to_numpy(dtype=object), k),
                "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), n),
                "item_id": lists.reshape(-1),
            }))
        return pa.concat_tables(parts)

    def intervals(self, reference: str) -> None:
        """Each row's NDCG@10 minus the reference's, with a paired bootstrap 95% interval,
        per-sample NDCG@10 recomputed from the ranked lists."""
        targets = list(self.test["target_item_id"])
        per = {m: ndcg_from_lists(lists, targets, 10) for m, lists in self.lists.items()}
        for r in self.rows:
            if r["method"] == reference or reference not in per:
                r["delta_ndcg@10"] = None
                continue
            d, lo, hi = paired_bootstrap(per[r["method"]], per[reference])
            r["delta_ndcg@10"] = {"diff": d, "low": lo, "high": hi}

    def markdown(self, reference: str) -> str:
        md = ["| method | " + " | ".join(COLS) + f" | N@10 − {reference} [95% CI] | wall s | note |",
              "|---|" + "---|" * len(COLS) + "---|---|---|"]
        for r in self.rows:
            d = r.get("delta_ndcg@10")
            delta = "—" if not d else f"{d['diff']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"
            md.append(f"| {r['method']} | " + " | ".join(f"{r[c]:.4f}" for c in COLS)
                      + f" | {delta} | {r['wall_s']:.0f} | {r['note']} |")
        return "\n".join(md) + "\n"

    def plot(self, path: Path, xlabel: str = "training minutes (2 CPU cores)") -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
        for method, curve in self.curves.items():
            ax.plot([c["minutes"] for c in curve], [c["valid_ndcg@10"] for c in curve],
                    marker="o", markersize=3, label=method)
        for r in self.rows:
            if r["method"] in ("Last-item transitions", "Popularity"):
                ax.axhline(r["ndcg@10"], linestyle=":", color="grey")
                ax.annotate(f"{r['method']} (test)", (0, r["ndcg@10"]), fontsize=7, color="grey")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("valid NDCG@10")
        ax.set_title("Validation NDCG@10 during training")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
