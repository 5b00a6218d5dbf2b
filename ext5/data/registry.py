"""Idempotent seqio registration with provenance (which module registered which name).

Task modules call `add_task` / `add_mixture` from one explicit list each; re-importing a module
or re-registering in tests replaces the entry instead of raising seqio's duplicate error, and
`ORIGINS` lets `ext5 inspect` say where a task came from. `FAMILIES` (task -> family or T0 cluster) and
`NUM_EXAMPLES` (task -> {split: count} from the catalogs) are metadata for `ext5 inspect` and the transfer
experiment, known without reading any data.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import seqio

ORIGINS: dict[str, str] = {}
FAMILIES: dict[str, str] = {}
NUM_EXAMPLES: dict[str, dict[str, int]] = {}


def add_task(name: str, *, origin: str, family: str | None = None,
             num_examples: Mapping[str, int] | None = None, **kwargs: Any) -> seqio.Task:
    """seqio.TaskRegistry.add, replacing an existing task of the same name, recording its metadata."""
    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    ORIGINS[name] = origin
    if family:
        FAMILIES[name] = family
    if num_examples:
        NUM_EXAMPLES[name] = dict(num_examples)
    return seqio.TaskRegistry.add(name, **kwargs)


def add_mixture(name: str, tasks: Sequence[Any], *, origin: str, **kwargs: Any) -> seqio.Mixture:
    """seqio.MixtureRegistry.add, replacing an existing mixture of the same name."""
    if name in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.remove(name)
    ORIGINS[name] = origin
    return seqio.MixtureRegistry.add(name, tasks, **kwargs)


def all_names() -> list[str]:
    """Every registered task and mixture name, sorted."""
    return sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))
