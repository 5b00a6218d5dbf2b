"""promptsource templates -> seqio: task names, rendering, and the rank-classification twin's preprocessor.

A promptsource `Template` is applied with its own `Template.apply` to each row of a Hugging Face dataset
(a python dict) while the rows are converted to tf.data (`ext5.data.sources.hf_data_source(transform=)`),
so the Jinja template sees exactly the values promptsource's authors saw. Each rendered example has
`inputs`, `targets` (strings) and `answer_choices` (1-D strings; empty when the template has none).
Examples whose input or target renders empty (unlabelled test rows, templates that do not apply to the
row) are dropped, as T0 did.
"""
from __future__ import annotations

import functools
import re
from typing import Any, Callable, Mapping

import seqio
import tensorflow as tf

from ext5.data import sources

PROMPT_FEATURES = {"inputs": tf.TensorSpec([], tf.string),
                   "targets": tf.TensorSpec([], tf.string),
                   "answer_choices": tf.TensorSpec([None], tf.string)}


def task_clean(text: str) -> str:
    """Characters a T0 task name may hold: runs of anything else become "_" (as t-zero's utils)."""
    return re.sub(r"[^\w\d\._]+", "_", text)


def task_name(dataset: str, subset: str | None, template_name: str) -> str:
    """T0's task name: cleaned `<dataset>_<subset>_<template>` (`<dataset>_<template>` without subset)."""
    return task_clean(dataset + (f"_{subset}_" if subset is not None else "_") + template_name)


def clean_keys(example: Mapping[str, Any]) -> dict[str, Any]:
    """Column names with "-" spelled "_", which is how promptsource's templates refer to them."""
    return {k.replace("-", "_"): v for k, v in example.items()}


def render(template: Any, example: Mapping[str, Any]) -> dict[str, Any] | None:
    """{"inputs", "targets", "answer_choices"} from `template.apply(example)`, or None to drop the example.

    A template renders to "input ||| target"; anything else (no separator, an empty side, a template that
    splits into more than two parts) means the template does not apply to this row.
    """
    ex = clean_keys(example)
    parts = template.apply(ex)
    if len(parts) != 2 or not parts[0] or not parts[1]:
        return None
    choices = template.get_answer_choices_list(ex) or []
    return {"inputs": parts[0], "targets": parts[1], "answer_choices": choices}


def _render_lazy(load_template: Callable[[], Any], example: Mapping[str, Any]) -> dict[str, Any] | None:
    return render(load_template(), example)


def prompt_source(dataset_id: str, subset: str | None, template: Any, *,
                  splits: Mapping[str, str] | None = None, revision: str | None = None,
                  num_input_examples: Mapping[str, int] | None = None,
                  data_dir: str | None = None) -> seqio.DataSource:
    """`hf_data_source` whose rows are `template` rendered (PROMPT_FEATURES); lazy like it.

    `template` is a promptsource Template, or a zero-argument function returning one (called when data
    is read, so registering a task needs no template file to be parsed).
    """
    transform = (functools.partial(_render_lazy, template) if callable(template)
                 else functools.partial(render, template))
    return sources.hf_data_source(
        dataset_id, subset, splits=splits, revision=revision, num_input_examples=num_input_examples,
        data_dir=data_dir, transform=transform,
        output_signature=PROMPT_FEATURES)


def answer_choice_rows(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """The `_score_eval` preprocessor: one row per answer choice (ext5.data.rank_classification, "eval"
    mode); the correct choice is the one equal to the stripped target, as T0's rank evaluation did."""
    from ext5.data.rank_classification import rank_classification

    return rank_classification(
        dataset,
        inputs_fn=lambda ex: ex["inputs"],
        targets_fn=lambda ex: ex["answer_choices"],
        is_correct_fn=lambda ex: tf.equal(ex["answer_choices"], tf.strings.strip(ex["targets"])),
        weight_fn=lambda ex: 1.0,
        mode="eval")


@seqio.map_over_dataset
def from_p3(ex: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """P3 rows -> the features the promptsource path produces (inputs/targets, and for `_score_eval`
    configs the rank-classification idx/is_correct/weight as ext5.data.rank_classification emits)."""
    out = {"inputs": ex["inputs_pretokenized"], "targets": ex["targets_pretokenized"]}
    if "is_correct" in ex:
        out.update(idx=tf.cast(ex["idx"], tf.int32), is_correct=ex["is_correct"],
                   weight=tf.cast(ex["weight"], tf.float32))
    elif "answer_choices" in ex:
        out["answer_choices"] = ex["answer_choices"]
    return out
