"""Orbax checkpoints in MODEL_DIR/checkpoint_<step>: train state, data position and model description.

Orbax writes into a temporary directory and renames it when complete, so a checkpoint is either whole or
absent. Before restoring, the stored parameter shapes are compared with the current model so that a
MODEL_DIR holding a different model is an error that says so (t5x#1067), not a silent restore.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

STATE, DATA, META = "state", "data", "meta"
STEP_PREFIX = "checkpoint"


class IncompatibleCheckpointError(ValueError):
    """MODEL_DIR (or INITIAL_CHECKPOINT_PATH) holds a model of other shapes than the one configured."""


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
        return self._mngr.save(step, args=args, force=True)

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
    base = os.path.basename(os.path.normpath(path))
    if base.startswith(STEP_PREFIX + "_") and base[len(STEP_PREFIX) + 1:].isdigit():
        return os.path.dirname(os.path.normpath(path)), int(base[len(STEP_PREFIX) + 1:])
    return path, None
