"""ext5 checkpoints on the interop path: write one from imported weights, read one's config and parameters.

An import writes MODEL_DIR/checkpoint_<step> with the weights, the source's step (in TrainState.step, the
one counter the schedule and optimizer read) and a fresh Adafactor state built through the training step's
own construction, so the layout is exactly what a fine-tuning run restores. An export reads parameters
only (no optimizer state).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

import numpy as np

from ext5.interop.params import ConversionError, check_shapes, to_float32
from ext5.model.configs import T5Config
from ext5.train import checkpoints


def ensure_fresh_model_dir(model_dir: str) -> None:
    """Refuse (one line) a local MODEL_DIR that already holds checkpoints: a run would resume from them."""
    if "://" in model_dir:
        return
    steps = checkpoints.checkpoint_steps(model_dir)
    if steps:
        raise ConversionError(f"{model_dir} already holds {checkpoints.step_dirname(steps[-1])}; pass a fresh "
                              f"--to directory")


def write_checkpoint(params: Mapping[str, Any], cfg: T5Config, model_dir: str, *, step: int = 0,
                     **meta_extra: Any) -> str:
    """Write MODEL_DIR/checkpoint_<step> (params, step and a fresh ext5 Adafactor state) for fine-tuning
    with INITIAL_CHECKPOINT_PATH (t5x semantics: training continues from `step`). `params` are unscanned;
    they are stacked when `cfg.scan_layers`. Returns the checkpoint directory."""
    import jax
    import jax.numpy as jnp

    from ext5.model.t5 import unscanned_to_scan
    from ext5.train import optimizer, partitioning, step as step_lib

    if cfg.scan_layers:
        params = unscanned_to_scan(dict(params))
    # One device suffices: orbax restores into whatever mesh the fine-tuning run uses.
    mesh = partitioning.make_mesh(1, jax.devices()[:1])
    # The trainer always hands adafactor a schedule (a callable), which decides the state's structure.
    tx = optimizer.adafactor(optimizer.create_learning_rate_scheduler())
    fns = step_lib.build(cfg, mesh, partitioning.standard_logical_axis_rules(), tx, input_len=8, target_len=8)
    shapes = fns.param_shapes()
    check_shapes(params, shapes, what="imported weights")
    sh = fns.state_shardings
    device_params = jax.device_put(jax.tree.map(lambda x: np.asarray(x, np.float32), dict(params)), sh.params)
    with mesh:
        opt_state = jax.jit(tx.init, out_shardings=sh.opt_state)(device_params)
    state = {"step": jax.device_put(jnp.asarray(step, jnp.int32), sh.step), "params": device_params,
             "opt_state": opt_state}
    ck = checkpoints.Checkpointer(model_dir, use_async=False)
    existing = ck.all_steps()
    if existing:  # a run would resume from (or mix with) those: refuse rather than add a checkpoint next to them
        ck.close()
        raise ConversionError(f"{model_dir} already holds {checkpoints.step_dirname(max(existing))}; pass a "
                              f"fresh --to directory")
    ck.save(step, state, {}, checkpoints.model_meta(cfg, shapes, **meta_extra), force=True)
    ck.close()
    return os.path.join(ck.directory, checkpoints.step_dirname(step))


def checkpoint_config(checkpoint_path: str) -> tuple[T5Config, int]:
    """The model config stored in an ext5 checkpoint's meta, and the step (latest if a MODEL_DIR is given)."""
    directory, step = checkpoints.find_checkpoint_step(checkpoint_path)
    if not os.path.isdir(directory):
        raise ConversionError(f"{checkpoint_path} does not exist; pass an ext5 MODEL_DIR or its checkpoint_<step>")
    ck = checkpoints.Checkpointer(directory, use_async=False)
    try:
        step = step if step is not None else ck.latest_step()
        if step is None or step not in ck.all_steps():
            raise ConversionError(f"{checkpoint_path} holds no ext5 checkpoint_<step>; pass a MODEL_DIR of a "
                                  f"training run or one of its checkpoint_<step> directories")
        if not os.path.isdir(os.path.join(directory, checkpoints.step_dirname(step), checkpoints.META)):
            raise ConversionError(f"{directory}/{checkpoints.step_dirname(step)} is not an ext5 checkpoint (no "
                                  f"'{checkpoints.META}' item); import t5x checkpoints with --from=t5x")
        meta = ck.read_meta(step)
    finally:
        ck.close()
    stored = meta.get("model_config")
    if not isinstance(stored, Mapping):
        raise ConversionError(f"{checkpoint_path} stores no model config; pass the run's --gin_file")
    known = {f.name for f in dataclasses.fields(T5Config)}
    return T5Config(**{k: v for k, v in stored.items() if k in known}), int(step)


def load_checkpoint_params(checkpoint_path: str, cfg: T5Config) -> tuple[dict, int]:
    """Unscanned host float32 params and step of an ext5 checkpoint (MODEL_DIR = latest step); parameters
    only, on one device (no optimizer is built, its state on disk is not read)."""
    import jax

    from ext5.model.sharding import abstract_params, standard_logical_axis_rules
    from ext5.model.t5 import scan_to_unscanned
    from ext5.train import partitioning

    mesh = partitioning.make_mesh(1, jax.devices()[:1])
    params, step = checkpoints.restore_params(checkpoint_path,
                                              abstract_params(cfg, mesh, standard_logical_axis_rules()),
                                              what="--export-hf")
    return to_float32(scan_to_unscanned(jax.device_get(params))), int(step)
