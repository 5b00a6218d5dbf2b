"""Data sources of ExMIX rows: TFDS (default), Hugging Face, or a manual download.

Manual rows follow TFDS's manual_dir convention: the files go to
``<manual_dir>/<task>/<split>.jsonl`` (one JSON object per line whose keys are the row's declared
fields; nested dicts for dotted paths), where manual_dir is ``$EXT5_MANUAL_DIR`` or else
``$TFDS_DATA_DIR/downloads/manual`` (default ``~/tensorflow_datasets/downloads/manual``), as
`tfds.download.DownloadConfig(manual_dir=...)` would use. Nothing is read at registration.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import seqio
import tensorflow as tf

from ext5.tasks.exmix.catalog import Row

MANUAL_DIR_ENV = "EXT5_MANUAL_DIR"


def manual_dir() -> str:
    """The manual-download root (TFDS convention)."""
    if os.environ.get(MANUAL_DIR_ENV):
        return os.environ[MANUAL_DIR_ENV]
    data_dir = os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")
    return os.path.join(data_dir, "downloads", "manual")


def _column(values: list) -> Any:
    """Python values of one field across records -> tensor / ragged / nested dict of those."""
    first = next((v for v in values if v is not None), "")
    if isinstance(first, Mapping):
        keys = sorted({k for v in values for k in (v or {})})
        return {k: _column([(v or {}).get(k) for v in values]) for k in keys}
    if isinstance(first, list):
        inner = next((x for v in values for x in (v or []) if x is not None), "")
        if isinstance(inner, Mapping):  # list of dicts -> dict of lists (TFDS convention)
            keys = sorted({k for v in values for x in (v or []) for k in x})
            return {k: _column([[x.get(k) for x in (v or [])] for v in values]) for k in keys}
        dtype = tf.string if isinstance(inner, str) else None
        return tf.ragged.constant([v or [] for v in values], dtype=dtype)
    if isinstance(first, str):
        return tf.constant(["" if v is None else v for v in values])
    return tf.constant([first if v is None else v for v in values])


def records_to_dataset(records: Sequence[Mapping[str, Any]]) -> tf.data.Dataset:
    """JSON-like records (same keys) -> tf.data.Dataset of (nested) tensors."""
    if not records:
        raise ValueError("no records")
    keys = sorted({k for r in records for k in r})
    return tf.data.Dataset.from_tensor_slices(
        {k: _column([r.get(k) for r in records]) for k in keys})


class ManualJsonlSource(seqio.DataSource):
    """JSON Lines files a user downloaded and converted: <manual_dir>/<task>/<split>.jsonl."""

    def __init__(self, row: Row):
        self.row = row
        self._split_files = row.splits
        super().__init__(splits=tuple(self._split_files),
                         num_input_examples={"train": row.num_train_examples})

    def path(self, split: str) -> str:
        return os.path.join(manual_dir(), self.row.task, f"{self._split_files[split]}.jsonl")

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return False

    def list_shards(self, split: str) -> Sequence[str]:
        return [self.path(split)]

    def get_dataset(self, split: str = "train", shuffle: bool = True, seed: int | None = None,
                    shard_info: seqio.ShardInfo | None = None, *,
                    sequence_length: Mapping[str, int] | None = None, use_cached: bool = False,
                    num_epochs: int | None = 1) -> tf.data.Dataset:
        del shuffle, seed, sequence_length, use_cached  # the Task's buffer shuffles
        path = self.path(split)
        if not os.path.exists(path):
            fields = ", ".join(self.row.inputs + (self.row.targets,))
            raise FileNotFoundError(
                f"{self.row.task} needs a manual download: get {self.row.manual_download}, "
                f"write {path} as JSON Lines with fields {fields} "
                f"(manual_dir: set ${MANUAL_DIR_ENV} or TFDS_DATA_DIR)")
        with open(path, encoding="utf-8") as f:
            records = [json.loads(line) for line in f if line.strip()]
        if shard_info is not None and shard_info.num_shards > 1:
            records = records[shard_info.index::shard_info.num_shards]
        ds = records_to_dataset(records)
        return ds.repeat(num_epochs) if num_epochs != 1 else ds


def data_source(row: Row) -> seqio.DataSource:
    """The seqio DataSource of a catalogue row (lazy: nothing is read here)."""
    sizes = {"train": row.num_train_examples}
    if row.source == "tfds":
        from ext5.tasks.c4 import PreparedTfdsSource  # c4 holds the shared TFDS source
        return PreparedTfdsSource(tfds_name=row.tfds_name, splits=row.splits)
    if row.source == "hf":
        from ext5.data.sources import hf_data_source
        return hf_data_source(row.hf_id, row.hf_config or None, splits=row.splits,
                              num_input_examples=sizes)
    return ManualJsonlSource(row)
