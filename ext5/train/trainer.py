"""The training loop: `train(...)` is the one function the CLI (and gin) calls.

data (host batches) -> global sharded batch -> compiled step -> metrics/progress -> checkpoints -> eval.
Imports no TensorFlow: the seqio pipeline is imported only when a DatasetConfig is given.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import time
from typing import Any, Callable, Iterator, Mapping

import jax
import numpy as np

from ext5.data.source import check_batch_source
from ext5.model import flops as flops_lib
from ext5.model.configs import T5Config
from ext5.train import checkpoints as ckpt_lib
from ext5.train import metrics as metrics_lib
from ext5.train import optimizer as optim
from ext5.train import partitioning
from ext5.train import step as step_lib

Evaluator = Callable[[Any, int], Mapping[str, float]]


@dataclasses.dataclass(frozen=True)
class DatasetConfig:
    """t5x's utils.DatasetConfig: which seqio mixture/task, at what lengths, and how to read it."""

    mixture_or_task_name: str
    task_feature_lengths: Mapping[str, int]
    split: str = "train"
    batch_size: int = 128
    shuffle: bool = True
    seed: int | None = 0
    use_cached: bool = False
    pack: bool = True
    packer: str = "best_fit"  # ext5's best-fit packer; "seqio" for seqio's greedy trim_and_pack
    pack_window: int = 512  # examples per best-fit round (memory and latency bound)
    module: str | None = None  # imported first, to register user tasks (t5x's MIXTURE_OR_TASK_MODULE)
    pipeline: str = "auto"  # "grain" (cached ArrayRecord tasks), "tf.data", or "auto": grain when every task has one
    workers: int = 0  # grain worker processes building batches (0: in the training process)


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    period: int = 1000
    keep: int | None = None
    use_async: bool = True


@dataclasses.dataclass
class TrainResult:
    model_dir: str
    start_step: int
    final_step: int
    state: step_lib.TrainState
    history: list[dict[str, float]]
    eval_history: list[dict[str, float]]
    preempted: bool = False


def make_batch_source(cfg: DatasetConfig, shard_index: int, num_shards: int, host_batch_size: int) -> Iterator:
    """This host's batch source: grain over ArrayRecord for cached tasks, else seqio's tf.data (imported lazily)."""
    from ext5.data import batch_sources  # noqa: WPS433 (TF lives behind this import)
    return batch_sources.make_batch_source(cfg, shard_index, num_shards, host_batch_size)


class _IntervalClock:
    """Wall-clock time of a logging interval, less the host-side pauses (checkpoint writes, evals) inside it.

    A pause first waits for the device work dispatched so far, so that work is counted in the interval and
    only the pause itself is left out.
    """

    def __init__(self):
        self.restart()

    def restart(self) -> None:
        self._start, self._paused = time.perf_counter(), 0.0

    def elapsed(self) -> float:
        return time.perf_counter() - self._start - self._paused

    @contextlib.contextmanager
    def excluded(self, outputs: Any):
        jax.block_until_ready(outputs)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._paused += time.perf_counter() - t0


class _Preemption:
    """SIGTERM (Cloud TPU preemption) sets a flag; the loop saves at the current step and exits cleanly.

    Installed before the checkpoint restore and the compile, so a SIGTERM at any point after train() starts
    ends in a clean exit. With several processes every one must stop at the same step (a process leaving
    early would hang the others' collectives): jax's preemption sync point decides where it is available,
    otherwise the processes agree on the flag every `sync_period` steps.
    """

    def __init__(self, sync_period: int = 10):
        self.requested = False
        self._old = None
        self._sync_period = max(1, sync_period)

    def stop_at(self, step: int) -> bool:
        """Whether to stop after `step` (the same answer on every process)."""
        if jax.process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils
        try:
            if multihost_utils.reached_preemption_sync_point(step):
                return True
        except Exception:  # noqa: BLE001 -- no preemption service in this jax.distributed setup
            pass
        if step % self._sync_period:
            return False
        flags = multihost_utils.process_allgather(np.array([int(self.requested)], np.int32))
        return bool(np.asarray(flags).any())

    def __enter__(self):
        try:
            self._old = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread
            self._old = None
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def _batch_size(train_dataset: DatasetConfig | None, batch_size: int | None) -> int:
    """The global batch size: the dataset config's (one source of truth), else `batch_size`."""
    if train_dataset is None:
        if batch_size is None:
            raise ValueError("train(batch_source=...) needs batch_size (the global batch size)")
        return int(batch_size)
    if batch_size is not None and int(batch_size) != int(train_dataset.batch_size):
        raise ValueError(f"trainer.train.batch_size={batch_size} disagrees with DatasetConfig.batch_size="
                         f"{train_dataset.batch_size}; bind BATCH_SIZE once (DatasetConfig.batch_size)")
    return int(train_dataset.batch_size)


def _lengths(train_dataset: DatasetConfig | None, batch_source: Any) -> tuple[int, int]:
    if train_dataset is not None:
        return int(train_dataset.task_feature_lengths["inputs"]), int(train_dataset.task_feature_lengths["targets"])
    return int(batch_source.input_len), int(batch_source.target_len)


def train(*, model: T5Config, model_dir: str, train_steps: int, batch_size: int | None = None,
          train_dataset: DatasetConfig | None = None, batch_source: Any = None,
          partition: partitioning.PartitionConfig = partitioning.PartitionConfig(),
          optimizer: Callable[..., Any] = optim.adafactor, learning_rate: Any = None,
          num_microbatches: int = 1, z_loss: float = 1e-4, loss_normalizing_factor: float | str | None = None,
          checkpoint: CheckpointConfig = CheckpointConfig(), log_period: int = 10, eval_period: int | None = None,
          evaluator: Evaluator | None = None, random_seed: int = 0, initial_checkpoint_path: str | None = None,
          plot: bool = True, stop_after_steps: int | None = None) -> TrainResult:
    """Train `model` to `train_steps` total steps in `model_dir`, resuming from its latest checkpoint.

    Either `train_dataset` (a seqio mixture/task) or `batch_source` (an `ext5.data.source.BatchSource`:
    host batches, state(directory)/restore(state, directory), input_len/target_len) provides data. The
    global batch size is `train_dataset.batch_size` (the one BATCH_SIZE binding); `batch_size` is needed
    only with a `batch_source`, and a `batch_size` that disagrees with the dataset's is an error. `stop_after_steps` stops early (tests), saving a checkpoint. On SIGTERM
    the current step is checkpointed and train() returns with `preempted=True`.
    """
    if train_dataset is None and batch_source is None:
        raise ValueError("train() needs train_dataset (a seqio mixture or task) or batch_source")
    # Installed first: a SIGTERM during the restore or the compile also ends in a clean exit.
    with _Preemption(sync_period=log_period) as preemption:
        batch_size = _batch_size(train_dataset, batch_size)
        is_chief = jax.process_index() == 0
        input_len, target_len = _lengths(train_dataset, batch_source)
        fns = step_lib.build_for_training(
            model=model, partition=partition, optimizer=optimizer, learning_rate=learning_rate,
            batch_size=batch_size, input_len=input_len, target_len=target_len, num_microbatches=num_microbatches,
            z_loss=z_loss, loss_normalizing_factor=loss_normalizing_factor, random_seed=random_seed)
        mesh = fns.mesh
        param_shapes = fns.param_shapes()
        meta = ckpt_lib.model_meta(model, param_shapes,
                                   mixture_or_task_name=getattr(train_dataset, "mixture_or_task_name", None))

        shard_index, num_shards = partitioning.host_shard_info()
        host_bs = partitioning.host_batch_size(batch_size)
        batches = check_batch_source(batch_source) if batch_source is not None else make_batch_source(
            train_dataset, shard_index, num_shards, host_bs)

        ckpt = ckpt_lib.Checkpointer(model_dir, period=checkpoint.period, keep=checkpoint.keep,
                                     use_async=checkpoint.use_async)
        abstract = fns.abstract_state.as_dict()
        latest = ckpt.restore_latest(abstract, param_shapes)  # skips unreadable checkpoints, with a warning
        if latest is not None:
            latest_step, restored, data_state = latest
            state = step_lib.TrainState(**restored)
            if data_state:
                batches.restore(data_state, ckpt.data_dir(latest_step))
            print(f"[ext5] resumed from {ckpt.directory}/{ckpt_lib.STEP_PREFIX}_{latest_step}", flush=True)
        elif initial_checkpoint_path:
            state = _restore_initial(initial_checkpoint_path, abstract, param_shapes)
            print(f"[ext5] initialised from {initial_checkpoint_path} (step {int(state.step)})", flush=True)
        else:
            state = fns.init(jax.random.PRNGKey(random_seed))
        start_step = int(jax.device_get(state.step))

        writer = metrics_lib.create_writer(model_dir, "train", is_chief=is_chief)
        eval_writer = metrics_lib.create_writer(model_dir, "eval", is_chief=is_chief) if evaluator else None
        flops_per_step = flops_lib.train_flops_per_step(model, batch_size, input_len, target_len)
        peak = flops_lib.peak_flops_per_device(jax.devices()[0].device_kind)
        n_dev = jax.device_count()
        if is_chief:
            print(f"[ext5] {n_dev} devices, mesh {dict(mesh.shape)}, {_count(param_shapes) / 1e6:.2f}M params, "
                  f"batch {batch_size} x ({input_len}+{target_len}) tokens, "
                  f"{flops_per_step / 1e12:.3f} TFLOP/step, steps {start_step}->{train_steps}", flush=True)

        history: list[dict[str, float]] = []
        eval_history: list[dict[str, float]] = []
        progress = metrics_lib.Progress(train_steps, start_step)
        end_step = train_steps if stop_after_steps is None else min(train_steps, start_step + stop_after_steps)
        pending: list[Mapping[str, jax.Array]] = []
        clock = _IntervalClock()
        step = start_step

        def log_row(metrics: list[Mapping[str, jax.Array]], elapsed: float | None) -> dict[str, float]:
            """Normalise summed step metrics, add throughput when the interval was timed, and record them."""
            summed = step_lib.host_metrics_sum(metrics)
            row = step_lib.normalise_metrics(summed, len(metrics))
            if elapsed is not None:
                elapsed = max(elapsed, 1e-9)
                row["steps_per_sec"] = len(metrics) / elapsed
                row["tokens_per_sec"] = len(metrics) * batch_size * (input_len + target_len) / elapsed
                row["nonpadding_tokens_per_sec"] = summed["nonpadding_tokens"] / elapsed
                row["tflops_per_device"] = flops_per_step * len(metrics) / elapsed / n_dev / 1e12
                if peak:
                    row["mfu"] = row["tflops_per_device"] * 1e12 / peak
            writer.write_scalars(step, row)
            history.append({"step": step, **row})
            return row

        def save(force: bool = False) -> None:
            # The data position is taken only when a checkpoint is written: it may write files.
            if ckpt.should_save(step, force=force):
                with clock.excluded(state):
                    ckpt.save(step, state.as_dict(), batches.state(ckpt.data_dir(step)), meta, force=force)

        preempted = preemption.stop_at(step)  # a SIGTERM during restore/compile: stop before training
        # Several virtual CPU devices in one process can deadlock in their collectives when consecutive steps
        # overlap (seen under load); on CPU keep one step in flight. TPU/GPU keep async dispatch.
        one_in_flight = jax.default_backend() == "cpu" and jax.local_device_count() > 1
        while step < end_step and not preempted:
            host = next(batches)
            state, m = fns.train_step(state, partitioning.make_global_batch(host, mesh, batch_size))
            step += 1
            pending.append(m)
            if one_in_flight:
                jax.block_until_ready(m)
            if step == start_step + 1:
                jax.block_until_ready(m)  # the first step includes the compile: log it untimed
                log_row(pending, None)
                pending = []
                clock.restart()
            elif step % log_period == 0 or step == end_step:
                # The interval ends when its device work has finished (dispatch runs ahead of the device),
                # and host-side logging is left out of every interval alike.
                jax.block_until_ready(m)
                row = log_row(pending, clock.elapsed())
                if is_chief:
                    progress.print(step, row)
                pending = []
                clock.restart()
            preempted = preemption.stop_at(step)
            if preempted:
                break
            save()
            if evaluator is not None and eval_period and step % eval_period == 0:
                with clock.excluded(state):
                    eval_history.append(_run_eval(evaluator, state, step, eval_writer))
        if preempted:
            print(f"[ext5] SIGTERM: saving a checkpoint at step {step} and exiting", flush=True)
        ckpt.wait()
        if step not in ckpt.all_steps():
            save(force=True)
        ckpt.close()
        if evaluator is not None and not preempted and step == train_steps and (
                not eval_period or step % eval_period != 0) and step > start_step:
            eval_history.append(_run_eval(evaluator, state, step, eval_writer))
        writer.close()
        if eval_writer:
            eval_writer.close()
        if plot and is_chief and os.path.exists(os.path.join(model_dir, "train", "metrics.jsonl")):
            png = metrics_lib.plot_curves(os.path.join(model_dir, "train", "metrics.jsonl"),
                                          os.path.join(model_dir, "loss_curve.png"),
                                          eval_jsonl=os.path.join(model_dir, "eval", "metrics.jsonl"))
            print(f"[ext5] wrote {png}", flush=True)
        return TrainResult(model_dir=model_dir, start_step=start_step, final_step=step, state=state,
                           history=history, eval_history=eval_history, preempted=preempted)


def _run_eval(evaluator: Evaluator, state: step_lib.TrainState, step: int, writer) -> dict[str, float]:
    t0 = time.time()
    scores = dict(evaluator(state.params, step))
    if writer is not None:
        writer.write_scalars(step, scores)
    if jax.process_index() == 0:
        shown = ", ".join(f"{k} {v:.3g}" for k, v in sorted(scores.items()))
        print(f"[ext5] eval @ step {step} ({time.time() - t0:.1f}s): {shown}", flush=True)
    return {"step": step, **scores}


def _restore_initial(path: str, abstract: dict[str, Any], param_shapes: dict) -> step_lib.TrainState:
    """t5x's INITIAL_CHECKPOINT_PATH: the whole train state (step and optimizer too), not the data position."""
    restored, _ = ckpt_lib.restore_state(path, abstract, param_shapes, what="INITIAL_CHECKPOINT_PATH")
    return step_lib.TrainState(**restored)


def _count(param_shapes: Mapping[str, list[int]]) -> int:
    return int(sum(np.prod(s) for s in param_shapes.values()))
