"""Mixing-rate arithmetic for multi-task mixtures (pure Python: no TensorFlow, no seqio).

T5/ExT5 mix tasks "examples-proportionally" with an artificial limit K: a task with n training
examples gets rate min(n, K), so huge datasets do not drown the small ones. ExT5's family
co-training study (its Figure 1) mixes two task families equally (half of the examples from each)
and examples-proportionally within each family. These helpers compute such rates from example
counts alone, so mixtures can be registered and inspected without loading any data.
"""
from __future__ import annotations

import math
from typing import Mapping

__all__ = [
    "capped_rate",
    "examples_proportional_rates",
    "pair_rates",
    "shares",
]


def _check_cap(cap: int | None) -> None:
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap <= 0):
        raise ValueError(f"cap must be a positive int or None, got {cap!r}")


def capped_rate(num_examples: int | float, cap: int | None) -> float:
    """Rate of one task under examples-proportional mixing: ``min(num_examples, cap)``.

    ``cap=None`` means no limit (rate = ``num_examples``). A float count is accepted too (e.g. an
    existing mixture's rate reused as a size), so rates can be re-mixed without the raw counts.
    """
    _check_cap(cap)
    if (isinstance(num_examples, bool) or not isinstance(num_examples, (int, float))
            or not math.isfinite(num_examples) or num_examples < 0):
        raise ValueError(f"num_examples must be a finite number >= 0, got {num_examples!r}")
    return float(num_examples if cap is None else min(num_examples, cap))


def examples_proportional_rates(sizes: Mapping[str, int | float], cap: int | None) -> dict[str, float]:
    """Unnormalised rates ``{task: min(n_task, cap)}`` (seqio normalises rates itself)."""
    return {name: capped_rate(n, cap) for name, n in sizes.items()}


def shares(rates: Mapping[str, float]) -> dict[str, float]:
    """Rates as fractions of their total (summing to 1); keeps the mapping's order."""
    for name, r in rates.items():
        if not (isinstance(r, (int, float)) and math.isfinite(r) and r >= 0):
            raise ValueError(f"rate of {name!r} must be a finite number >= 0, got {r!r}")
    total = float(sum(rates.values()))
    if total <= 0:
        raise ValueError("rates sum to 0: at least one task needs a positive rate")
    return {name: float(r) / total for name, r in rates.items()}


def pair_rates(sizes_a: Mapping[str, int | float], sizes_b: Mapping[str, int | float],
               cap: int | None) -> dict[str, float]:
    """Rates of a two-family mixture: 0.5 of the total per family, capped-proportional within each.

    The result sums to 1. A task listed in both families would be ambiguous, so it is an error.
    """
    overlap = sorted(set(sizes_a) & set(sizes_b))
    if overlap:
        raise ValueError(f"tasks in both families of a pair: {overlap}; each task belongs to one family")
    if not sizes_a or not sizes_b:
        raise ValueError("pair_rates needs at least one task in each family")
    out: dict[str, float] = {}
    for sizes in (sizes_a, sizes_b):
        for name, share in shares(examples_proportional_rates(sizes, cap)).items():
            out[name] = 0.5 * share
    return out
