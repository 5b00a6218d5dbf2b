"""What a registered mixture or task is made of, without reading any data: tasks, effective rates,
families, example counts and where each task was registered.

Used by `ext5 inspect` (the rates table) and `ext5 experiment transfer` (grouping tasks by family).

Family of a task, first that answers:
  1. `ext5.data.registry.FAMILIES[name]`: registry metadata (`registry.add_task(..., family=...)`),
     the general way: a task module states its family in the row that declares the task.
  2. the task's name with its collection prefix and any `_score_eval` suffix removed
     (`local_nli`, `local_nli_score_eval` -> `nli`), a fallback that is right for the embedded local
     tasks, whose names are `local_<family>[_score_eval]`.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import seqio

from ext5.data import registry

# Stripped by the name fallback (`<prefix><family><suffix>`); rank-classification twins share a family.
_FALLBACK_PREFIXES = ("local_",)
_FALLBACK_SUFFIXES = ("_score_eval",)


@dataclasses.dataclass(frozen=True)
class TaskRow:
    """One task of a mixture: its effective rate (nested mixtures flattened) and metadata."""

    task: str
    family: str
    examples: int | None  # None: unknown without reading the data
    rate: float
    share: float  # fraction of the mixture, the rows' shares sum to 1
    origin: str


def family_of(task_name: str) -> str:
    """The task's family: registry metadata if set, else the name with its collection prefix removed."""
    families: Mapping[str, str] = registry.FAMILIES
    if families.get(task_name):
        return str(families[task_name])
    for suffix in _FALLBACK_SUFFIXES:
        if task_name.endswith(suffix) and len(task_name) > len(suffix):
            base = task_name[: -len(suffix)]
            if families.get(base):
                return str(families[base])
            task_name = base
    for prefix in _FALLBACK_PREFIXES:
        if task_name.startswith(prefix) and len(task_name) > len(prefix):
            return task_name[len(prefix):]
    return "other"


def num_examples(task: seqio.Task, split: str = "train") -> int | None:
    """Number of examples in `split` if known without reading data (registry metadata or the source's
    declared counts); None otherwise.

    TFDS sources are not asked: seqio reads their counts from the builder's dataset_info, which is
    remote (or absent) for data that was not prepared, so asking could download or hang.
    """
    known: Mapping[str, Mapping[str, int]] = registry.NUM_EXAMPLES
    if task.name in known:
        n = known[task.name].get(split)
        return None if n is None else int(n)
    source = task.source
    if isinstance(source, seqio.TfdsDataSource):
        return None
    if split not in source.splits:
        return None
    try:
        n = source.num_input_examples(split)
    except Exception:  # noqa: BLE001  a source that cannot count offline: unknown, not fatal
        return None
    return None if n is None else int(n)


def task_rates(provider: seqio.DatasetProviderBase) -> dict[str, float]:
    """{task name: effective rate}: a task is rate 1; a mixture's nested mixtures are flattened as
    seqio samples them (sub-mixture rate x task's share of it)."""
    if isinstance(provider, seqio.Task):
        return {provider.name: 1.0}
    try:
        return {t.name: float(provider.get_rate(t)) for t in provider.tasks}
    except Exception as e:  # noqa: BLE001  callable rates may need a count the source cannot give
        raise ValueError(f"cannot compute the rates of mixture '{provider.name}': "
                         f"{' '.join(str(e).split())[:300]}") from None


def rows(provider: seqio.DatasetProviderBase, split: str = "train") -> list[TaskRow]:
    """The rates table of a mixture or task, sorted by share (largest first), then name."""
    from ext5.data import mixing
    rates = task_rates(provider)
    fractions = mixing.shares(rates)
    out = []
    for name, rate in rates.items():
        task = seqio.get_mixture_or_task(name)
        out.append(TaskRow(task=name, family=family_of(name), examples=num_examples(task, split),
                           rate=rate, share=fractions[name], origin=registry.ORIGINS.get(name, "?")))
    return sorted(out, key=lambda r: (-r.share, r.task))


def by_family(table: list[TaskRow]) -> dict[str, list[TaskRow]]:
    """Rows grouped by family, families sorted by total share (largest first), then name."""
    groups: dict[str, list[TaskRow]] = {}
    for r in table:
        groups.setdefault(r.family, []).append(r)
    return dict(sorted(groups.items(), key=lambda kv: (-sum(r.share for r in kv[1]), kv[0])))
