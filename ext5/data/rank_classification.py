"""Rank classification: score every answer choice, predict the most likely one (T5 library semantics).

The preprocessor turns one example with C answer choices into C rows carrying `inputs`, `targets`,
`idx` = (example index, choice index), `is_correct` and `weight`; the postprocessor keeps those for the
metric, which groups rows by example and takes the argmax of the summed target log-likelihood. Rows of one
example stay consecutive, which is what lets the evaluator run the encoder once per example.
"""
from __future__ import annotations

import itertools
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import tensorflow as tf

from ext5.data.preprocessors import render_template
from ext5.data.task_metrics import f1_from_counts

MODES = ("train", "eval", "fewshot_eval")
Features = Mapping[str, tf.Tensor]


def rank_classification(dataset: tf.data.Dataset, *, inputs_fn: Callable[[Features], tf.Tensor],
                        targets_fn: Callable[[Features], tf.Tensor],
                        is_correct_fn: Callable[[Features], tf.Tensor],
                        weight_fn: Callable[[Features], tf.Tensor] | None = None, mode: str = "eval",
                        passthrough_feature_keys: Sequence[str] = ()) -> tf.data.Dataset:
    """One row per answer choice (modes: "train" keeps correct rows, "eval" all, "fewshot_eval" one
    batched row per example).

    `inputs_fn` returns a scalar string (shared by all choices) or one string per choice; `targets_fn` one
    string per choice; `is_correct_fn` one bool per choice; `weight_fn` a scalar float (default 1).
    """
    if mode not in MODES:
        raise ValueError(f"rank_classification mode {mode!r} is not one of {MODES}")

    def rows(index: tf.Tensor, ex: Features) -> dict[str, tf.Tensor]:
        targets = tf.convert_to_tensor(targets_fn(ex))
        n = tf.shape(targets)[0]
        inputs = tf.convert_to_tensor(inputs_fn(ex))
        inputs = tf.broadcast_to(inputs, [n]) if inputs.shape.rank == 0 else inputs
        weight = tf.cast(weight_fn(ex) if weight_fn else 1.0, tf.float32)
        out = {
            "idx": tf.stack([tf.fill([n], tf.cast(index, tf.int32)), tf.range(n, dtype=tf.int32)], axis=1),
            "inputs": inputs,
            "targets": targets,
            "is_correct": tf.cast(is_correct_fn(ex), tf.bool),
            "weight": tf.fill([n], weight),
        }
        for key in passthrough_feature_keys:
            out[key] = tf.repeat(tf.expand_dims(ex[key], 0), n, axis=0)
        return out

    ds = dataset.enumerate().map(rows, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if mode == "fewshot_eval":
        return ds
    ds = ds.unbatch()
    if mode == "train":
        ds = ds.filter(lambda ex: ex["is_correct"])
    return ds


def rank_classification_formatter(dataset: tf.data.Dataset, *, inputs_formats: str | Sequence[str],
                                  targets_formats: Sequence[str], mode: str = "eval",
                                  label_key: str = "label", weight_key: str | None = None) -> tf.data.Dataset:
    """Rank classification for simple rows: choice i's input/target are format strings over the fields;
    the correct choice is `ex[label_key]` (an index, or a list of indices for multi-answer examples).

    e.g. inputs_formats="premise: {premise} hypothesis: {hypothesis}",
         targets_formats=["entailment", "neutral", "contradiction"].
    """
    num = len(targets_formats)
    if not isinstance(inputs_formats, str) and len(inputs_formats) != num:
        raise ValueError(f"{len(inputs_formats)} inputs_formats for {num} targets_formats; give one per choice "
                         "or a single string")

    def inputs_fn(ex: Features) -> tf.Tensor:
        if isinstance(inputs_formats, str):
            return render_template(inputs_formats, ex)
        return tf.stack([render_template(f, ex) for f in inputs_formats])

    def is_correct_fn(ex: Features) -> tf.Tensor:
        label = tf.reshape(tf.cast(ex[label_key], tf.int32), [-1])
        return tf.reduce_any(tf.equal(tf.range(num)[:, None], label[None, :]), axis=1)

    return rank_classification(
        dataset, inputs_fn=inputs_fn, targets_fn=lambda ex: tf.stack([render_template(f, ex) for f in targets_formats]),
        is_correct_fn=is_correct_fn, weight_fn=(lambda ex: ex[weight_key]) if weight_key else None, mode=mode)


def postprocess(score: Any, example: Mapping[str, Any] | None = None, is_target: bool = False) -> Any:
    """seqio postprocessor: targets become (idx, is_correct, weight, target length); scores pass through."""
    if not is_target:
        return score
    ex = example or {}
    return (tuple(int(i) for i in np.asarray(ex["idx"]).reshape(-1)), bool(ex["is_correct"]),
            float(ex.get("weight", 1.0)), int(np.count_nonzero(np.asarray(ex["targets"]))))


def rank_classification_metric(targets: Sequence[tuple], scores: Sequence[float], num_classes: int | None = None,
                               normalize_by_target_length: bool = False) -> dict[str, float]:
    """Accuracy of the argmax choice per example (any correct choice counts), weighted by `weight`; with
    `num_classes`, also the macro F1 over classes (F1 of the positive class for 2 classes), as the T5 library.

    Scores are summed target log-likelihoods; `normalize_by_target_length` divides by the token count first.
    """
    if len(targets) != len(scores):
        raise ValueError(f"{len(targets)} targets but {len(scores)} scores")
    if not targets:
        return {"accuracy": float("nan")}
    rows = sorted(zip(targets, scores), key=lambda r: tuple(r[0][0]))
    gold, pred, weights = [], [], []
    num_correct = total = 0.0
    for _, grp in itertools.groupby(rows, key=lambda r: r[0][0][0]):
        grp = list(grp)
        s = np.array([sc / max(t[3], 1) if normalize_by_target_length else sc for t, sc in grp], np.float64)
        choice = int(np.argmax(s))
        w = grp[choice][0][2]
        num_correct += w * float(grp[choice][0][1])
        total += w
        correct = [i for i, (t, _) in enumerate(grp) if t[1]]
        gold.append(correct[0] if correct else -1)
        pred.append(choice)
        weights.append(w)
    out = {"accuracy": 100.0 * num_correct / total}
    if num_classes:
        out["f1" if num_classes == 2 else f"mean_{num_classes}class_f1"] = _f1(
            np.array(gold), np.array(pred), np.array(weights), num_classes)
    return out


def _f1(gold: np.ndarray, pred: np.ndarray, w: np.ndarray, num_classes: int) -> float:
    """Weighted F1: class 1's for binary tasks, else the unweighted mean over classes (sklearn's macro)."""
    classes = [1] if num_classes == 2 else range(num_classes)
    f1s = []
    for c in classes:
        tp = np.sum(w * ((pred == c) & (gold == c)))
        fp = np.sum(w * ((pred == c) & (gold != c)))
        fn = np.sum(w * ((pred != c) & (gold == c)))
        f1s.append(f1_from_counts(tp, fp, fn))
    return 100.0 * float(np.mean(f1s))


def metric_fn(num_classes: int | None = None, normalize_by_target_length: bool = False):
    """A seqio score metric (targets, scores) -> dict with the given options bound."""
    def metric(targets: Sequence[tuple], scores: Sequence[float]) -> dict[str, float]:
        return rank_classification_metric(targets, scores, num_classes, normalize_by_target_length)
    return metric


