"""The run report: one HTML page per run with PNG plots, written beside the tables, and a text summary.

`<lakehouse.root>/reports/<run_date>/index.html` shows the headline metrics of each order of the run
(retrieval, model, fair), the relevance-versus-fairness curve over the lambda sweep, the exposure of the
providers before and after the fairness pass, per-group quality, and the trend of the headline metrics
over every run in the `metrics` table. Everything is drawn from `metrics` rows alone, so a report can
be rebuilt for any past run. Plots are matplotlib figures (Agg backend: no display needed).
"""

from __future__ import annotations

import datetime as dt
import html
import re
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from llmrank_spark.config import Config
from llmrank_spark.evaluation.orders import FAIR, MODEL, RETRIEVAL

SWEEP = re.compile(r"^fairness\[lambda=([0-9.]+)\]$")
ORDER_NAMES = {RETRIEVAL: "retrieval order", MODEL: "model order", FAIR: "fair order"}
HEADLINE = ["ndcg", "recall", "map", "mrr", "provider_gini", "coverage", "ild_category", "ild_embedding"]
TOP_PROVIDERS = 15
DPI = 110


@dataclass(frozen=True)
class Report:
    index: Path
    plots: list[Path]
    summary: list[str]  # the short text printed at the end of the nightly job


def value(metrics: pd.DataFrame, step: str, metric: str, slice_: str = "all") -> float:
    """One measurement of the run, NaN when it was not measured."""
    hit = metrics[(metrics.step == step) & (metrics.metric == metric) & (metrics.slice == slice_)]
    return float(hit["value"].iloc[0]) if len(hit) else float("nan")


SWEEP_COLUMNS = ["lam", "ndcg", "ndcg_change", "ndcg_change_low", "ndcg_change_high", "gini", "long_tail"]
TARGET_SWEEP = re.compile(r"^fairness\[gini_cut=([0-9.]+)\]$")
TARGET_COLUMNS = ["gini_cut", "strength", *SWEEP_COLUMNS[1:]]


def _swept(metrics: pd.DataFrame, k: int, pattern: re.Pattern[str], key: str) -> list[dict[str, float]]:
    """Per swept step of the run (its value from `pattern` as `key`): NDCG@k, its change against the
    model order with the 95% interval (`evaluate`), provider Gini@k and long-tail exposure@k."""
    rows = []
    for step in metrics.step.unique():
        found = pattern.match(step)
        if found:
            change = {
                f"ndcg_change{end}": value(metrics, step, f"ndcg@{k}_change{end}")
                for end in ("", "_low", "_high")
            }
            rows.append(
                {
                    key: float(found.group(1)),
                    "strength": value(metrics, step, "fairness_strength"),
                    "ndcg": value(metrics, step, f"ndcg@{k}"),
                    **change,
                    "gini": value(metrics, step, f"provider_gini@{k}"),
                    "long_tail": value(metrics, step, f"exposure@{k}", "provider_group=long_tail"),
                }
            )
    return rows


def sweep_points(metrics: pd.DataFrame, k: int) -> pd.DataFrame:
    """Per sweep weight of the run (control weight), by lambda (see `_swept`)."""
    return pd.DataFrame(_swept(metrics, k, SWEEP, "lam"), columns=SWEEP_COLUMNS).sort_values("lam")


def target_points(metrics: pd.DataFrame, k: int) -> pd.DataFrame:
    """Per swept Gini cut of the run (control target), with the strength calibrated for it (`_swept`)."""
    rows = _swept(metrics, k, TARGET_SWEEP, "gini_cut")
    return pd.DataFrame(rows, columns=TARGET_COLUMNS).sort_values("gini_cut")


def plot_target_cost(points: pd.DataFrame, model_gini: float, k: int, path: Path) -> Path:
    """The relevance cost of each target: NDCG@k change against the Gini cut reached, with 95% intervals;
    without labels, the strength each cut took."""
    figure, axis = plt.subplots(figsize=(7, 4.5))
    reached = (1 - points["gini"] / model_gini) * 100
    if points["ndcg_change"].notna().any():
        change = points[["ndcg_change_low", "ndcg_change", "ndcg_change_high"]].to_numpy() * 100
        axis.errorbar(
            reached,
            change[:, 1],
            yerr=[change[:, 1] - change[:, 0], change[:, 2] - change[:, 1]],
            marker="o",
            capsize=3,
            label="NDCG change, 95% interval",
        )
        axis.axhline(0, color="black", linewidth=0.8)
        axis.set_ylabel(f"NDCG@{k} change against the model order (%)")
        axis.set_title(f"Relevance cost of the fairness target (top {k})")
        heights = change[:, 1]
    else:
        axis.plot(reached, points["strength"], marker="o", label="calibrated strength")
        axis.set_ylabel("strength (0 = the model order)")
        axis.set_title(f"Strength each fairness target took (top {k}); no labels for this run, so no NDCG")
        heights = points["strength"].to_numpy()
    for x, y, point in zip(reached, heights, points.itertuples(), strict=True):
        axis.annotate(
            f"cut {point.gini_cut:.0%}", (x, y), xytext=(4, 6), textcoords="offset points", fontsize=8
        )
    axis.set_xlabel(f"provider Gini@{k} cut reached (%)")
    axis.legend()
    axis.grid(alpha=0.3)
    return _save(figure, path)


def _steps(metrics: pd.DataFrame) -> list[str]:
    return [s for s in (RETRIEVAL, MODEL, FAIR) if s in set(metrics.step)]


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    return path


def plot_sweep(
    points: pd.DataFrame, chosen: float, k: int, path: Path, baseline: tuple[float, float] | None = None
) -> Path:
    """NDCG@k against provider Gini@k, one point per lambda, and the model order's (gini, ndcg) point;
    without labels, Gini and long-tail share against lambda."""
    figure, axis = plt.subplots(figsize=(7, 4.5))
    if points["ndcg"].notna().any():
        axis.plot(points["gini"], points["ndcg"], marker="o", color="tab:blue")
        for number, point in enumerate(points.itertuples()):
            # Labels alternate above and below the curve, so neighbouring weights stay legible.
            axis.annotate(
                f"λ={point.lam:.2f}",
                (point.gini, point.ndcg),
                xytext=(4, 7 if number % 2 == 0 else -14),
                textcoords="offset points",
                fontsize=8,
            )
        if baseline is not None:
            axis.scatter(*baseline, marker="*", s=220, color="black", label="model order (no pass)", zorder=4)
            # The change's interval is relative to the model order's NDCG: drawn in NDCG units at each point.
            spread = points[["ndcg_change_low", "ndcg_change", "ndcg_change_high"]].to_numpy() * baseline[1]
            if not np.isnan(spread).all():
                axis.errorbar(
                    points["gini"],
                    points["ndcg"],
                    yerr=[spread[:, 1] - spread[:, 0], spread[:, 2] - spread[:, 1]],
                    fmt="none",
                    ecolor="tab:blue",
                    alpha=0.45,
                    capsize=3,
                    label="95% interval of the NDCG change",
                )
        picked = points[np.isclose(points["lam"], chosen)]
        axis.scatter(
            picked["gini"],
            picked["ndcg"],
            s=180,
            facecolors="none",
            edgecolors="red",
            linewidths=2,
            label=f"configured λ = {chosen:.2f}",
            zorder=3,
        )
        axis.set_xlabel(f"provider exposure Gini@{k}  (fairer to the right)")
        axis.set_ylabel(f"NDCG@{k}")
        axis.invert_xaxis()
        axis.set_title(f"Relevance versus provider fairness over λ (top {k})")
    else:
        axis.plot(points["lam"], points["gini"], marker="o", label=f"provider Gini@{k}")
        axis.plot(points["lam"], points["long_tail"], marker="s", label=f"long-tail provider exposure@{k}")
        axis.axvline(chosen, color="red", linestyle="--", label=f"configured λ = {chosen:.2f}")
        axis.set_xlabel("λ  (0 = the model order; its meaning follows fairness.strategy)")
        axis.set_title(f"Provider fairness over λ (top {k}); no labels for this run, so no NDCG")
    axis.legend()
    axis.grid(alpha=0.3)
    return _save(figure, path)


def provider_exposure(metrics: pd.DataFrame, step: str, k: int) -> pd.Series:
    """provider -> share of position-discounted exposure@k in one order of the run."""
    providers = metrics.slice.str.startswith("provider=")
    rows = metrics[(metrics.step == step) & (metrics.metric == f"exposure@{k}") & providers]
    return pd.Series(rows["value"].to_numpy(), index=rows.slice.str.removeprefix("provider=").to_numpy())


def plot_exposure(before: pd.Series, after: pd.Series, labels: tuple[str, str], k: int, path: Path) -> Path:
    """Left: the most exposed providers' shares before and after. Right: Lorenz curves of all providers."""
    figure, (bars, lorenz) = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [3, 2]})
    top = before.sort_values(ascending=False).index[:TOP_PROVIDERS]
    positions = np.arange(len(top))
    bars.barh(positions - 0.2, before.reindex(top).to_numpy(), height=0.4, label=labels[0], color="tab:gray")
    bars.barh(
        positions + 0.2,
        after.reindex(top, fill_value=0).to_numpy(),
        height=0.4,
        label=labels[1],
        color="tab:green",
    )
    bars.set_yticks(positions, [str(p)[:28] for p in top])
    bars.invert_yaxis()
    bars.set_xlabel(f"share of position-discounted exposure@{k}")
    bars.set_title(f"The {len(top)} most exposed providers ({labels[0]}) of {len(before)}")
    bars.legend(loc="lower right")
    for shares, label, colour in ((before, labels[0], "tab:gray"), (after, labels[1], "tab:green")):
        cumulative = np.concatenate([[0.0], np.cumsum(np.sort(shares.to_numpy()))])
        x = np.linspace(0, 1, len(cumulative))
        lorenz.plot(x, cumulative, label=f"{label} (Gini {_gini_of(shares):.2f})", color=colour)
    lorenz.plot([0, 1], [0, 1], color="black", linestyle=":", label="equal exposure")
    lorenz.set_xlabel("share of providers, least exposed first")
    lorenz.set_ylabel("share of exposure")
    lorenz.set_title("Lorenz curve of provider exposure")
    lorenz.legend(loc="upper left")
    for axis in (bars, lorenz):
        axis.grid(alpha=0.3)
    return _save(figure, path)


def _gini_of(shares: pd.Series) -> float:
    from llmrank_spark.metrics import gini

    return gini(shares.to_numpy())


def report_history(metrics: DataFrame, run_date: dt.date, trend_days: int) -> pd.DataFrame:
    """What the report reads of the `metrics` table: every row of run_date, and the overall ('all') rows
    of the runs in the `trend_days` before it for the trend chart; filtered in Spark."""
    first = run_date - dt.timedelta(days=trend_days)
    dates = F.col("run_date")
    wanted = (dates == F.lit(run_date)) | (
        (F.col("slice") == "all") & (dates >= F.lit(first)) & (dates < F.lit(run_date))
    )
    return metrics.where(wanted).toPandas()


def plot_trends(history: pd.DataFrame, step: str, k: int, path: Path) -> Path:
    """Headline metrics of one order across the runs of `history`, by run date."""
    wanted = [f"{m}@{k}" for m in ("ndcg", "recall", "provider_gini", "coverage", "ild_category")]
    rows = history[(history.step == step) & (history.slice == "all") & history.metric.isin(wanted)]
    table = rows.pivot_table(index="run_date", columns="metric", values="value").sort_index()
    shown = [m for m in wanted if m in table.columns]
    figure, axes = plt.subplots(1, len(shown), figsize=(3.4 * len(shown), 3.8), squeeze=False)
    dates = [str(d) for d in table.index]  # one tick per run, however far apart the runs are
    for axis, metric in zip(axes[0], shown, strict=True):
        axis.plot(dates, table[metric].to_numpy(), marker="o")
        axis.set_title(metric, fontsize=12)
        axis.grid(alpha=0.3)
        axis.tick_params(axis="x", labelrotation=45, labelsize=9)
    figure.suptitle(f"Trends across runs ({ORDER_NAMES.get(step, step)})", fontsize=13)
    return _save(figure, path)


def headline_table(metrics: pd.DataFrame, k: int) -> pd.DataFrame:
    """metric x order: the run's headline measurements at k (quality, fairness, coverage, diversity)."""
    steps = _steps(metrics)
    rows = {}
    for name in HEADLINE:
        metric = f"{name}@{k}"
        rows[metric] = [value(metrics, s, metric) for s in steps]
    rows[f"long-tail provider exposure@{k}"] = [
        value(metrics, s, f"exposure@{k}", "provider_group=long_tail") for s in steps
    ]
    for bucket in ("head", "tail"):
        rows[f"{bucket} item exposure@{k}"] = [
            value(metrics, s, f"exposure@{k}", f"popularity={bucket}") for s in steps
        ]
    rows[f"evaluated requests@{k}"] = [value(metrics, s, f"evaluated_requests@{k}") for s in steps]
    table = pd.DataFrame(rows, index=[ORDER_NAMES[s] for s in steps]).T
    return table.dropna(how="all")


def group_table(metrics: pd.DataFrame, step: str, k: int) -> pd.DataFrame:
    """NDCG@k per user group (and the gap per attribute) in one order."""
    rows = metrics[(metrics.step == step) & (metrics.metric == f"ndcg@{k}") & (metrics.slice != "all")]
    gaps = metrics[(metrics.step == step) & (metrics.metric == f"ndcg@{k}_gap")]
    table = pd.concat(
        [rows[["slice", "value"]], gaps.assign(slice="gap (max - min) by " + gaps.slice)[["slice", "value"]]]
    )
    return table.rename(columns={"slice": "group", "value": f"ndcg@{k}"}).set_index("group")


def _fairness_setting(metrics: pd.DataFrame, config: Config) -> str:
    """How the run's fairness pass was set: its weight, or its target, whether the run met it and at
    which strength (the `target_met` and `fairness_strength` rows)."""
    fairness = config.fairness
    if fairness.mode == "off" or fairness.control == "weight":
        return f"fairness {fairness.mode}, λ = {fairness.weight}"
    fair = metrics[metrics.step == FAIR]
    missed = fair[(fair.metric == "target_met") & (fair.value < 1)]["slice"].tolist()
    strength = fair.loc[fair.metric == "fairness_strength", "value"]
    at = f"strength {strength.iloc[0]:.3f}" if len(strength) else "lists in model order"
    verdict = "target met" if not missed else f"target NOT met on {', '.join(missed)}"
    return f"fairness {fairness.mode}, {fairness.strategy}: {verdict}, {at}"


USER_REQUESTS, QUERY_REQUESTS = "request_type=user", "request_type=query"


def summary_lines(metrics: pd.DataFrame, config: Config, k: int) -> list[str]:
    """A few lines for the end of the nightly job: what the reranker and the fairness pass changed.

    A run with both request types gets its NDCG line for user requests and one for search queries."""
    final = FAIR if FAIR in set(metrics.step) else MODEL
    both = QUERY_REQUESTS in set(metrics.slice)
    users = USER_REQUESTS if both else "all"
    lines = []
    ndcg = [value(metrics, s, f"ndcg@{k}", users) for s in _steps(metrics)]
    lift = [value(metrics, final, f"ndcg@{k}_lift{end}", users) for end in ("", "_low", "_high")]
    if not np.isnan(lift[0]):
        served_by = metrics.loc[metrics.step == final, "model_version"].dropna()
        version = served_by.iloc[0] if len(served_by) else "unknown"
        lines.append(
            f"NDCG@{k}: retrieval {value(metrics, RETRIEVAL, f'ndcg@{k}', users):.4f} -> served "
            f"{value(metrics, final, f'ndcg@{k}', users):.4f} ({lift[0]:+.1%} [{lift[1]:+.1%}, "
            f"{lift[2]:+.1%}], model {version})"
        )
    elif not np.isnan(ndcg).all():
        parts = [f"{ORDER_NAMES[s]} {v:.4f}" for s, v in zip(_steps(metrics), ndcg, strict=True)]
        lines.append(f"NDCG@{k}: " + ", ".join(parts))
    else:
        lines.append(f"NDCG@{k}: no labels for run {config.run.run_date} yet (label window not passed)")
    if both:
        lines.append(
            f"query NDCG@{k}: retrieval {value(metrics, RETRIEVAL, f'ndcg@{k}', QUERY_REQUESTS):.4f} -> "
            f"served {value(metrics, final, f'ndcg@{k}', QUERY_REQUESTS):.4f}"
        )
    gini = (value(metrics, MODEL, f"provider_gini@{k}"), value(metrics, final, f"provider_gini@{k}"))
    tail = [value(metrics, s, f"exposure@{k}", "provider_group=long_tail") for s in (MODEL, final)]
    lines.append(
        f"provider Gini@{k}: {gini[0]:.3f} -> {gini[1]:.3f}; long-tail provider exposure "
        f"{tail[0]:.1%} -> {tail[1]:.1%} ({_fairness_setting(metrics, config)})"
    )
    lines.append(
        f"coverage@{k}: {value(metrics, final, f'coverage@{k}'):.1%} of the catalogue; "
        f"category diversity@{k}: {value(metrics, final, f'ild_category@{k}'):.3f}"
    )
    return lines


def _html_table(table: pd.DataFrame) -> str:
    return table.to_html(float_format=lambda v: f"{v:.4f}", na_rep="–", border=0, classes="metrics")


def write_report(history: pd.DataFrame, config: Config) -> Report:
    """The report of config.run.run_date from the `metrics` table (`history`: `report_history`'s rows)."""
    run_date = config.run.run_date
    history = history.assign(run_date=pd.to_datetime(history["run_date"]).dt.date)
    metrics = history[history.run_date == run_date]
    if metrics.empty:
        raise ValueError(f"table 'metrics' has no rows for run_date {run_date}; run `llmrank evaluate` first")
    k = min(config.evaluate.ks)
    directory = Path(config.lakehouse.root) / "reports" / run_date.isoformat()
    directory.mkdir(parents=True, exist_ok=True)
    final = FAIR if FAIR in set(metrics.step) else MODEL
    sections, plots = [], []
    points = sweep_points(metrics, k)
    if len(points):
        baseline = (value(metrics, MODEL, f"provider_gini@{k}"), value(metrics, MODEL, f"ndcg@{k}"))
        curve = plot_sweep(points, config.fairness.weight, k, directory / "lambda_curve.png", baseline)
        plots.append(curve)
        sections.append(("Relevance versus fairness over λ", plots[-1], _html_table(points.set_index("lam"))))
    targets = target_points(metrics, k)
    if len(targets):
        model_gini = value(metrics, MODEL, f"provider_gini@{k}")
        plots.append(plot_target_cost(targets, model_gini, k, directory / "target_cost.png"))
        sections.append(
            ("Relevance cost of the fairness target", plots[-1], _html_table(targets.set_index("gini_cut")))
        )
    before, after = provider_exposure(metrics, MODEL, k), provider_exposure(metrics, final, k)
    if len(before):
        labels = (ORDER_NAMES[MODEL], ORDER_NAMES[final])
        plots.append(plot_exposure(before, after, labels, k, directory / "provider_exposure.png"))
        sections.append((f"Exposure by provider, {labels[0]} and {labels[1]}", plots[-1], ""))
    plots.append(plot_trends(history, final, k, directory / "trends.png"))
    sections.append(("Metric trends across runs", plots[-1], ""))
    groups = group_table(metrics, final, k)
    summary = summary_lines(metrics, config, k)
    body = [
        f"<h1>llmrank run {run_date}</h1>",
        "<p>" + "<br>".join(html.escape(line) for line in summary) + "</p>",
        f"<h2>Headline metrics (top {k})</h2>",
        _html_table(headline_table(metrics, k)),
    ]
    for title, plot, extra in sections:
        title = html.escape(title)
        body += [f"<h2>{title}</h2>", f'<img src="{plot.name}" alt="{title}">', extra]
    if len(groups):
        body += [f"<h2>Quality by user group ({ORDER_NAMES[final]})</h2>", _html_table(groups)]
    versions = ", ".join(sorted(metrics.model_version.dropna().unique())) or "-"
    body.append(
        f"<p class='meta'>model version: {html.escape(versions)}; metrics table: "
        f"{html.escape(config.table_path('metrics'))}</p>"
    )
    index = directory / "index.html"
    index.write_text(PAGE.format(title=f"llmrank run {run_date}", body="\n".join(body)), encoding="utf-8")
    return Report(index, plots, summary)


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }}
h1 {{ font-size: 1.6em; }} h2 {{ font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }}
img {{ max-width: 100%; }}
table.metrics {{ border-collapse: collapse; font-size: 0.95em; }}
table.metrics td, table.metrics th {{ padding: 3px 10px; text-align: right; border-bottom: 1px solid #eee; }}
.meta {{ color: #666; font-size: 0.85em; }}
</style></head>
<body>
{body}
</body></html>
"""
