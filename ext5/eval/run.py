"""`ext5 eval` and `ext5 infer`: load a checkpoint's parameters, then evaluate with seqio or write predictions."""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

import numpy as np

from ext5.model.configs import T5Config
from ext5.train import partitioning


def load_params(checkpoint_path: str, model: T5Config,
                partition: partitioning.PartitionConfig = partitioning.PartitionConfig()) -> tuple[Any, int]:
    """Parameters (sharded on this host's mesh) and step of MODEL_DIR's latest or a checkpoint_<step> dir.

    Parameters only: no optimizer is built and its state on disk is not read."""
    from ext5.model.sharding import abstract_params
    from ext5.train import checkpoints
    mesh = partitioning.make_mesh(partition.num_partitions)
    return checkpoints.restore_params(checkpoint_path, abstract_params(model, mesh, partition.rules()),
                                      what="CHECKPOINT_PATH")


def evaluate(*, model: T5Config, checkpoint_path: str, evaluator: Any, output_dir: str | None = None,
             partition: partitioning.PartitionConfig = partitioning.PartitionConfig()) -> dict[str, float]:
    """Evaluate one checkpoint with a SeqioEvaluator; prints a per-task table and writes, in `output_dir`
    (default CHECKPOINT_PATH/eval) metrics_step<N>.json and TensorBoard events, as evaluation during training
    does in MODEL_DIR/eval (whose metrics.jsonl stays the training run's record)."""
    import jax
    from ext5.train import metrics as metrics_lib
    params, step = load_params(checkpoint_path, model, partition)
    out = output_dir or os.path.join(checkpoint_path, "eval")
    evaluator.output_dir = None  # the writers below write its JSON, beside the TensorBoard events
    scores = evaluator(params, step)
    print(format_table(scores, step))
    if jax.process_index() == 0:
        writer = metrics_lib.create_dir_writer(out, jsonl=False, step_json=True)
        writer.write_scalars(step, scores)
        writer.close()
        print(f"[ext5] wrote {os.path.join(out, f'metrics_step{step}.json')} and TensorBoard events in {out}")
    return scores


def format_table(scores: Mapping[str, float], step: int) -> str:
    """A per-task metrics table: one row per task, one column per metric."""
    by_task: dict[str, dict[str, float]] = {}
    for k, v in scores.items():
        task, _, metric = k.partition("/")
        by_task.setdefault(task, {})[metric] = v
    width = max([len(t) for t in by_task] + [4])
    lines = [f"eval @ step {step}", f"{'task':<{width}}  metrics"]
    for task in sorted(by_task):
        ms = "  ".join(f"{m} {v:.2f}" for m, v in sorted(by_task[task].items()))
        lines.append(f"{task:<{width}}  {ms}")
    return "\n".join(lines)


def infer(*, model: T5Config, checkpoint_path: str, mixture_or_task_name: str,
          task_feature_lengths: Mapping[str, int], output_dir: str, split: str = "validation",
          num_examples: int | None = None, batch_size: int = 32, decode_method: str = "greedy",
          partition: partitioning.PartitionConfig = partitioning.PartitionConfig()) -> list[str]:
    """Write t5x-style JSONL (`<task>-<step>.jsonl`) per task: decoded `prediction`s, or for score-only tasks
    (rank classification) each row's summed target log-likelihood as `score`."""
    import seqio
    import ext5.tasks  # noqa: F401
    from ext5.data import pipeline
    from ext5.eval.evaluator import SeqioEvaluator
    pipeline.check_registered(mixture_or_task_name)
    params, step = load_params(checkpoint_path, model, partition)
    ev = SeqioEvaluator(mixture_or_task_name, task_feature_lengths, model, split=split,
                        num_examples=num_examples, batch_size=batch_size, decode_method=decode_method)
    os.makedirs(output_dir, exist_ok=True)
    written = []
    for task in seqio.get_subtasks(seqio.get_mixture_or_task(mixture_or_task_name)):
        ds = task.get_dataset(dict(task_feature_lengths), split=split, shuffle=False)
        if num_examples:
            ds = ds.take(num_examples)
        raw = list(ds.as_numpy_iterator())
        conv = seqio.EncDecFeatureConverter(pack=False)(ds, dict(task_feature_lengths)).enumerate()
        vocab = task.output_features["targets"].vocabulary
        scoring = bool(task.score_metric_fns) and not task.predict_metric_fns
        path = os.path.join(output_dir, f"{task.name}-{step}.jsonl")
        with open(path, "w", encoding="utf-8") as f:
            if scoring:
                scores = dict(ev.score_fn(params, conv))
                for i, ex in enumerate(raw):
                    f.write(json.dumps({"inputs": _pretokenized(ex), "targets": vocab.decode(ex["targets"].tolist()),
                                        "score": scores[i]}) + "\n")
            else:
                preds = dict(ev.predict_fn(params, conv))
                for i, ex in enumerate(raw):
                    f.write(json.dumps({"inputs": _pretokenized(ex), "prediction": vocab.decode(preds[i])}) + "\n")
        written.append(path)
        print(f"[ext5] wrote {path} ({len(raw)} {'scores' if scoring else 'predictions'})")
    return written


def _pretokenized(ex: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _text(v) for k, v in ex.items() if k.endswith("_pretokenized")}


def _text(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v
