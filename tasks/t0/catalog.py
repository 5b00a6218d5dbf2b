"""T0's datasets and prompted tasks as data: the catalog CSVs in data/ plus promptsource's templates.

data/t0_train_datasets.csv  one row per training dataset: id, subset, first mixture (t0 / t0+ / t0++),
                            task cluster, train-split size (for mixing rates), number of templates.
data/t0_eval_datasets.csv   the held-out evaluation datasets: cluster and evaluation split(s).
data/splits.csv             split names of the datasets whose splits are not train/validation/test.
data/templates.csv          generated from promptsource 0.2.3: per template its name, original-task flag,
                            answer choices (and how many when fixed), metrics (see template_index).

A `PromptTask` is one (dataset, subset, template[, ANLI round]); its name is t-zero's.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import logging
from pathlib import Path
from typing import Any

from ext5.data.prompts import task_name

DATA_DIR = Path(__file__).resolve().parent / "data"
MAX_EXAMPLES_PER_DATASET = 500_000
MIXTURES = ("t0", "t0+", "t0++")  # each includes the earlier ones
DEFAULT_SPLITS = {"train": "train", "validation": "validation", "test": "test"}
ANLI_ROUNDS = ("r1", "r2", "r3")


def t0_rate(train_size: int, num_templates: int) -> int:
    """T0's mixing rate of each prompted task of a dataset: its train size if at most 500,000, else
    500000 // num_templates (so a huge dataset contributes 500k examples over all its templates)."""
    if train_size > MAX_EXAMPLES_PER_DATASET:
        return MAX_EXAMPLES_PER_DATASET // num_templates
    return train_size


@dataclasses.dataclass(frozen=True)
class Dataset:
    """One Hugging Face dataset (id, subset) of the T0 training or held-out evaluation sets."""
    hf_dataset: str
    subset: str | None
    num_templates: int
    splits: tuple[tuple[str, str], ...]      # seqio split -> dataset split
    first_mixture: str | None = None         # t0 / t0+ / t0++ for training datasets
    train_cluster: str | None = None
    train_size: int | None = None
    eval_cluster: str | None = None          # held-out evaluation datasets
    eval_splits: tuple[str, ...] = ()        # dataset split(s) scored (one per ANLI round)

    @property
    def key(self) -> tuple[str, str | None]:
        return (self.hf_dataset, self.subset)

    @property
    def label(self) -> str:
        """`id/subset` for tables and messages."""
        return self.hf_dataset + (f"/{self.subset}" if self.subset else "")


@dataclasses.dataclass(frozen=True)
class PromptTask:
    """One seqio Task: a dataset rendered through one promptsource template."""
    name: str
    dataset: Dataset
    template_name: str
    round: str | None                        # ANLI r1..r3
    original_task: bool
    has_answer_choices: bool
    num_classes: int | None                  # len(fixed answer choices), None if they vary per row
    metrics: tuple[str, ...]                 # promptsource metadata
    splits: tuple[tuple[str, str], ...]

    @property
    def score_eval_name(self) -> str | None:
        return self.name + "_score_eval" if self.has_answer_choices else None

    @property
    def rate(self) -> int:
        d = self.dataset
        return t0_rate(d.train_size or 0, d.num_templates)


def _read(name: str) -> list[dict[str, str]]:
    with open(DATA_DIR / name, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@functools.lru_cache(maxsize=None)
def _split_overrides() -> dict[tuple[str, str | None], tuple[tuple[str, str], ...]]:
    return {(r["hf_dataset"], r["subset"] or None):
            tuple(tuple(kv.split("=", 1)) for kv in r["splits"].split(";"))
            for r in _read("splits.csv")}


@functools.lru_cache(maxsize=None)
def datasets() -> tuple[Dataset, ...]:
    """Every dataset: training ones in catalog order, then the held-out-only ones; a dataset in both
    (e.g. super_glue/copa, trained on by T0++) is one entry carrying both roles."""
    overrides = _split_overrides()
    out: dict[tuple[str, str | None], Dataset] = {}
    for r in _read("t0_train_datasets.csv"):
        key = (r["hf_dataset"], r["subset"] or None)
        if r["first_mixture"] not in MIXTURES:
            raise ValueError(f"t0_train_datasets.csv: {key}: first_mixture {r['first_mixture']!r} "
                             f"is not one of {MIXTURES}")
        out[key] = Dataset(*key, num_templates=int(r["num_templates"]),
                           splits=overrides.get(key, tuple(DEFAULT_SPLITS.items())),
                           first_mixture=r["first_mixture"], train_cluster=r["cluster"],
                           train_size=int(r["train_size"]))
    for r in _read("t0_eval_datasets.csv"):
        key = (r["hf_dataset"], r["subset"] or None)
        base = out.get(key) or Dataset(*key, num_templates=int(r["num_templates"]),
                                       splits=overrides.get(key, tuple(DEFAULT_SPLITS.items())))
        out[key] = dataclasses.replace(base, eval_cluster=r["cluster"],
                                       eval_splits=tuple(r["eval_split"].split(";")))
    return tuple(out.values())


def train_datasets(mixture: str = "t0++") -> list[Dataset]:
    """Training datasets of `mixture` (t0 / t0+ / t0++, each including the earlier ones)."""
    if mixture not in MIXTURES:
        raise ValueError(f"unknown T0 mixture {mixture!r}; use one of {MIXTURES}")
    allowed = MIXTURES[: MIXTURES.index(mixture) + 1]
    return [d for d in datasets() if d.first_mixture in allowed]


def eval_datasets() -> list[Dataset]:
    """The held-out evaluation datasets, in t0_eval_datasets.csv's order."""
    by_key = {d.key: d for d in datasets() if d.eval_cluster}
    return [by_key[(r["hf_dataset"], r["subset"] or None)] for r in _read("t0_eval_datasets.csv")]


@functools.lru_cache(maxsize=None)
def templates(hf_dataset: str, subset: str | None) -> Any:
    """promptsource's DatasetTemplates of one dataset (only its YAML file is read)."""
    from promptsource.templates import DatasetTemplates

    found = DatasetTemplates(hf_dataset, subset)
    if not found.templates:
        raise ValueError(f"promptsource has no templates for {hf_dataset}/{subset}; is promptsource "
                         f"0.2.3 installed?")
    return found


# ============================================================================ template index
# Registration reads the template facts it needs (names, original-task flag, answer choices) from
# data/templates.csv, generated from promptsource 0.2.3, instead of parsing ~60 YAML files on every
# `import ext5.tasks` (pure-python YAML: about a second). The Template objects themselves are loaded
# when a task's data is read. tests/test_t0.py checks the index against promptsource;
# `python -m ext5.tasks.t0.catalog` rewrites it.
INDEX_FILE = "templates.csv"
INDEX_COLUMNS = ("hf_dataset", "subset", "template", "original_task", "answer_choices",
                 "num_fixed_choices", "metrics")


def build_template_index() -> list[dict[str, str]]:
    """The index rows, from promptsource, for every catalog dataset (templates in sorted order)."""
    rows = []
    for d in datasets():
        dt = templates(d.hf_dataset, d.subset)
        for name in dt.all_template_names:
            t = dt[name]
            fixed = t.get_fixed_answer_choices_list()
            rows.append({"hf_dataset": d.hf_dataset, "subset": d.subset or "", "template": name,
                         "original_task": str(int(bool(t.metadata.original_task))),
                         "answer_choices": str(int(bool(t.answer_choices))),
                         "num_fixed_choices": str(len(fixed) if fixed else 0),
                         "metrics": ";".join(t.metadata.metrics or ())})
    return rows


def write_template_index(path: Path | None = None) -> Path:
    path = path or DATA_DIR / INDEX_FILE
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=INDEX_COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(build_template_index())
    return path


@functools.lru_cache(maxsize=None)
def template_index() -> dict[tuple[str, str | None], list[dict[str, str]]]:
    """(dataset, subset) -> its index rows, in promptsource's sorted template order."""
    if (DATA_DIR / INDEX_FILE).exists():
        rows = _read(INDEX_FILE)
    else:  # slow path: read promptsource's YAML files
        logging.warning("%s is missing; reading promptsource's templates instead (slow); run "
                        "`python -m ext5.tasks.t0.catalog` to write it", DATA_DIR / INDEX_FILE)
        rows = build_template_index()
    out: dict[tuple[str, str | None], list[dict[str, str]]] = {}
    for r in rows:
        out.setdefault((r["hf_dataset"], r["subset"] or None), []).append(r)
    return out


def _prompt_tasks(d: Dataset) -> list[PromptTask]:
    rows = template_index().get(d.key, [])
    if len(rows) != d.num_templates:
        raise ValueError(f"{d.label}: the catalog says {d.num_templates} templates, the template index "
                         f"has {len(rows)}; regenerate it with `python -m ext5.tasks.t0.catalog` "
                         f"(promptsource 0.2.3) or fix the catalog row")
    rounds = ANLI_ROUNDS if d.hf_dataset == "anli" else (None,)
    out = []
    for rnd in rounds:
        # ANLI's rounds are splits of one dataset (train_r1, dev_r1, ...): one task per round.
        splits = (tuple((s, f"{hf}_{rnd}") for s, hf in (("train", "train"), ("validation", "dev"),
                                                          ("test", "test")))
                  if rnd else d.splits)
        for r in rows:
            n_fixed = int(r["num_fixed_choices"])
            out.append(PromptTask(
                name=task_name(d.hf_dataset, d.subset, r["template"]) + (f"_{rnd}" if rnd else ""),
                dataset=d, template_name=r["template"], round=rnd,
                original_task=r["original_task"] == "1",
                has_answer_choices=r["answer_choices"] == "1",
                num_classes=n_fixed or None,
                metrics=tuple(m for m in r["metrics"].split(";") if m), splits=splits))
    return out


@functools.lru_cache(maxsize=None)
def prompt_tasks() -> tuple[PromptTask, ...]:
    """Every prompted task of every catalog dataset (all templates; ANLI once per round)."""
    return tuple(t for d in datasets() for t in _prompt_tasks(d))


def template_of(task: PromptTask) -> Any:
    """The promptsource Template object of a task (reads promptsource's YAML for its dataset)."""
    return templates(task.dataset.hf_dataset, task.dataset.subset)[task.template_name]


if __name__ == "__main__":
    print(f"wrote {write_template_index()}")
