"""The ExMIX catalogue (exmix_catalog.csv, next to this file) as typed rows.

The CSV is the ExT5 paper's ExMIX task list (Aribandi et al., 2021, appendix) with machine-readable columns appended
(see docs/exmix.md, "Catalogue columns"). Everything the registry does is driven by these
rows: adding a dataset is adding a row. Loading is pure Python (no TF, no data access).
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import os
import re

CATALOG_PATH = os.path.join(os.path.dirname(__file__), "exmix_catalog.csv")

FAMILIES = ("summarization", "dialogue", "nli", "classification", "semantic_parsing",
            "commonsense", "closed_book_qa", "reading_comprehension")
SOURCES = ("tfds", "hf", "manual")
TASK_KINDS = ("generation", "span", "classification", "multiple_choice", "regression")
# How a target value becomes text (tasks/exmix/formatting.py implements each).
TARGET_MAPS = ("", "label", "threshold", "score", "true_names", "choice", "choice1",
               "choice_letter", "choice_key", "unanswerable", "last")
METRIC_NAMES = ("accuracy", "auc", "bleu", "exact_match", "f1", "f1_macro", "f1_macro_multilabel",
                "f1_squad", "f1a", "joint_goal_accuracy", "matthews_corrcoef", "meteor",
                "pearson", "rouge", "sari", "spearman")
_NAME = re.compile(r"^exmix_[a-z0-9]+(_[a-z0-9]+)*$")


def _split(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(";") if v.strip())


@dataclasses.dataclass(frozen=True)
class Row:
    """One ExMIX dataset (one seqio Task)."""
    task: str
    family: str
    dataset: str
    source: str                      # tfds | hf | manual
    tfds_name: str
    hf_id: str
    hf_config: str
    train_split: str
    eval_split: str
    inputs: tuple[str, ...]          # dotted feature paths rendered into `inputs`
    targets: str                     # dotted path, or a "{path} ..." template
    target_map: str
    choices: tuple[str, ...]
    label_names: tuple[str, ...]     # ("@hf",) = read the ClassLabel names from the HF dataset
    flatten: tuple[str, ...]         # parallel list features unstacked into one example each
    references: str                  # dotted path of all reference answers (default: targets)
    task_kind: str
    metrics: tuple[str, ...]
    num_train_examples: int
    size_note: str
    manual_download: str
    provenance: str

    @property
    def prefix(self) -> str:
        """Task prefix of the inputs: the task name without `exmix_`, e.g. `squad`."""
        return self.task[len("exmix_"):]

    @property
    def splits(self) -> dict[str, str]:
        """seqio split -> source split."""
        out = {"train": self.train_split}
        if self.eval_split:
            out["validation"] = self.eval_split
        return out

    @property
    def is_label_task(self) -> bool:
        """Targets are one label word / number (classification metrics), not a reference list."""
        return self.task_kind in ("classification", "multiple_choice", "regression")


def _row(d: dict[str, str]) -> Row:
    return Row(
        task=d["task"], family=d["family"], dataset=d["dataset"], source=d["source"],
        tfds_name=d["tfds_name"], hf_id=d["hf_id"], hf_config=d["hf_config"],
        train_split=d["train_split"], eval_split=d["eval_split"],
        inputs=_split(d["inputs"]), targets=d["targets"].strip(), target_map=d["target_map"],
        choices=_split(d["choices"]), label_names=_split(d["label_names"]),
        flatten=_split(d["flatten"]), references=d["references"].strip(),
        task_kind=d["task_kind"], metrics=_split(d["metrics"]),
        num_train_examples=int(d["num_train_examples"]), size_note=d["size_note"],
        manual_download=d["manual_download"], provenance=d["provenance"])


def validate(row: Row) -> None:
    """Raises ValueError naming the row and the column to fix."""
    def bad(col: str, why: str) -> None:
        raise ValueError(f"{CATALOG_PATH}: row {row.task}: column {col} {why}")
    if not _NAME.match(row.task):
        bad("task", "must be exmix_<dataset> in lowercase letters, digits and single underscores")
    if row.family not in FAMILIES:
        bad("family", f"{row.family!r} is not one of {FAMILIES}")
    if row.source not in SOURCES:
        bad("source", f"{row.source!r} is not one of {SOURCES}")
    if row.source == "tfds" and not row.tfds_name:
        bad("tfds_name", "is empty for a tfds row")
    if row.source == "hf" and not row.hf_id:
        bad("hf_id", "is empty for an hf row")
    if row.source == "manual" and not row.manual_download:
        bad("manual_download", "is empty: say where the data comes from")
    if row.task_kind not in TASK_KINDS:
        bad("task_kind", f"{row.task_kind!r} is not one of {TASK_KINDS}")
    if row.target_map not in TARGET_MAPS:
        bad("target_map", f"{row.target_map!r} is not one of {TARGET_MAPS}")
    if row.target_map in ("label", "threshold", "true_names") and not row.label_names:
        bad("label_names", f"is needed by target_map={row.target_map}")
    if row.target_map.startswith("choice") and not row.choices:
        bad("choices", f"is needed by target_map={row.target_map}")
    if not row.inputs:
        bad("inputs", "is empty")
    for m in row.metrics:
        if m not in METRIC_NAMES:
            bad("metrics", f"names unknown metric {m!r}; known: {METRIC_NAMES}")
    if row.num_train_examples <= 0:
        bad("num_train_examples", "must be a positive integer")


@functools.lru_cache(maxsize=None)
def load_catalog(path: str = CATALOG_PATH) -> tuple[Row, ...]:
    """All rows, validated, in file order."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = tuple(_row(d) for d in csv.DictReader(f))
    names = [r.task for r in rows]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{path}: duplicate task names {dupes}")
    for r in rows:
        validate(r)
    return rows


def rows_by_family() -> dict[str, list[Row]]:
    """family -> its rows, families in FAMILIES order."""
    out: dict[str, list[Row]] = {f: [] for f in FAMILIES}
    for r in load_catalog():
        out[r.family].append(r)
    return out


def sizes(rows=None) -> dict[str, int]:
    """task -> num_train_examples (the mixing-rate sizes)."""
    return {r.task: r.num_train_examples for r in (load_catalog() if rows is None else rows)}
