"""Row-driven text-to-text formatting of ExMIX examples (TensorFlow, runs inside tf.data).

One preprocessor serves every row: `format_row(dataset, row=...)` renders
``inputs = "<prefix> <field>: <value> <field>: <value> ..."`` from the row's `inputs` paths and
``targets`` from its `targets` path through the row's `target_map` (class ids -> label words,
option index -> option text, ...). Generation/span rows also keep `references` (all reference
answers, 1-D string) for evaluation; SARI rows keep `source_text`. Paths are dotted
(`answers.text`) and follow the TFDS convention that a sequence of dicts is a dict of sequences
(ext5.data.sources yields Hugging Face columns the same way).

Every op is total on schema-true data: empty lists give "" and label indices are taken modulo
the number of options, so random mock data and odd rows never crash a pipeline.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import tensorflow as tf

from ext5.data import preprocessors
from ext5.tasks.exmix.catalog import Row

LIST_SEPARATOR = " | "


# ============================================================================ feature access
def get_path(ex: Mapping[str, Any], path: str) -> Any:
    """ex["a"]["b"] for path "a.b"; a one-line KeyError naming what exists when missing."""
    node: Any = ex
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            have = sorted(node) if isinstance(node, Mapping) else type(node).__name__
            raise KeyError(f"feature path {path!r}: no {part!r} (have {have}); fix the "
                           f"catalog's inputs/targets/choices column")
        node = node[part]
    return node


def _flat(value: Any) -> tf.Tensor:
    """A (ragged) tensor's values as 1-D."""
    if isinstance(value, tf.RaggedTensor):
        value = value.flat_values
    return tf.reshape(value, [-1])


def text_list(value: Any) -> tf.Tensor:
    """Any feature value -> 1-D tf.string (lists flattened; bools as true/false)."""
    if isinstance(value, Mapping):  # a dict feature: its leaves in key order
        parts = [text_list(value[k]) for k in sorted(value)]
        return tf.concat(parts, axis=0) if parts else tf.constant([], tf.string)
    value = _flat(value)
    if value.dtype == tf.bool:
        return tf.where(value, "true", "false")
    if value.dtype != tf.string:
        return tf.strings.as_string(value)
    return value


def text(value: Any) -> tf.Tensor:
    """Any feature value -> scalar tf.string (list items joined by " | ")."""
    return tf.strings.reduce_join(text_list(value), separator=LIST_SEPARATOR)


def _first(values: tf.Tensor, default: str = "") -> tf.Tensor:
    return tf.cond(tf.size(values) > 0, lambda: values[0], lambda: tf.constant(default))


def _pick(options: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
    """options[index mod n] ("" when there are no options)."""
    n = tf.size(options)
    index = tf.math.floormod(tf.cast(index, tf.int32), tf.maximum(n, 1))
    return tf.cond(n > 0, lambda: tf.gather(options, index), lambda: tf.constant(""))


def _scalar(value: Any) -> tf.Tensor:
    value = _flat(value)
    return tf.cond(tf.size(value) > 0, lambda: value[0], lambda: tf.zeros([], value.dtype))


# ============================================================================ targets
def field_text(ex: Mapping[str, Any], path: str) -> tf.Tensor:
    """A template slot's text: the feature at dotted `path` via `text` (lists joined by " | ")."""
    return text(get_path(ex, path))


def _choices(row: Row, ex: Mapping[str, Any]) -> tf.Tensor:
    paths = row.choices[:1] if row.target_map == "choice_key" else row.choices
    if len(paths) == 1:
        return text_list(get_path(ex, paths[0]))
    return tf.stack([field_text(ex, p) for p in paths])


def render_targets(row: Row, ex: Mapping[str, Any],
                   label_names: Sequence[str] | None) -> tuple[tf.Tensor, tf.Tensor]:
    """(targets scalar string, references 1-D string) of one example."""
    m = row.target_map
    if "{" in row.targets:
        t = preprocessors.render_template(row.targets, ex, field_text)
        return t, tf.reshape(t, [1])
    if m in ("choice", "choice1", "choice_letter", "choice_key"):
        options = _choices(row, ex)
        label = _scalar(get_path(ex, row.targets))
        if m == "choice_letter":  # "A" -> 0
            label = tf.strings.unicode_decode(tf.strings.upper(tf.strings.substr(label, 0, 1)),
                                              "UTF-8")
            label = _scalar(label) - 65
        elif m == "choice_key":  # the position of the answer key among the options' keys
            keys = text_list(get_path(ex, row.choices[1]))
            label = tf.argmax(tf.cast(tf.equal(keys, label), tf.int32))
        elif label.dtype == tf.string:  # "1"/"2"
            label = tf.strings.to_number(label, tf.int32)
        if m == "choice1":
            label = tf.cast(label, tf.int32) - 1
        t = _pick(options, label)
        return t, tf.reshape(t, [1])
    if m == "true_names":
        names = list(label_names or ())
        flags = tf.stack([tf.cast(_scalar(ex[n]), tf.bool) for n in names])
        chosen = tf.boolean_mask(tf.constant(names), flags)
        t = tf.cond(tf.size(chosen) > 0,
                    lambda: tf.strings.reduce_join(chosen, separator=", "),
                    lambda: tf.constant("none"))
        return t, tf.reshape(t, [1])
    value = get_path(ex, row.targets)
    if m == "label":
        v = _scalar(value)
        if v.dtype == tf.string:
            t = v
        else:
            t = _pick(tf.constant(list(label_names or ())), tf.cast(v, tf.int32))
        return t, tf.reshape(t, [1])
    if m == "threshold":  # e.g. toxicity in [0, 1] -> "toxic" when >= 0.5
        names = tf.constant(list(label_names or ()))
        t = tf.gather(names, tf.cast(tf.cast(_scalar(value), tf.float32) >= 0.5, tf.int32))
        return t, tf.reshape(t, [1])
    if m == "score":  # STS-B: rounded to 0.2 as in T5 ("3.4")
        v = tf.round(tf.cast(_scalar(value), tf.float32) * 5.0) / 5.0
        t = tf.strings.as_string(v, precision=1)
        return t, tf.reshape(t, [1])
    values = text_list(value)
    if m == "last":
        t = tf.cond(tf.size(values) > 0, lambda: values[-1], lambda: tf.constant(""))
        return t, tf.reshape(t, [1])
    default = "unanswerable" if m == "unanswerable" else ""
    t = _first(values, default)
    if row.references:  # e.g. TriviaQA: the answer value and all its aliases count
        return t, tf.concat([tf.reshape(t, [1]), text_list(get_path(ex, row.references))], 0)
    refs = tf.cond(tf.size(values) > 0, lambda: values, lambda: tf.reshape(t, [1]))
    return t, refs


# ============================================================================ inputs
def render_inputs(row: Row, ex: Mapping[str, Any]) -> tf.Tensor:
    """"<prefix> <field>: <value> ..." over the row's input paths."""
    parts = [tf.constant(row.prefix)]
    for path in row.inputs:
        value = get_path(ex, path)
        if row.target_map == "last" and path == row.targets:  # history = all but the last turn
            values = text_list(value)
            value = values[:tf.maximum(tf.size(values) - 1, 0)]
        parts += [tf.constant(f" {path.split('.')[-1]}: "), text(value)]
    return tf.strings.join(parts)


# ============================================================================ preprocessors
def _set_path(ex: dict, path: str, value: Any) -> None:
    parts = path.split(".")
    node = ex
    for p in parts[:-1]:
        node[p] = dict(node[p])
        node = node[p]
    node[parts[-1]] = value


def _copy(ex: Mapping[str, Any]) -> dict:
    return {k: _copy(v) if isinstance(v, Mapping) else v for k, v in ex.items()}


def flatten_lists(dataset: tf.data.Dataset, *, paths: Sequence[str]) -> tf.data.Dataset:
    """One example per element of the parallel list features `paths` (e.g. RACE's questions,
    options and answers of one article); other features are repeated. Unequal lengths are cut
    to the shortest."""
    paths = tuple(paths)

    def _length(v: Any) -> tf.Tensor:
        if isinstance(v, tf.RaggedTensor):
            return tf.cast(v.nrows(), tf.int32)
        return tf.shape(v)[0]

    def explode(ex):
        lists = {p: get_path(ex, p) for p in paths}
        n = tf.reduce_min(tf.stack([_length(v) for v in lists.values()]))
        sliced = {p.replace(".", "/"): v[:n] for p, v in lists.items()}
        return tf.data.Dataset.zip((tf.data.Dataset.from_tensors(ex).repeat(tf.cast(n, tf.int64)),
                                    tf.data.Dataset.from_tensor_slices(sliced)))

    def merge(ex, items):
        out = _copy(ex)
        for key, v in items.items():
            _set_path(out, key.replace("/", "."), v)
        return out

    return dataset.flat_map(explode).map(merge, num_parallel_calls=tf.data.AUTOTUNE)


def resolve_label_names(row: Row) -> tuple[str, ...]:
    """The row's label names; "@hf" reads the ClassLabel names of the Hugging Face dataset
    (ext5.data.sources.load_split: the Hub, or the EXT5_HF_MIRROR copy) at pipeline time."""
    if row.label_names != ("@hf",):
        return row.label_names
    from ext5.data import sources
    ds = sources.load_split(row.hf_id, row.hf_config or None, row.train_split)
    feature = ds.features[row.targets]
    names = getattr(feature, "names", None)
    if not names:
        raise ValueError(f"{row.task}: {row.hf_id} column {row.targets!r} is not a ClassLabel; "
                         "write its label_names into the catalog row")
    return tuple(names)


def format_row(dataset: tf.data.Dataset, *, row: Row) -> tf.data.Dataset:
    """The exmix text-to-text preprocessor: {"inputs", "targets"} (+ "references" for
    generation/span rows, "source_text" for SARI rows) from one catalogue row."""
    if row.flatten:
        dataset = flatten_lists(dataset, paths=row.flatten)
    label_names = resolve_label_names(row) if row.target_map in ("label", "threshold",
                                                                 "true_names") else None
    keep_refs = not row.is_label_task
    keep_source = "sari" in row.metrics

    def fn(ex):
        targets, refs = render_targets(row, ex, label_names)
        out = {"inputs": render_inputs(row, ex), "targets": targets}
        if keep_refs:
            out["references"] = refs
        if keep_source:
            out["source_text"] = field_text(ex, row.inputs[0])
        return out

    return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


# ============================================================================ postprocessing
def postprocess(output: Any, example: Mapping[str, Any] | None = None, is_target: bool = False,
                *, numeric: bool = False, references: bool = False, source: bool = False) -> Any:
    """seqio postprocess_fn for exmix rows.

    Predictions -> stripped text (float for regression). Targets -> the label text / float, or
    for generation/span rows the list of all references ({"source", "references"} for SARI).
    """
    from ext5.data import task_metrics
    if numeric:
        return task_metrics.postprocess_float(output)
    if is_target and references and example is not None and "references" in example:
        refs = task_metrics.references(example["references"])
        if source and "source_text" in example:
            return {"source": task_metrics.to_str(example["source_text"]), "references": refs}
        return refs
    return task_metrics.postprocess_text(output)

