"""seqio.Evaluator glue: decoded predictions (greedy or beam) and rank-classification scores from ext5 params.

Called by the trainer every EVAL_PERIOD steps and by `ext5 eval`; returns flat {"task/metric": value}.

At scale each host evaluates 1/H of every eval split: host h of H takes the h-th contiguous block of the split's
rows (in seqio's unshuffled order, so the blocks are the same on every host and an example's answer choices stay
together), decodes or scores it with a host-local copy of the parameters, and the hosts' results are gathered
(jax process_allgather, scores sent bit for bit) so that every host hands seqio the whole split and the metrics
are computed from all of it, the same as on one host.
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Iterator, Mapping

import jax
import numpy as np

from ext5.model import decoding
from ext5.model.configs import T5Config
from ext5.model.t5 import Transformer

_FEATURES = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens")


def _batches(rows: list, batch_size: int) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray], int]]:
    """(indices, features padded to batch_size rows, number of real rows) from enumerated seqio rows."""
    for b in range(0, len(rows), batch_size):
        chunk = rows[b:b + batch_size]
        n = len(chunk)
        idx = np.array([int(i) for i, _ in chunk])
        out = {k: np.pad(np.stack([np.asarray(f[k]) for _, f in chunk]), ((0, batch_size - n), (0, 0)))
               for k in _FEATURES if k in chunk[0][1]}
        yield idx, out, n


def host_block(n: int, index: int, count: int) -> slice:
    """Host `index` of `count`'s contiguous block of n rows (sizes differ by at most one)."""
    return slice(n * index // count, n * (index + 1) // count)


def allgather_rows(idx: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every host's (indices, values) rows, concatenated in host order, on every host (values sent bit for bit)."""
    if jax.process_count() == 1:
        return idx, values
    from jax.experimental import multihost_utils
    values = np.ascontiguousarray(values)
    n = np.asarray(multihost_utils.process_allgather(np.array([len(idx)], np.int32))).reshape(-1)
    width = int(n.max())
    # As int32 words: process_allgather goes through jax, which would turn float64 into float32.
    words = values.reshape(len(values), -1).view(np.int32) if len(values) else np.zeros((0, 1), np.int32)
    words = words.reshape(len(values), -1)
    pad_w = np.zeros((width, words.shape[1]), np.int32)
    pad_w[:len(words)] = words
    pad_i = np.zeros(width, np.int32)
    pad_i[:len(idx)] = idx
    all_w = np.asarray(multihost_utils.process_allgather(pad_w))
    all_i = np.asarray(multihost_utils.process_allgather(pad_i))
    out_i = np.concatenate([all_i[h, :n[h]] for h in range(len(n))]).astype(np.int64)
    out_w = np.concatenate([all_w[h, :n[h]] for h in range(len(n))])
    shape = values.shape[1:]
    return out_i, np.ascontiguousarray(out_w).view(values.dtype).reshape((len(out_i),) + shape)


def host_local_params(params: Any) -> Any:
    """Parameters every host can compute with on its own: arrays spanning several hosts are gathered; host-local
    ones (numpy, or jax arrays on this host's devices) are used as they are."""
    if jax.process_count() == 1:
        return params
    from jax.experimental import multihost_utils

    def local(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return multihost_utils.process_allgather(x, tiled=True)  # the global value, as numpy, everywhere
        return x
    return jax.tree_util.tree_map(local, params)


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
                 max_choices: int = 16, length_normalize: bool = False, shard: tuple[int, int] | None = None,
                 gather=allgather_rows):
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
        # (host, hosts): which block of every eval split this process evaluates; None: jax's process index/count.
        self.shard = shard
        self.gather = gather
        self.evaluator = seqio.Evaluator(
            mixture_or_task_name, feature_converter=seqio.EncDecFeatureConverter(pack=False), eval_split=split,
            use_cached=use_cached, sequence_length=dict(task_feature_lengths), num_examples=num_examples,
            shuffle=False, logger_cls=(), use_memory_cache=True)

    def _my_rows(self, ds) -> list:
        """This host's block of an enumerated eval dataset's rows."""
        rows = list(ds.as_numpy_iterator())
        index, count = self.shard or (jax.process_index(), jax.process_count())
        return rows[host_block(len(rows), index, count)]

    def predict_fn(self, params, ds) -> list[tuple[int, list[int]]]:
        """Decoded tokens of every row: this host's block decoded here, the others' gathered."""
        idx_out, toks_out = [], []
        for idx, batch, n in _batches(self._my_rows(ds), self.batch_size):
            toks = decoding.decode(self.model, params, batch, max_decode_length=self.max_decode_length,
                                   **self.decode_kwargs)
            idx_out.append(idx[:n])
            toks_out.append(np.asarray(toks, np.int32)[:n])
        idx = np.concatenate(idx_out) if idx_out else np.zeros(0, np.int64)
        toks = np.concatenate(toks_out) if toks_out else np.zeros((0, self.max_decode_length), np.int32)
        idx, toks = self.gather(idx, toks)
        return [(int(i), [int(t) for t in row]) for i, row in zip(idx, toks)]

    def score_fn(self, params, ds) -> list[tuple[int, float]]:
        """Summed target log-likelihood per row; rows sharing an input are scored with one encoder pass; this
        host's block scored here, the others' gathered."""
        idx, scores = self._score_rows(params, self._my_rows(ds))
        idx, scores = self.gather(idx, scores)
        return [(int(i), float(v)) for i, v in zip(idx, scores)]

    def _score_rows(self, params, rows: list) -> tuple[np.ndarray, np.ndarray]:
        from ext5.model import scoring
        if not rows:
            return np.zeros(0, np.int64), np.zeros(0, np.float64)
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
        return index, scores

    def __call__(self, params: Any, step: int) -> dict[str, float]:
        params = host_local_params(params)
        results, _ = self.evaluator.evaluate(
            compute_metrics=True, step=step, predict_fn=functools.partial(self.predict_fn, params),
            score_fn=functools.partial(self.score_fn, params))
        metrics = results.result() if hasattr(results, "result") else results
        flat = {f"{task}/{name}": float(v) for task, ms in (metrics or {}).items() for name, v in ms.items()
                if np.ndim(v) == 0}
        if self.output_dir and jax.process_index() == 0:
            from ext5.train.metrics import write_step_json  # the one metrics_step<N>.json writer
            write_step_json(self.output_dir, step, flat)
        logging.info("eval step %d: %s", step, flat)
        return flat
