"""seqio.Evaluator glue: greedy predictions and target log-likelihood scores from ext5 params.

Called by the trainer every EVAL_PERIOD steps and by `ext5 eval`; returns flat {"task/metric": value}.
"""
from __future__ import annotations

import functools
import json
import logging
import os
from typing import Any, Iterator, Mapping

import jax
import jax.numpy as jnp
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


@functools.partial(jax.jit, static_argnums=(0,))
def _target_log_likelihood(model: Transformer, params, batch: Mapping[str, jax.Array]) -> jax.Array:
    logits = model.apply({"params": params}, batch["encoder_input_tokens"], batch["decoder_input_tokens"],
                         batch["decoder_target_tokens"], enable_dropout=False)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    tgt = batch["decoder_target_tokens"]
    tok = jnp.take_along_axis(logp, tgt[..., None], axis=-1)[..., 0]
    return jnp.sum(tok * (tgt > 0), axis=-1)


class SeqioEvaluator:
    """Evaluate a mixture/task's metrics with seqio, predicting by greedy decoding and scoring by log-likelihood."""

    def __init__(self, mixture_or_task_name: str, task_feature_lengths: Mapping[str, int], model: T5Config, *,
                 split: str = "validation", num_examples: int | None = None, batch_size: int = 32,
                 max_decode_length: int | None = None, use_cached: bool = False, output_dir: str | None = None):
        import seqio
        import ext5.tasks  # noqa: F401  (registers the tasks)
        from ext5.data import pipeline
        pipeline.check_registered(mixture_or_task_name)
        self.batch_size = batch_size
        self.max_decode_length = int(max_decode_length or task_feature_lengths["targets"])
        self.model = Transformer(model.replace(dropout_rate=0.0))
        self.output_dir = output_dir
        self.evaluator = seqio.Evaluator(
            mixture_or_task_name, feature_converter=seqio.EncDecFeatureConverter(pack=False), eval_split=split,
            use_cached=use_cached, sequence_length=dict(task_feature_lengths), num_examples=num_examples,
            shuffle=False, logger_cls=(), use_memory_cache=True)
        self.task_names = [t.name for t in self.evaluator.eval_tasks]

    def predict_fn(self, params, ds) -> list[tuple[int, list[int]]]:
        out = []
        for idx, batch, n in _batches(ds, self.batch_size):
            toks = decoding.greedy_decode(self.model, params, batch, max_decode_length=self.max_decode_length)
            toks = np.asarray(toks)
            out.extend((int(i), [int(t) for t in row]) for i, row in zip(idx[:n], toks[:n]))
        return out

    def score_fn(self, params, ds) -> list[tuple[int, float]]:
        out = []
        for idx, batch, n in _batches(ds, self.batch_size):
            scores = np.asarray(_target_log_likelihood(self.model, params, batch))
            out.extend((int(i), float(s)) for i, s in zip(idx[:n], scores[:n]))
        return out

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
