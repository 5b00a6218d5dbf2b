"""The batch-source protocol the trainer reads host batches through (TF-free: any data path can satisfy it).

A batch source is an iterator of this host's batches (dicts of numpy arrays in the packed or unpacked
EncDecFeatureConverter layout, `host_batch_size` rows each) that can report and restore its position:

  state(directory)          -> a JSON-able dict, stored in the checkpoint; the source may also write files
                               under `directory` (a per-host folder of that checkpoint) to resume from.
  restore(state, directory) -> continue exactly after the batch the `state` was taken at.
  input_len, target_len     -> the (packed) feature lengths its batches have.

The trainer takes `state` only when it writes a checkpoint, and calls `restore` before the first batch.
"""
from __future__ import annotations

from typing import Any, Iterator, Mapping, Protocol, runtime_checkable

import numpy as np

HostBatch = Mapping[str, np.ndarray]


@runtime_checkable
class BatchSource(Protocol):
    """What `ext5.train.trainer.train(batch_source=...)` needs from a data source."""

    input_len: int
    target_len: int

    def __iter__(self) -> Iterator[HostBatch]: ...

    def __next__(self) -> HostBatch: ...

    def state(self, directory: str) -> dict[str, Any]: ...

    def restore(self, state: dict[str, Any], directory: str) -> None: ...


def check_batch_source(source: Any) -> BatchSource:
    """`source` if it satisfies BatchSource, else a one-line TypeError naming what is missing."""
    missing = [name for name in ("__next__", "state", "restore", "input_len", "target_len")
               if not hasattr(source, name)]
    if missing:
        raise TypeError(f"batch_source {type(source).__name__} lacks {', '.join(missing)}; implement "
                        f"ext5.data.source.BatchSource (__next__, state(directory), restore(state, directory), "
                        f"input_len, target_len)")
    return source
