"""The HTML report: one self-contained file (plots embedded as PNG data, no script, no
network), readable in any browser and attachable to an e-mail or a ticket.

    .venv/bin/python -m r2ec_batch.jobs.report --warehouse warehouse --html report.html

Plots are drawn by matplotlib (Agg, no display); the page is a Jinja2 template. Sections:
model accuracy over time with 95% intervals and the latest quality table; the health of the
published lists (coverage, popularity bias, novelty, diversity, fallback rate, scores,
rationale length and quality); input health (daily interactions, users scored, quarantined
rows by reason); three example users with history, list and rationale. The page itself is
`r2ec_batch/templates/report.html.j2`.
"""

from __future__ import annotations

import base64
import io
from datetime import datetime, timezone

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display on a scheduler node
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from jinja2 import Environment, PackageLoader, select_autoescape  # noqa: E402

from r2ec_batch import report_data as rd  # noqa: E402

plt.rcParams.update({"figure.dpi": 100, "font.size": 9, "axes.spines.top": False,
                     "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3})


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _pad_time_axis(ax, times: pd.Series) -> None:
    """A single time (or a few within hours) would make matplotlib pick a range of years."""
    t = pd.to_datetime(times)
    if len(t) and t.max() - t.min() < pd.Timedelta(days=1):
        ax.set_xlim(t.min() - pd.Timedelta(hours=12), t.max() + pd.Timedelta(hours=12))


def fig_accuracy(acc: pd.DataFrame, k: int = 10) -> str | None:
    """NDCG@k and Hit@k of each model (and mode) at each evaluation, with 95% intervals."""
    if acc.empty:
        return None
    splits = [s for s in ("test", "valid", "train") if s in set(acc["split"])]
    fig, axes = plt.subplots(len(splits), 2, figsize=(11, 3.2 * len(splits)), squeeze=False)
    for row, split in zip(axes, splits, strict=True):
        for ax, metric in zip(row, ("ndcg", "hit"), strict=True):
            d = acc[(acc["split"] == split) & (acc["metric"] == metric)]
            for (model, mode), g in d.groupby(["model_version", "mode"]):
                ax.errorbar(g["evaluated_at"], g["value"], yerr=g["ci95"], marker="o",
                            capsize=3, label=f"{model} ({mode.replace('_', ' ')})")
            ax.set_title(f"{metric.upper() if metric == 'ndcg' else 'Hit'}@{k}, {split} split")
            ax.set_ylim(bottom=0)
            _pad_time_axis(ax, d["evaluated_at"])
            ax.tick_params(axis="x", labelrotation=20)
        row[0].legend(fontsize=7, loc="lower left")
    return _png(fig)


def fig_run_health(health: pd.DataFrame) -> str | None:
    """Beyond-accuracy metrics, fallback rate and users of each published run."""
    if health.empty:
        return None
    panels = (("coverage", "catalogue coverage"), ("popularity_bias", "popularity bias (> 0: "
              "more popular than histories)"), ("novelty", "novelty (bits)"),
              ("diversity", "intra-list diversity (genres)"), ("fallback_rate", "fallback rate"),
              ("users", "users scored"))
    fig, axes = plt.subplots(2, 3, figsize=(11, 5.4))
    for ax, (col, title) in zip(axes.flat, panels, strict=True):
        for variant, g in health.groupby("variant"):
            # run dates as labels: one point per run, evenly spaced, whatever the gaps
            ax.plot(g["run_date"].astype(str), g[col], marker="o", label=variant)
        ax.set_title(title)
        ax.tick_params(axis="x", labelrotation=20)
    axes.flat[0].legend(fontsize=7)
    return _png(fig)


def fig_costs(costs: pd.DataFrame) -> str | None:
    """Cost of each published run per 1,000 users scored, and reasoning tokens per user."""
    if costs.empty:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for variant, g in costs.groupby("variant"):
        dates = g["run_date"].astype(str)
        axes[0].plot(dates, g["wall_per_1k"], marker="o", label=variant)
        axes[1].plot(dates, g["reasoning_per_1k"], marker="o", label=f"{variant}: reasoning")
        axes[1].plot(dates, g["search_per_1k"], marker="s", label=f"{variant}: h_T + search")
        axes[2].plot(dates, g["tokens_per_user"], marker="o", label=f"{variant}: mean")
        axes[2].plot(dates, g["p95"], marker="^", linestyle=":", label=f"{variant}: p95")
    titles = ("job seconds per 1,000 users", "task seconds per 1,000 users",
              "reasoning tokens per user")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_title(title)
        ax.set_ylim(bottom=0)
        ax.tick_params(axis="x", labelrotation=20)
        ax.legend(fontsize=7)
    return _png(fig)


def fig_lists(ctx: dict) -> str | None:
    """Popularity percentile of recommended vs history items; distribution of scores."""
    rec, his = rd.popularity_of_lists(ctx)
    if not len(rec):
        return None
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.2))
    bins = np.linspace(0, 1, 21)
    a.hist(his, bins=bins, density=True, alpha=0.55, label=f"users' history items (mean {his.mean():.2f})")
    a.hist(rec, bins=bins, density=True, alpha=0.55, label=f"recommended items (mean {rec.mean():.2f})")
    a.set_title("popularity percentile (1 = most interacted-with)")
    a.legend(fontsize=7, loc="upper left")
    recs = ctx["recs"]
    b.hist(recs["score"], bins=40, alpha=0.6, label="all ranks")
    b.hist(recs[recs["rank"] == 1]["score"], bins=40, alpha=0.6, label="rank 1")
    b.set_title("scores (cosine / tau)")
    b.legend(fontsize=7)
    return _png(fig)


def fig_rationales(ctx: dict, quality: dict[str, float]) -> str | None:
    """Rationale length in tokens, and the quality figures of the run's rationales."""
    rat = ctx["rationales"]
    if rat.empty or not (rat["tokens"] > 0).any():
        return None
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.2))
    lo, hi = int(rat["tokens"].min()), int(rat["tokens"].max())
    a.hist(rat["tokens"], bins=np.arange(lo, hi + 2) - 0.5 if hi - lo < 40 else 40)
    a.set_title(f"rationale length (tokens), mean {rat['tokens'].mean():.1f}")
    if quality:
        names = list(quality)
        b.barh(names, [quality[n] for n in names])
        b.set_xlim(0, 1)
        for y, n in enumerate(names):
            b.text(min(quality[n], 0.85) + 0.01, y, f"{quality[n]:.2f}", va="center", fontsize=8)
    b.set_title("rationale quality (share, 0..1)")
    return _png(fig)


def fig_inputs(daily: pd.Series, quarantine: pd.DataFrame) -> str | None:
    """Interactions per day, and quarantined rows per ingest date by reason."""
    if daily.empty:
        return None
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.2))
    a.plot(daily.index, daily.to_numpy(), lw=0.8)
    a.set_title(f"interactions per day (event time), {int(daily.sum()):,} in all")
    a.tick_params(axis="x", labelrotation=20)
    if quarantine.empty:
        b.text(0.5, 0.5, "no row quarantined", ha="center", va="center", transform=b.transAxes)
    else:
        x = np.arange(len(quarantine))
        bottom = np.zeros(len(quarantine))
        for reason in quarantine.columns:
            b.bar(x, quarantine[reason], bottom=bottom, label=reason[:60])
            bottom += quarantine[reason].to_numpy()
        b.set_xticks(x, [str(d) for d in quarantine.index], rotation=20)
        b.legend(fontsize=7)
    b.set_title("quarantined rows per ingest date, by reason")
    return _png(fig)


def examples(ctx: dict, n: int = 3, history_lines: int = 8) -> list[dict]:
    """The first `n` users of the run (by id) with a rationale: history, list and rationale."""
    titles = ctx["items"].set_index("item_id")["title"]
    rat = ctx["rationales"].set_index("user_id")
    hist = ctx["hist"].set_index("user_id")
    out = []
    for user in sorted(ctx["lists"].index, key=lambda u: (len(str(u)), str(u)))[:n]:
        h = hist.loc[user] if user in hist.index else None
        recs = ctx["recs"][ctx["recs"]["user_id"] == user]
        out.append({
            "user": user,
            "history": [] if h is None else [
                (str(ts)[:10], t, r) for t, r, ts in list(zip(
                    h["history_titles"], h["history_ratings"], h["history_ts"], strict=True))
                [-history_lines:]],
            "recs": [(int(r["rank"]), titles.get(r["item_id"], r["item_id"]), float(r["score"]))
                     for _, r in recs.iterrows()],
            "rationale": str(rat.loc[user, "text"]) if user in rat.index else "",
            "fallback": rat.loc[user, "fallback"] if user in rat.index else None,
        })
    return out




def _figure(src: str | None, caption: str) -> str:
    from markupsafe import Markup, escape

    if src is None:
        return Markup(f'<p class="empty">Not enough data yet for: {escape(caption)}</p>')
    return Markup(f'<figure><img src="{src}" alt="{escape(caption)}">'
                  f"<figcaption>{escape(caption)}</figcaption></figure>")


def render(location: str, variant: str = "champion", run_date=None) -> tuple[str, dict]:
    """The report's HTML for the warehouse at `location`, and a summary of what it shows
    (figure names that were drawn, the run, the KPIs)."""
    from markupsafe import Markup

    wh = rd.Warehouse(location)
    live = wh.live_runs()
    runs = live[live["variant"] == variant] if not live.empty else live
    if run_date is not None and not runs.empty:
        runs = runs[pd.to_datetime(runs["run_date"]).dt.date <= pd.Timestamp(run_date).date()]
    run = runs.iloc[-1] if len(runs) else None
    acc = rd.accuracy_history(wh)
    figs = {"accuracy": fig_accuracy(acc), "health": None, "costs": None, "lists": None,
            "rationales": None,
            "inputs": fig_inputs(rd.daily_interactions(wh), rd.quarantine_by_reason(wh))}
    kpis, users = [], []
    if run is not None:
        ctx = rd.run_context(wh, run)
        health = rd.run_health(wh, runs, known={run["run_id"]: ctx})
        quality = rd.rationale_quality(ctx, int(run["top_k"]))
        costs = rd.run_costs(wh, runs)
        figs.update(health=fig_run_health(health), costs=fig_costs(costs), lists=fig_lists(ctx),
                    rationales=fig_rationales(ctx, quality))
        last = health.iloc[-1]
        kpis = [("users scored", f"{int(run['users']):,}"), ("items per user", int(run["top_k"])),
                (f"coverage@{int(run['top_k'])}", f"{last['coverage']:.1%}"),
                ("popularity bias", f"{last['popularity_bias']:+.3f}"),
                ("fallback rate", f"{last['fallback_rate']:.1%}")]
        mine = costs[costs["run_id"] == run["run_id"]] if not costs.empty else costs
        if len(mine):
            kpis.append(("seconds per 1,000 users", f"{mine['wall_per_1k'].iloc[0]:,.1f} "
                                                    f"({mine['devices'].iloc[0]})"))
        if pd.notna(run.get("error_users")):
            kpis.append(("users scored with an error", f"{int(run['error_users']):,}"))
        users = examples(ctx)
    test = acc[(acc["split"] == "test") & (acc["metric"] == "ndcg")] if not acc.empty else acc
    if run is not None and not test.empty:
        mine = test[test["model_version"] == run["model_version"]]
        if len(mine):
            kpis.append(("test NDCG@10 of this model", f"{mine['value'].iloc[-1]:.4f}"))
    q = rd.latest_quality(wh)
    quality_html = Markup(q.to_html(index=False, float_format=lambda v: f"{v:.4f}",
                                    border=0, na_rep="")) if not q.empty else ""
    env = Environment(loader=PackageLoader("r2ec_batch", "templates"),
                      autoescape=select_autoescape(default=True))
    html = env.get_template("report.html.j2").render(
        title=f"{run['run_date']} ({variant})" if run is not None else "no published run",
        warehouse=location, generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
        run=None if run is None else {**run.to_dict(), "published_at": pd.Timestamp(
            run["published_at"]).strftime("%Y-%m-%d %H:%M UTC")},
        kpis=kpis, figs=figs, figure=_figure, quality=quality_html, users=users,
        intervals="Hit: binomial; NDCG: per-sample where the rankings are stored, else the "
                  "bound sqrt(m(1-m)/n)")
    return html, {"figures": [k for k, v in figs.items() if v], "run": run, "kpis": kpis}
