"""One seqio Task per ExMIX catalogue row (tasks/exmix/exmix_catalog.csv).

Every task shares the same pipeline, parameterised by its row:
  source (TFDS / Hugging Face / manual JSONL) -> formatting.format_row -> tokenize
  -> cache point -> append EOS,
with postprocessor and metrics chosen from the row's task_kind and metrics columns.
"""
from __future__ import annotations

import functools
from typing import Callable

import seqio

from ext5.data import preprocessors as data_preprocessors
from ext5.data import registry, task_metrics
from ext5.tasks.c4 import output_features  # the vocabulary is shared with C4
from ext5.tasks.exmix import formatting, sources
from ext5.tasks.exmix.catalog import Row, load_catalog

ORIGIN = "ext5.tasks.exmix"


def metric_fns(row: Row) -> list[Callable]:
    """seqio metric functions for the row's `metrics` column."""
    positive = row.label_names[-1] if row.label_names and row.label_names != ("@hf",) else "True"
    label = row.is_label_task
    table: dict[str, Callable] = {
        # Free-text rows score "accuracy" as exact match against any reference.
        "accuracy": task_metrics.accuracy if label else task_metrics.exact_match,
        "auc": functools.partial(task_metrics.auc, positive=positive),
        "bleu": task_metrics.bleu,
        "exact_match": task_metrics.exact_match,
        "f1": (functools.partial(task_metrics.f1_binary, positive=positive) if label
               else task_metrics.token_f1),
        "f1_macro": task_metrics.f1_macro,
        "f1_macro_multilabel": task_metrics.multilabel_f1_macro,
        "f1_squad": task_metrics.squad,
        "f1a": functools.partial(task_metrics.f1_binary, positive=positive),
        "joint_goal_accuracy": task_metrics.joint_goal_accuracy,
        "matthews_corrcoef": functools.partial(task_metrics.matthews_corrcoef, positive=positive),
        "meteor": task_metrics.meteor,
        "pearson": task_metrics.pearson,
        "rouge": task_metrics.rouge_first_reference,
        "sari": task_metrics.sari,
        "spearman": task_metrics.spearman,
    }
    return [table[m] for m in row.metrics]


def postprocess_fn(row: Row) -> Callable:
    return functools.partial(formatting.postprocess, numeric=row.task_kind == "regression",
                             references=not row.is_label_task, source="sari" in row.metrics)


def preprocessors(row: Row) -> list:
    return data_preprocessors.task_preprocessors(functools.partial(formatting.format_row, row=row))


def add_row_task(row: Row, *, vocabulary: str | None = None,
                 source: seqio.DataSource | None = None) -> seqio.Task:
    """Registers (or replaces) the task of one row; `source` overrides the row's data source."""
    return registry.add_task(
        row.task, origin=ORIGIN, family=row.family, num_examples={"train": row.num_train_examples},
        source=source if source is not None else sources.data_source(row),
        preprocessors=preprocessors(row),
        output_features=output_features(vocabulary),
        postprocess_fn=postprocess_fn(row),
        metric_fns=metric_fns(row))


def register(vocabulary: str | None = None) -> list[str]:
    """(Re-)registers every ExMIX task; returns their names in catalogue order."""
    return [add_row_task(row, vocabulary=vocabulary).name for row in load_catalog()]
