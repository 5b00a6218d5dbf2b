"""T0-style zero-shot report: per dataset, the median accuracy over prompts and its interquartile range.

Input: the per-task metrics an evaluation wrote (`ext5 eval` -> <output_dir>/metrics_step<N>.json, a flat
{"<task>/accuracy": value}), one `_score_eval` task per prompt. Output, in OUT_DIR:

  t0_report.csv           one row per (cluster, dataset): prompts, median, q1, q3, iqr, min, max
  t0_report.md            the same as a markdown table, grouped by task cluster
  boxplots/<dataset>.png  the accuracies of the dataset's prompts as a box plot (as the T0 paper's figures)
  t0_boxplots.png         all datasets side by side, grouped by cluster

  ext5 report RESULTS [--out OUT_DIR] [--step N] [--metric accuracy]     (ext5.commands.report)

RESULTS is an eval output directory (the latest metrics_step<N>.json in it, or --step) or one JSON file.
Tasks are grouped with the T0 catalog (ext5.tasks.t0): ANLI rounds are separate datasets (anli_r1..r3).
"""
from __future__ import annotations

import csv
import dataclasses
import glob
import json
import os
import re
from typing import Mapping, Sequence

import numpy as np

from ext5.errors import UsageError

SCORE_SUFFIX = "_score_eval"


@dataclasses.dataclass(frozen=True)
class DatasetSummary:
    """Accuracies of one dataset's prompts, summarised as the T0 paper does."""
    cluster: str
    dataset: str
    accuracies: tuple[float, ...]

    @property
    def median(self) -> float:
        return float(np.median(self.accuracies))

    @property
    def q1(self) -> float:
        return float(np.percentile(self.accuracies, 25))

    @property
    def q3(self) -> float:
        return float(np.percentile(self.accuracies, 75))

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1


def t0_groups() -> dict[str, tuple[str, str]]:
    """`<task>_score_eval` -> (cluster, dataset label) for every prompt of `t0_eval_score_eval` (held-out
    datasets, original-task templates), in the evaluation catalog's order."""
    from ext5.tasks.t0 import catalog

    order = {d.key: i for i, d in enumerate(catalog.eval_datasets())}
    tasks = sorted((t for t in catalog.prompt_tasks()
                    if t.dataset.key in order and t.original_task and t.score_eval_name),
                   key=lambda t: (order[t.dataset.key], t.round or ""))
    return {t.score_eval_name: (t.dataset.eval_cluster,
                                t.dataset.label + (f"_{t.round}" if t.round else ""))
            for t in tasks}


def summarize(scores: Mapping[str, float], groups: Mapping[str, tuple[str, str]],
              metric: str = "accuracy") -> list[DatasetSummary]:
    """Group `{"<task>/<metric>": value}` by dataset; clusters and datasets in `groups` order."""
    per: dict[tuple[str, str], list[float]] = {}
    for task, key in groups.items():
        v = scores.get(f"{task}/{metric}")
        if v is not None and np.isfinite(v):
            per.setdefault(key, []).append(float(v))
    clusters = list(dict.fromkeys(c for c, _ in groups.values()))
    return [DatasetSummary(c, d, tuple(v)) for c in clusters for (cc, d), v in per.items() if cc == c]


def load_scores(results: str, step: int | None = None) -> tuple[dict[str, float], int | None]:
    """Flat metrics from a JSON file, or from RESULTS/metrics_step<step>.json (latest step if None)."""
    if os.path.isdir(results):
        found = {int(m.group(1)): p for p in glob.glob(os.path.join(results, "metrics_step*.json"))
                 if (m := re.search(r"metrics_step(\d+)\.json$", p))}
        if not found:
            raise UsageError(f"{results} has no metrics_step<N>.json; run `ext5 eval` with "
                             f"EVAL_MIXTURE_OR_TASK_NAME='t0_eval_score_eval' first, or pass the JSON file")
        if step is not None and step not in found:
            raise UsageError(f"{results} has no metrics_step{step}.json; steps: {sorted(found)}")
        step = max(found) if step is None else step
        results = found[step]
    elif not os.path.isfile(results):
        raise UsageError(f"{results} does not exist; pass an eval output directory or a metrics JSON file")
    with open(results, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise UsageError(f"{results} is not a flat {{'task/metric': value}} JSON object")
    return {k: float(v) for k, v in data.items() if isinstance(v, (int, float))}, step


_COLUMNS = ("cluster", "dataset", "prompts", "median", "q1", "q3", "iqr", "min", "max")


def _row(s: DatasetSummary) -> dict[str, object]:
    return {"cluster": s.cluster, "dataset": s.dataset, "prompts": len(s.accuracies),
            "median": round(s.median, 2), "q1": round(s.q1, 2), "q3": round(s.q3, 2),
            "iqr": round(s.iqr, 2), "min": round(min(s.accuracies), 2),
            "max": round(max(s.accuracies), 2)}


def markdown_table(summaries: Sequence[DatasetSummary], title: str = "") -> str:
    """Median accuracy over prompts (IQR) per dataset, one section per task cluster."""
    lines = [f"# {title}", ""] if title else []
    for cluster in dict.fromkeys(s.cluster for s in summaries):
        lines += [f"## {cluster}", "", "| dataset | prompts | median | IQR (q1 - q3) | min | max |",
                  "|---|---:|---:|---:|---:|---:|"]
        for s in summaries:
            if s.cluster == cluster:
                lines.append(f"| {s.dataset} | {len(s.accuracies)} | {s.median:.2f} | {s.iqr:.2f} "
                             f"({s.q1:.2f} - {s.q3:.2f}) | {min(s.accuracies):.2f} | "
                             f"{max(s.accuracies):.2f} |")
        lines.append("")
    return "\n".join(lines)


def _safe(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name)


def plot(summaries: Sequence[DatasetSummary], out_dir: str) -> list[str]:
    """A box plot per dataset (prompts' accuracies as points over the box) and an overview figure."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    os.makedirs(os.path.join(out_dir, "boxplots"), exist_ok=True)
    for s in summaries:
        fig, ax = plt.subplots(figsize=(2.6, 3.2))
        _box(ax, [s.accuracies], [s.dataset])
        ax.set_title(f"{s.dataset}\n({s.cluster})", fontsize=9)
        fig.tight_layout()
        path = os.path.join(out_dir, "boxplots", f"{_safe(s.dataset)}.png")
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    if summaries:
        fig, ax = plt.subplots(figsize=(1.1 * len(summaries) + 2, 4))
        _box(ax, [s.accuracies for s in summaries], [s.dataset for s in summaries])
        clusters = [s.cluster for s in summaries]
        for i in range(1, len(clusters)):  # cluster separators, labelled underneath
            if clusters[i] != clusters[i - 1]:
                ax.axvline(i + 0.5, color="0.7", lw=0.8)
        for c in dict.fromkeys(clusters):
            idx = [i + 1 for i, x in enumerate(clusters) if x == c]
            ax.text(np.mean(idx), 1.02, c, transform=ax.get_xaxis_transform(), ha="center",
                    va="bottom", fontsize=8, color="0.3")
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        plt.setp(ax.get_xticklabels(), ha="right")
        fig.tight_layout()
        path = os.path.join(out_dir, "t0_boxplots.png")
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


def _box(ax, data: list, labels: list[str]) -> None:
    ax.boxplot(data, widths=0.5, showfliers=False)
    for i, vals in enumerate(data, start=1):
        x = np.full(len(vals), i) + np.linspace(-0.12, 0.12, len(vals)) if len(vals) > 1 else [i]
        ax.scatter(x, vals, s=10, color="tab:blue", alpha=0.7, zorder=3)
    ax.set_xticks(range(1, len(labels) + 1), labels)
    ax.set_ylabel("accuracy (%)")
    ax.grid(axis="y", alpha=0.3)


def write_report(scores: Mapping[str, float], out_dir: str,
                 groups: Mapping[str, tuple[str, str]] | None = None, metric: str = "accuracy",
                 title: str = "T0 zero-shot evaluation: median accuracy over prompts") -> dict[str, str]:
    """Writes the CSV, markdown table and plots; returns their paths ({"csv", "markdown", "plots"})."""
    summaries = summarize(scores, groups if groups is not None else t0_groups(), metric)
    if not summaries:
        raise UsageError(f"no '<task>/{metric}' scores of T0 evaluation prompts found; evaluate "
                         f"'t0_eval_score_eval' (tasks named <prompt>_score_eval)")
    os.makedirs(out_dir, exist_ok=True)
    csv_path = os.path.join(out_dir, "t0_report.csv")
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=_COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(_row(s) for s in summaries)
    md_path = os.path.join(out_dir, "t0_report.md")
    with open(md_path, "w", encoding="utf-8") as f:
        f.write(markdown_table(summaries, title) + "\n")
    plots = plot(summaries, out_dir)
    return {"csv": csv_path, "markdown": md_path, "plots": os.path.join(out_dir, "boxplots"),
            "overview": plots[-1]}
