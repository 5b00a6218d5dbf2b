"""Adafactor with t5x's defaults and t5x's learning-rate schedules (`create_learning_rate_scheduler`)."""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

Schedule = Callable[[jnp.ndarray], jnp.ndarray]

_KNOWN_FACTORS = ("constant", "linear_warmup", "rsqrt_decay", "rsqrt_normalized_decay", "decay_every",
                  "cosine_decay", "linear_decay")


def create_learning_rate_scheduler(factors: str = "constant * rsqrt_decay", base_learning_rate: float = 1.0,
                                   warmup_steps: int = 10_000, decay_factor: float = 0.5,
                                   steps_per_decay: int = 20_000, steps_per_cycle: int = 100_000,
                                   min_learning_rate: float = 1e-8) -> Schedule:
    """t5x's factor-product schedule.

    'constant * rsqrt_decay' with base 1.0 and 10,000 warmup steps is T5's pretraining rate
    1/sqrt(max(step, 10000)); 'constant' with base 1e-3 is the fine-tuning rate.
    """
    names = [n.strip() for n in factors.split("*")]
    for n in names:
        if n not in _KNOWN_FACTORS:
            raise ValueError(f"unknown learning-rate factor {n!r} in {factors!r}; known: {', '.join(_KNOWN_FACTORS)}")

    def schedule(step: jnp.ndarray) -> jnp.ndarray:
        step = jnp.asarray(step, jnp.float32)
        ret = jnp.float32(1.0)
        for name in names:
            if name == "constant":
                ret *= base_learning_rate
            elif name == "linear_warmup":
                ret *= jnp.minimum(1.0, step / warmup_steps)
            elif name == "rsqrt_decay":
                ret /= jnp.sqrt(jnp.maximum(step, warmup_steps))
            elif name == "rsqrt_normalized_decay":
                ret *= jnp.sqrt(float(warmup_steps)) / jnp.sqrt(jnp.maximum(step, warmup_steps))
            elif name == "decay_every":
                ret *= decay_factor ** (step // steps_per_decay)
            elif name == "cosine_decay":
                progress = jnp.maximum(0.0, (step - warmup_steps) / float(steps_per_cycle))
                ret *= jnp.maximum(0.0, 0.5 * (1.0 + jnp.cos(jnp.pi * (progress % 1.0))))
            elif name == "linear_decay":
                ret *= jnp.maximum(0.0, 1.0 - step / float(steps_per_cycle))
        return jnp.maximum(ret, min_learning_rate)

    return schedule


# Parameters below a node of this name carry a leading stacked-layers axis (`T5Config.scan_layers`; see
# `ext5.model.t5.unscanned_to_scan`). Adafactor treats that axis as a batch of independent layers.
SCANNED_KEY = "layers"


class AdafactorState(NamedTuple):
    """Per-parameter Adafactor slots, each a tree shaped like the parameters. Unused slots are zeros(1)
    (t5x's layout). There is no step count: the step is `TrainState.step`, passed to `update(step=...)`."""

    v_row: Any  # factored second moment, the largest dim averaged out
    v_col: Any  # factored second moment, the second-largest dim averaged out
    v: Any  # unfactored second moment
    m: Any  # momentum (zeros(1) without momentum)


def _num_layer_axes(path: tuple) -> int:
    keys = [getattr(k, "key", getattr(k, "name", None)) for k in path]
    return 1 if SCANNED_KEY in keys else 0


def factored_dims(shape: tuple[int, ...], min_dim_size_to_factor: int = 128,
                  num_layer_axes: int = 0) -> tuple[int, int] | None:
    """(second-largest, largest) dim of `shape` past its leading layer axes, or None when the leaf is not
    factored (rank < 2 past the layer axes, or the second-largest dim is below `min_dim_size_to_factor`)."""
    inner = shape[num_layer_axes:]
    if len(inner) < 2:
        return None
    order = np.argsort(inner)
    if inner[order[-2]] < min_dim_size_to_factor:
        return None
    return int(order[-2]) + num_layer_axes, int(order[-1]) + num_layer_axes


def _decay_rate_pow(step: jax.Array, exponent: float) -> jax.Array:
    """t5x's (and the Adafactor paper's) step-dependent second-moment decay 1 - (step + 1)^-exponent."""
    return 1.0 - (jnp.asarray(step, jnp.float32) + 1.0) ** (-exponent)


def adafactor(learning_rate: float | Schedule | None = None, *, decay_rate: float = 0.8,
              clipping_threshold: float | None = 1.0, multiply_by_parameter_scale: bool = True,
              min_dim_size_to_factor: int = 128, momentum: float | None = None, epsilon1: float = 1e-30,
              epsilon2: float = 1e-3, weight_decay_rate: float | None = None
              ) -> optax.GradientTransformationExtraArgs:
    """Adafactor as t5x configures it (decay 0.8 with the step-dependent schedule, update clipping 1.0,
    parameter scale with a 1e-3 floor, eps 1e-30, factor dims >= 128, no momentum). The default schedule is
    T5's rsqrt pretraining rate.

    Scanned parameters (below a `layers` node, leading stacked-layers axis) are a batch of layers, as in
    t5x: that axis is never factored nor averaged over, so second moments, the parameter-scale RMS and the
    update-clipping RMS are per layer, and scanned and unscanned models take identical updates.

    One step counter: `update(grads, state, params, step=TrainState.step)`; the learning-rate schedule and
    the decay read that step, so an imported checkpoint at step N continues at step N's rate and decay.
    On plain (unscanned) trees the numbers equal optax.adafactor's with its own count at the same step.
    """
    if learning_rate is None:
        learning_rate = create_learning_rate_scheduler()
    lr_fn = learning_rate if callable(learning_rate) else (lambda step: jnp.float32(learning_rate))

    def init(params: Any) -> AdafactorState:
        def leaf(path, p):
            dims = factored_dims(p.shape, min_dim_size_to_factor, _num_layer_axes(path))
            one = jnp.zeros((1,), p.dtype)
            if dims is None:
                return one, one, jnp.zeros_like(p)
            d1, d0 = dims
            return (jnp.zeros(p.shape[:d0] + p.shape[d0 + 1:], p.dtype),
                    jnp.zeros(p.shape[:d1] + p.shape[d1 + 1:], p.dtype), one)

        slots = jax.tree_util.tree_map_with_path(leaf, params)
        is_slot = lambda x: isinstance(x, tuple) and len(x) == 3 and all(hasattr(a, "shape") for a in x)
        pick = lambda i: jax.tree.map(lambda t: t[i], slots, is_leaf=is_slot)
        m = jax.tree.map(lambda p: jnp.zeros_like(p) if momentum is not None else jnp.zeros((1,), p.dtype),
                         params)
        return AdafactorState(v_row=pick(0), v_col=pick(1), v=pick(2), m=m)

    def update(grads: Any, state: AdafactorState, params: Any = None, *, step: jax.Array | None = None,
               **unused_extra_args) -> tuple[Any, AdafactorState]:
        if params is None:
            raise ValueError("adafactor needs the parameters: call update(grads, state, params, step=...)")
        if step is None:
            raise ValueError("adafactor reads the train step: call update(grads, state, params, "
                             "step=TrainState.step)")
        decay = _decay_rate_pow(step, decay_rate)
        lr = lr_fn(step)

        def leaf(path, g, v_row, v_col, v, m, p):
            nl = _num_layer_axes(path)
            per_layer = tuple(range(nl, p.ndim))  # RMS axes: everything but the layer axis
            dims = factored_dims(p.shape, min_dim_size_to_factor, nl)
            grad_sqr = jnp.square(g) + epsilon1
            if dims is not None:
                d1, d0 = dims
                v_row = (decay * v_row + (1.0 - decay) * jnp.mean(grad_sqr, axis=d0)).astype(p.dtype)
                v_col = (decay * v_col + (1.0 - decay) * jnp.mean(grad_sqr, axis=d1)).astype(p.dtype)
                reduced_d1 = d1 - 1 if d1 > d0 else d1
                row_col_mean = jnp.mean(v_row, axis=reduced_d1, keepdims=True)
                row_factor = (v_row / row_col_mean) ** -0.5
                col_factor = v_col ** -0.5
                y = g * jnp.expand_dims(row_factor, axis=d0) * jnp.expand_dims(col_factor, axis=d1)
            else:
                v = (decay * v + (1.0 - decay) * grad_sqr).astype(p.dtype)
                y = g * v ** -0.5
            if clipping_threshold is not None:
                rms = jnp.sqrt(jnp.mean(jnp.square(y), axis=per_layer, keepdims=True))
                y = y / jnp.maximum(1.0, rms / clipping_threshold)
            u = y * jnp.asarray(lr, y.dtype)
            if multiply_by_parameter_scale:
                scale = jnp.sqrt(jnp.mean(jnp.square(p), axis=per_layer, keepdims=True))
                u = u * jnp.maximum(scale, epsilon2)
            if momentum is not None:
                m = momentum * m + (1.0 - momentum) * u
                u = m
            if weight_decay_rate is not None:
                u = u + weight_decay_rate * p
            return -u, v_row, v_col, v, m

        out = jax.tree_util.tree_map_with_path(leaf, grads, state.v_row, state.v_col, state.v, state.m, params)
        is_out = lambda x: isinstance(x, tuple) and len(x) == 5
        pick = lambda i: jax.tree.map(lambda t: t[i], out, is_leaf=is_out)
        return pick(0), AdafactorState(v_row=pick(1), v_col=pick(2), v=pick(3), m=pick(4))

    return optax.GradientTransformationExtraArgs(init, update)


def state_shardings(opt_state: Any, params: Any, param_shardings: Any) -> Any | None:
    """Shardings of an `AdafactorState` from the parameters': each slot keeps the parameter's mesh axes on
    the dims it keeps (so FSDP and model parallelism shard the optimizer state too); zeros(1) placeholders
    are replicated. None for other optimizer states (the caller lets XLA propagate shardings)."""
    if not isinstance(opt_state, AdafactorState):
        return None

    def drop(sh: NamedSharding, ndim: int, axis: int | None) -> NamedSharding:
        spec = list(sh.spec) + [None] * (ndim - len(sh.spec))
        if axis is not None:
            del spec[axis]
        return NamedSharding(sh.mesh, P(*spec))

    def slot(which, path, p, sh, s):
        if which == "v" or which == "m":
            return drop(sh, p.ndim, None) if s.shape == p.shape else NamedSharding(sh.mesh, P())
        dims = factored_dims(p.shape, 1, _num_layer_axes(path))
        if dims is None or s.shape == (1,):
            return NamedSharding(sh.mesh, P())
        d1, d0 = dims
        return drop(sh, p.ndim, d0 if which == "v_row" else d1)

    out = {}
    for which in AdafactorState._fields:
        out[which] = jax.tree_util.tree_map_with_path(
            lambda path, p, sh, s, w=which: slot(w, path, p, sh, s), params, param_shardings,
            getattr(opt_state, which))
    return AdafactorState(**out)


def learning_rate_fn(learning_rate: float | Schedule | None) -> Schedule:
    """The schedule adafactor() would use, for logging."""
    if learning_rate is None:
        return create_learning_rate_scheduler()
    if callable(learning_rate):
        return learning_rate
    return lambda step: jnp.float32(learning_rate)
