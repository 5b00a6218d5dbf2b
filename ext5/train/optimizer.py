"""Adafactor with t5x's defaults and t5x's learning-rate schedules (`create_learning_rate_scheduler`)."""
from __future__ import annotations

from typing import Callable

import jax.numpy as jnp
import optax

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


def adafactor(learning_rate: float | Schedule | None = None, *, decay_rate: float = 0.8,
              clipping_threshold: float | None = 1.0, multiply_by_parameter_scale: bool = True,
              min_dim_size_to_factor: int = 128, momentum: float | None = None, epsilon1: float = 1e-30,
              weight_decay_rate: float | None = None) -> optax.GradientTransformation:
    """Adafactor as t5x configures it (decay 0.8, update clipping 1.0, parameter scale with a 1e-3 floor,
    eps 1e-30, factor dims >= 128, no momentum). The default schedule is T5's rsqrt pretraining rate."""
    if learning_rate is None:
        learning_rate = create_learning_rate_scheduler()
    return optax.adafactor(learning_rate=learning_rate, min_dim_size_to_factor=min_dim_size_to_factor,
                           decay_rate=decay_rate, multiply_by_parameter_scale=multiply_by_parameter_scale,
                           clipping_threshold=clipping_threshold, momentum=momentum, eps=epsilon1,
                           weight_decay_rate=weight_decay_rate, factored=True)


def learning_rate_fn(learning_rate: float | Schedule | None) -> Schedule:
    """The schedule adafactor() would use, for logging."""
    if learning_rate is None:
        return create_learning_rate_scheduler()
    if callable(learning_rate):
        return learning_rate
    return lambda step: jnp.float32(learning_rate)
