"""seqio.Evaluator glue: decoded predictions (greedy or beam) and rank-classification scores from ext5 params.

Called by the trainer every EVAL_PERIOD steps and by `ext5 eval`; returns flat {"task/metric": value}.
"""
from __future__ import annotations

import functools
import json
import logging
import os
from typing import Any, Iterator, Mapping

import jax
import numpy as np

from ext5.model import decoding
from ext5.model.configs import T5Config
from ext5.model.t5 import Transformer

_FEATURES = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens")


def _batches(ds, batch_size: int) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray], int]]:
    """(indices, features padded to batch_size rows, number of real rows) from an enumerated seqio dataset."""
    for idx, feats in ds.batch(batch_size).as_numpy_iterator():
        n = len(idx)
        pad = batch_size - n
        out = {k: np.pad(np.asarray(feats[k]), ((0, pad), (0, 0))) for k in _FEATURES if k in feats}
        yield idx, out, n


def choice_groups(inputs: np.ndarray, max_choices: int) -> list[tuple[int, int]]:
    """[start, end) runs of consecutive rows with identical encoder inputs, at most `max_choices` long.

    Rank classification emits an example's answer choices as consecutive rows that share the input, so a run
    is one example: its encoder (and cross-attention keys/values) is computed once for all of its rows.
    """
    groups, start = [], 0
    for i in range(1, len(inputs) + 1):
        if i == len(inputs) or i - start == max_choices or not np.array_equal(inputs[i], inputs[start]):
            groups.append((start, i))
            start = i
    return groups


class SeqioEvaluator:
    """Evaluate a mixture/task's metrics with seqio: predict tasks are decoded (greedy, or beam search with
    t5x's defaults), score tasks (rank classification) get summed target log-likelihoods, with the encoder
    run once per example for all of its answer choices (`length_normalize` divides by target length)."""

    def __init__(self, mixture_or_task_name: str, task_feature_lengths: Mapping[str, int], model: T5Config, *,
                 split: str = "validation", num_examples: int | None = None, batch_size: int = 32,
                 max_decode_length: int | None = None, use_cached: bool = False, output_dir: str | None = None,
                 decode_method: str = "greedy", num_beams: int = 4, beam_alpha: float = 0.6,
                 max_choices: int = 16, length_normalize: bool = False):
        import seqio
        import ext5.tasks  # noqa: F401  (registers the tasks)
        from ext5.data import pipeline
        pipeline.check_registered(mixture_or_task_name)
        self.batch_size = batch_size
        self.max_decode_length = int(max_decode_length or task_feature_lengths["targets"])
        self.model = Transformer(model.replace(dropout_rate=0.0))
        self.output_dir = output_dir
        self.decode_kwargs = dict(method=decode_method, num_beams=num_beams, alpha=beam_alpha)
        self.max_choices = int(max_choices)
        self.length_normalize = bool(length_normalize)
        self.evaluator = seqio.Evaluator(
            mixture_or_task_name, feature_converter=seqio.EncDecFeatureConverter(pack=False), eval_split=split,
            use_cached=use_cached, sequence_length=dict(task_feature_lengths), num_examples=num_examples,
            shuffle=False, logger_cls=(), use_memory_cache=True)

    def predict_fn(self, params, ds) -> list[tuple[int, list[int]]]:
        out = []
        for idx, batch, n in _batches(ds, self.batch_size):
            toks = decoding.decode(self.model, params, batch, max_decode_length=self.max_decode_length,
                                   **self.decode_kwargs)
            toks = np.asarray(toks)
            out.extend((int(i), [int(t) for t in row]) for i, row in zip(idx[:n], toks[:n]))
        return out

    def score_fn(self, params, ds) -> list[tuple[int, float]]:
        """Summed target log-likelihood per row; rows sharing an input are scored with one encoder pass."""
        from ext5.model import scoring
        rows = list(ds.as_numpy_iterator())
        if not rows:
            return []
        index = np.array([int(i) for i, _ in rows])
        inputs = np.stack([np.asarray(f["encoder_input_tokens"]) for _, f in rows])
        targets = np.stack([np.asarray(f["decoder_target_tokens"]) for _, f in rows])
        groups = choice_groups(inputs, self.max_choices)
        width = max(e - s for s, e in groups)
        scores = np.zeros(len(rows), np.float64)
        per_call = max(1, self.batch_size // width)
        for b in range(0, len(groups), per_call):
            chunk = groups[b:b + per_call]
            enc = np.zeros((per_call, inputs.shape[1]), np.int32)
            tgt = np.zeros((per_call, width, targets.shape[1]), np.int32)
            for g, (s, e) in enumerate(chunk):
                enc[g] = inputs[s]
                tgt[g, :e - s] = targets[s:e]
            out = scoring.score_choices(self.model, params, enc, tgt, length_normalize=self.length_normalize)
            for g, (s, e) in enumerate(chunk):
                scores[s:e] = out[g, :e - s]
        return [(int(i), float(v)) for i, v in zip(index, scores)]

    def __call__(self, params: Any, step: int) -> dict[str, float]:
        results, _ = self.evaluator.evaluate(
            compute_metrics=True, step=step, predict_fn=functools.partial(self.predict_fn, params),
            score_fn=functools.partial(self.score_fn, params))
        metrics = results.result() if hasattr(results, "result") else results
        flat = {f"{task}/{name}": float(v) for task, ms in (metrics or {}).items() for name, v in ms.items()
                if np.ndim(v) == 0}
        if self.output_dir and jax.process_index() == 0:
            os.makedirs(self.output_dir, exist_ok=True)
            with open(os.path.join(self.output_dir, f"metrics_step{step}.json"), "w", encoding="utf-8") as f:
                json.dump(flat, f, indent=1, sort_keys=True)
        logging.info("eval step %d: %s", step, flat)
        return flat
