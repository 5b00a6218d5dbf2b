"""Orbax checkpoints in MODEL_DIR/checkpoint_<step>: train state, data position and model description.

Orbax writes into a temporary directory and renames it when complete, so a checkpoint is either whole or
absent -- unless files are lost or garbled later (disk full, a copy cut short, a bad sync). restore_latest()
therefore tries the newest checkpoint first and, if it cannot be read, warns, moves it aside
(MODEL_DIR/corrupt-checkpoint_<step>-<time>, so a later save of that step does not collide) and restores the
one before it. Before restoring, the stored parameter shapes are compared with the current model so that a
MODEL_DIR holding a different model is an error that says so (t5x#1067), not a silent restore.

Per-host data-position files (a tf.data iterator checkpoint: different on every host, so not part of the
orbax items, which the primary host writes) live in MODEL_DIR/data_state/checkpoint_<step>/host_<i>_of_<n>,
written before the orbax save starts and pruned once their orbax checkpoint is gone.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from typing import Any, Iterator

import jax
import orbax.checkpoint as ocp
from etils import epath

log = logging.getLogger(__name__)
DATA_STATE_DIR = "data_state"

STATE, DATA, META = "state", "data", "meta"
STEP_PREFIX = "checkpoint"
PARAMS = "params"  # the parameter subtree of the STATE item


def step_dirname(step: int) -> str:
    """`checkpoint_<step>`, t5x's name of one checkpoint's directory."""
    return f"{STEP_PREFIX}_{step}"


def step_of(name: str) -> int | None:
    """The step of a `checkpoint_<step>` directory name (the last path component counts), else None.

    The one parser of these names: resume, pruning, t5x import and `ext5 convert` all use it."""
    base = os.path.basename(os.path.normpath(name))
    digits = base[len(STEP_PREFIX) + 1:]
    return int(digits) if base.startswith(STEP_PREFIX + "_") and digits.isdigit() else None


def checkpoint_steps(directory: str) -> list[int]:
    """Sorted steps of the `checkpoint_<step>` subdirectories of a local directory ([] if there is none)."""
    if not os.path.isdir(directory):
        return []
    return sorted(step for d in os.listdir(directory) if (step := step_of(d)) is not None
                  and os.path.isdir(os.path.join(directory, d)))


class IncompatibleCheckpointError(ValueError):
    """MODEL_DIR (or INITIAL_CHECKPOINT_PATH) holds a model of other shapes than the one configured."""


class NoReadableCheckpointError(RuntimeError):
    """Every checkpoint in MODEL_DIR failed to restore."""


class Checkpointer:
    """Periodic, optionally asynchronous, orbax checkpoints with auto-resume support."""

    def __init__(self, directory: str, *, period: int = 1000, keep: int | None = None, use_async: bool = True):
        self.directory = os.path.abspath(directory) if "://" not in directory else directory
        self.period = max(1, period)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, step_prefix=STEP_PREFIX,
            enable_async_checkpointing=use_async, create=True, cleanup_tmp_directories=True)
        self._mngr = ocp.CheckpointManager(self.directory, options=options, item_names=(STATE, DATA, META))

    def latest_step(self) -> int | None:
        return self._mngr.latest_step()

    def should_save(self, step: int, *, force: bool = False) -> bool:
        """Whether save(step, ..., force=force) would write a checkpoint."""
        return force or step % self.period == 0

    def data_dir(self, step: int) -> str:
        """This host's directory for the data-position files of `step`."""
        return os.path.join(self.directory, DATA_STATE_DIR, step_dirname(step),
                            f"host_{jax.process_index()}_of_{jax.process_count()}")

    def all_steps(self) -> list[int]:
        return list(self._mngr.all_steps())

    def save(self, step: int, state: dict[str, Any], data_state: dict | None, meta: dict, *,
             force: bool = False) -> bool:
        """Save every `period` steps (or when `force`); returns whether a save started."""
        if not force and step % self.period:
            return False
        args = ocp.args.Composite(**{
            STATE: ocp.args.StandardSave(state),
            DATA: ocp.args.JsonSave(data_state or {}),
            META: ocp.args.JsonSave(meta),
        })
        started = self._mngr.save(step, args=args, force=True)
        # save() waited for the previous save, so older steps not listed now are gone or never finished.
        self._prune_data_dirs(keep=set(self.all_steps()) | {step})
        return started

    def _prune_data_dirs(self, keep: set[int]) -> None:
        root = epath.Path(self.directory) / DATA_STATE_DIR
        if not root.exists():
            return
        mine = os.path.basename(self.data_dir(0))
        for d in root.iterdir():
            step = step_of(d.name)
            if step is None or step in keep:
                continue
            for child in d.iterdir():  # this host's files, and any tmp dir a kill left behind
                if child.name.startswith(mine):
                    child.rmtree(missing_ok=True)
            try:
                d.rmdir()  # the last host out removes the step directory
            except OSError:
                pass

    def read_meta(self, step: int) -> dict:
        return dict(self._mngr.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))[META])

    def restore(self, step: int, abstract_state: dict[str, Any], param_shapes: dict[str, list[int]], *,
                with_data: bool = True) -> tuple[dict[str, Any], dict | None]:
        """Restore `step` into the shardings of `abstract_state`, after checking the model matches."""
        check_compatible(self.read_meta(step), param_shapes, where=f"{self.directory} (step {step})")
        items = {STATE: ocp.args.StandardRestore(abstract_state)}
        if with_data:
            items[DATA] = ocp.args.JsonRestore()
        restored = self._mngr.restore(step, args=ocp.args.Composite(**items))
        return restored[STATE], (dict(restored[DATA]) if with_data else None)

    def restore_params(self, step: int, abstract_params: Any, param_shapes: dict[str, list[int]]) -> Any:
        """Only the parameters of `step` (the optimizer state on disk is not read), into the shardings of
        `abstract_params`, after checking the model matches."""
        check_compatible(self.read_meta(step), param_shapes, where=f"{self.directory} (step {step})")
        # A partial restore of the STATE item: orbax reads the params subtree and skips the rest.
        args = ocp.args.PyTreeRestore(
            item={PARAMS: abstract_params}, partial_restore=True,
            restore_args={PARAMS: ocp.checkpoint_utils.construct_restore_args(abstract_params)})
        return self._mngr.restore(step, args=ocp.args.Composite(**{STATE: args}))[STATE][PARAMS]

    def restore_latest(self, abstract_state: dict[str, Any], param_shapes: dict[str, list[int]], *,
                       with_data: bool = True) -> tuple[int, dict[str, Any], dict | None] | None:
        """Restore the newest readable checkpoint: (step, state, data_state), or None if there is none.

        An unreadable checkpoint (truncated/garbled/missing files) is skipped with a warning and moved
        aside; a checkpoint of a different model is still an IncompatibleCheckpointError.
        """
        steps = sorted(self.all_steps(), reverse=True)
        errors = []
        for step in steps:
            try:
                state, data = self.restore(step, abstract_state, param_shapes, with_data=with_data)
                return step, state, data
            except IncompatibleCheckpointError:
                raise
            except Exception as e:  # noqa: BLE001 -- orbax/tensorstore/json raise many kinds
                msg = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
                errors.append(f"step {step}: {msg}")
                print(f"[ext5] WARNING: checkpoint {self.directory}/{step_dirname(step)} is unreadable ({msg}); "
                      f"moving it aside and falling back to the previous one", flush=True)
                self._set_aside(step)
        if errors:
            raise NoReadableCheckpointError(
                f"no checkpoint in {self.directory} could be restored ({'; '.join(errors)}); they were moved "
                f"to corrupt-{STEP_PREFIX}_<step>-<time>; rerun to start from scratch, or restore a backup")
        return None

    def _set_aside(self, step: int) -> None:
        """Rename an unreadable checkpoint out of orbax's view so training can save that step again."""
        if jax.process_index() == 0:
            src = epath.Path(self.directory) / step_dirname(step)
            dst = epath.Path(self.directory) / f"corrupt-{step_dirname(step)}-{int(time.time())}"
            try:
                src.rename(dst)
            except OSError as e:
                log.warning("ext5: could not move %s aside: %s", src, e)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices(f"ext5_set_aside_{step}")
        self._mngr.reload()

    def wait(self) -> None:
        self._mngr.wait_until_finished()

    def close(self) -> None:
        self._mngr.wait_until_finished()
        self._mngr.close()


def check_compatible(meta: dict, param_shapes: dict[str, list[int]], *, where: str) -> None:
    """Raise a one-line IncompatibleCheckpointError when stored and configured parameter shapes differ."""
    stored = {k: list(v) for k, v in meta.get("param_shapes", {}).items()}
    if stored == param_shapes:
        return
    missing = sorted(set(param_shapes) - set(stored))
    extra = sorted(set(stored) - set(param_shapes))
    diff = [k for k in sorted(set(stored) & set(param_shapes)) if stored[k] != param_shapes[k]]
    if diff:
        k = diff[0]
        detail = f"{k} is {tuple(stored[k])} there but {tuple(param_shapes[k])} in this config"
    elif missing:
        detail = f"it lacks {missing[0]}"
    else:
        detail = f"it has {extra[0]}, which this config lacks"
    raise IncompatibleCheckpointError(
        f"{where} holds a different model ({detail}; stored model: {meta.get('model_config', '?')}); "
        f"use a fresh MODEL_DIR, or the model config that wrote it")


def model_meta(model_config: Any, param_shapes: dict[str, list[int]], **extra: Any) -> dict:
    """The description saved next to each checkpoint (JSON)."""
    import dataclasses
    cfg = dataclasses.asdict(model_config) if dataclasses.is_dataclass(model_config) else str(model_config)
    return {"model_config": json.loads(json.dumps(cfg, default=str)), "param_shapes": param_shapes,
            "process_count": jax.process_count(), **extra}


def find_checkpoint_step(path: str) -> tuple[str, int | None]:
    """Split a t5x-style checkpoint path (MODEL_DIR or MODEL_DIR/checkpoint_<step>) into (dir, step)."""
    step = step_of(path)
    if step is not None:
        return os.path.dirname(os.path.normpath(path)), step
    return path, None


@contextlib.contextmanager
def _checkpoint_at(path: str, what: str) -> Iterator[tuple[Checkpointer, int]]:
    """(Checkpointer, step) of a MODEL_DIR (its latest step) or MODEL_DIR/checkpoint_<step>."""
    directory, step = find_checkpoint_step(path)
    ck = Checkpointer(directory, use_async=False)
    try:
        step = step if step is not None else ck.latest_step()
        if step is None:
            raise IncompatibleCheckpointError(
                f"{what} {path} holds no checkpoint_<step> directory; pass MODEL_DIR of a training run")
        yield ck, int(step)
    finally:
        ck.close()


def restore_state(path: str, abstract_state: dict[str, Any], param_shapes: dict[str, list[int]], *,
                  what: str = "checkpoint path") -> tuple[dict[str, Any], int]:
    """Train state (no data position) and step from a MODEL_DIR (its latest) or MODEL_DIR/checkpoint_<step>."""
    with _checkpoint_at(path, what) as (ck, step):
        restored, _ = ck.restore(step, abstract_state, param_shapes, with_data=False)
    return restored, step


def restore_params(path: str, abstract_params: Any, *, what: str = "checkpoint path") -> tuple[Any, int]:
    """Parameters only and step of a MODEL_DIR (its latest) or MODEL_DIR/checkpoint_<step>, restored into
    the shardings of `abstract_params` (ShapeDtypeStructs, e.g. `ext5.model.sharding.abstract_params`):
    what eval, inference and export need, without building or reading an optimizer state."""
    import flax

    shapes = {k: list(v.shape) for k, v in flax.traverse_util.flatten_dict(abstract_params, sep="/").items()}
    with _checkpoint_at(path, what) as (ck, step):
        params = ck.restore_params(step, abstract_params, shapes)
    return params, step
