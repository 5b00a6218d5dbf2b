"""T0 / T0+ / T0++ (Sanh et al., 2021): promptsource templates as seqio Tasks, and T0's mixtures.

Tasks, named as bigscience-workshop/t-zero named them (`ext5.data.prompts.task_name`):
  <dataset>_<subset>_<template>              one per template of every catalog dataset (catalog.py);
                                             ANLI once per round, suffixed _r1 / _r2 / _r3
  <that name>_score_eval                     for templates with answer choices: one row per choice,
                                             scored by rank classification (accuracy; + F1 when the
                                             choices are fixed)
Mixtures: see mixtures.py (t0_train 313 tasks, t0+_train 392, t0++_train 464, t0_eval_score_eval, and
the two original-prompt ablations).

Data source, chosen at registration:
  EXT5_T0_SOURCE=promptsource (default)  the dataset through datasets.load_dataset, rendered on the fly by
                                         promptsource's Template.apply (ext5.data.prompts)
  EXT5_T0_SOURCE=p3                      the materialised bigscience/P3 config of the same name; in gin,
                                         `MIXTURE_OR_TASK_MODULE = 'ext5.tasks.t0.p3'` selects it
Vocabulary: `register(vocabulary=...)`, else $EXT5_VOCABULARY (as C4 and ExMIX), else "t5" (T5's
SentencePiece model, loaded lazily: registering downloads nothing); "local" for offline tests.
Registration reads neither data nor promptsource's YAML files (the template facts come from
data/templates.csv; Template objects are loaded when a task's data is first read).
"""
from __future__ import annotations

import functools
import os

import seqio

from ext5.data import preprocessors, prompts, registry, sources, task_metrics
from ext5.data import vocab as vocab_lib
from ext5.tasks.t0 import catalog, mixtures

_ORIGIN = __name__
SOURCES = ("promptsource", "p3")
SOURCE_ENV = "EXT5_T0_SOURCE"

# promptsource metadata metric -> ext5 metric, for generative evaluation of the training tasks (T0 itself
# scored only the held-out tasks, by rank classification). BLEU templates are scored by ROUGE here, and
# task_metrics.squad needs a list of references (a prompt's target is one string: exact match).
# Unlisted metrics fall back to accuracy.
_METRICS = {"Accuracy": task_metrics.accuracy, "ROUGE": task_metrics.rouge, "Squad": task_metrics.accuracy,
            "Sequence Accuracy": task_metrics.sequence_accuracy, "BLEU": task_metrics.rouge}


def output_features(vocabulary: str | None = None) -> dict[str, seqio.Feature]:
    """T0's features: inputs without EOS, targets with EOS (as t-zero's tasks)."""
    return vocab_lib.output_features(vocab_lib.selected_vocabulary(vocabulary), inputs_eos=False)


def _source(task: catalog.PromptTask, source: str, config: str) -> seqio.DataSource:
    d = task.dataset
    counts = {"train": d.train_size} if d.train_size and task.round is None else None
    if source == "p3":
        return sources.p3_data_source(config, splits={s: s for s, _ in task.splits},
                                      num_input_examples=counts)
    return prompts.prompt_source(d.hf_dataset, d.subset, functools.partial(catalog.template_of, task),
                                 splits=dict(task.splits), num_input_examples=counts)


def _metric_fns(task: catalog.PromptTask) -> list:
    fns = {_METRICS.get(m, task_metrics.accuracy) for m in task.metrics} or {task_metrics.accuracy}
    return sorted(fns, key=lambda f: f.__name__)


def register_task(task: catalog.PromptTask, *, source: str,
                  features: dict[str, seqio.Feature]) -> None:
    """Register one prompted task and, when its template has answer choices, its `_score_eval` twin."""
    from ext5.data import rank_classification as rc

    p3 = source == "p3"
    family = task.dataset.train_cluster or task.dataset.eval_cluster  # the task cluster, for `ext5 inspect`
    registry.add_task(
        task.name, origin=_ORIGIN, family=family, source=_source(task, source, task.name),
        preprocessors=preprocessors.task_preprocessors(*([prompts.from_p3] if p3 else [])),
        output_features=features, postprocess_fn=task_metrics.postprocess_text,
        metric_fns=_metric_fns(task))
    if task.score_eval_name:
        registry.add_task(
            task.score_eval_name, origin=_ORIGIN, family=family,
            source=_source(task, source, task.score_eval_name),
            preprocessors=preprocessors.task_preprocessors(prompts.from_p3 if p3 else prompts.answer_choice_rows),
            output_features=features, postprocess_fn=rc.postprocess,
            metric_fns=[rc.metric_fn(num_classes=task.num_classes)])


def register(source: str | None = None, vocabulary: str | None = None) -> None:
    """(Re-)register every T0 task and mixture (idempotent). `source`: "promptsource" | "p3" (default
    $EXT5_T0_SOURCE or promptsource); `vocabulary`: a get_vocabulary name (default $EXT5_VOCABULARY or t5)."""
    source = source or os.environ.get(SOURCE_ENV, "promptsource")
    if source not in SOURCES:
        raise ValueError(f"{SOURCE_ENV}={source!r} is not one of {SOURCES}")
    features = output_features(vocabulary)
    for task in catalog.prompt_tasks():
        register_task(task, source=source, features=features)
    for name, tasks in mixtures.mixtures().items():
        registry.add_mixture(name, tasks, origin=_ORIGIN)


register()
