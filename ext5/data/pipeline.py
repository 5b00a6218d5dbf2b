"""Mixture/task -> per-host numpy batches in seqio's packed EncDecFeatureConverter format.

    seqio get_dataset (rates, shard, shuffle, trim) -> numpy examples -> packing -> host batches

Determinism: with a fixed seed, seqio's shuffles, mixture sampling and random preprocessors
(map seeds) are all seeded, and packing is deterministic, so the same arguments give the same
batch stream. The data position is the number of batches emitted; restore() rebuilds the
stream and fast-forwards to it (cost linear in the position, no data-state files to keep).
"""
from __future__ import annotations

import difflib
import hashlib
import json
from typing import Any, Iterator, Mapping

import numpy as np
import seqio

from ext5.data import packing

STATE_VERSION = 1


class UnknownTaskError(ValueError):
    """A mixture or task name that is not registered with seqio."""


def unknown_name_error(name: str) -> UnknownTaskError:
    """One-line error for an unregistered name, with near-miss suggestions."""
    names = sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    return UnknownTaskError(
        f"mixture or task '{name}' is not registered (data not available in this build); registered names "
        f"like it: {', '.join(close) if close else '(none)'}; {len(names)} names are registered by "
        f"`import ext5.tasks`; for your own tasks pass --module_import=your.tasks_module")


def check_registered(name: str) -> None:
    """Raise UnknownTaskError unless `name` is a registered seqio task or mixture."""
    if name not in seqio.TaskRegistry.names() and name not in seqio.MixtureRegistry.names():
        raise unknown_name_error(name)


def get_provider(name: str) -> seqio.DatasetProviderBase:
    """seqio.get_mixture_or_task with ext5's one-line error for unknown names."""
    check_registered(name)
    return seqio.get_mixture_or_task(name)


class HostBatchIterator:
    """Iterator of host batches: dict[str, np.ndarray] int32 [host_batch_size, length].

    Packed batches carry all eight seqio packed features; unpacked ones carry
    encoder_input_tokens, decoder_target_tokens, decoder_input_tokens, decoder_loss_weights.
    With num_epochs set, the stream ends (StopIteration) after the last example; the last
    batch is completed with all-padding rows.
    """

    def __init__(self, mixture_or_task_name: str, task_feature_lengths: dict[str, int],
                 host_batch_size: int, *, split: str = "train", shuffle: bool = True,
                 seed: int = 0, shard_index: int = 0, num_shards: int = 1, pack: bool = True,
                 use_cached: bool = False, num_epochs: int | None = None,
                 pack_window: int = 512):
        missing = {"inputs", "targets"} - set(task_feature_lengths)
        if missing:
            raise ValueError(f"task_feature_lengths needs 'inputs' and 'targets'; got "
                             f"{dict(task_feature_lengths)}")
        if host_batch_size < 1 or not 0 <= shard_index < num_shards:
            raise ValueError(f"bad host_batch_size={host_batch_size} or shard "
                             f"{shard_index}/{num_shards}")
        self._provider = get_provider(mixture_or_task_name)
        self.args: dict[str, Any] = dict(
            mixture_or_task_name=mixture_or_task_name,
            task_feature_lengths={k: int(v) for k, v in sorted(task_feature_lengths.items())},
            host_batch_size=int(host_batch_size), split=split, shuffle=bool(shuffle),
            seed=int(seed), shard_index=int(shard_index), num_shards=int(num_shards),
            pack=bool(pack), use_cached=bool(use_cached), num_epochs=num_epochs,
            pack_window=int(pack_window))
        self._batches = 0
        self._stream = self._make_stream()

    # -- stream
    def _examples(self) -> Iterator[dict[str, np.ndarray]]:
        a = self.args
        lengths = {k: a["task_feature_lengths"][k] for k in ("inputs", "targets")}
        ds = self._provider.get_dataset(
            sequence_length=lengths, split=a["split"], shuffle=a["shuffle"], seed=a["seed"],
            shard_info=seqio.ShardInfo(index=a["shard_index"], num_shards=a["num_shards"]),
            num_epochs=a["num_epochs"], use_cached=a["use_cached"])
        # Keep only the model's features (tasks may pass through e.g. answers/pretokenized).
        ds = ds.map(lambda ex: {"inputs": ex["inputs"], "targets": ex["targets"]})
        return ds.as_numpy_iterator()

    def _make_stream(self) -> Iterator[dict[str, np.ndarray]]:
        a = self.args
        lengths = a["task_feature_lengths"]
        rows = (packing.pack(self._examples(), lengths, window=a["pack_window"]) if a["pack"]
                else packing.pad(self._examples(), lengths))
        return packing.batch_rows(rows, a["host_batch_size"])

    def __iter__(self) -> "HostBatchIterator":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self._stream)
        self._batches += 1
        return batch

    # -- data position
    @property
    def fingerprint(self) -> str:
        """Hash of the arguments that determine the stream."""
        blob = json.dumps(self.args, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def state(self) -> dict:
        """JSON-serialisable data position (batches emitted so far + args fingerprint)."""
        return {"version": STATE_VERSION, "batches_emitted": self._batches,
                "fingerprint": self.fingerprint, "mixture_or_task_name":
                self.args["mixture_or_task_name"]}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continues exactly after the batch at which `state` was taken.

        Raises ValueError if the state came from a differently configured iterator (other
        mixture, lengths, batch size, seed, shard, ...): its position would mean other data.
        """
        if state.get("fingerprint") != self.fingerprint:
            raise ValueError(
                f"data state fingerprint {state.get('fingerprint')} (from "
                f"'{state.get('mixture_or_task_name')}') does not match this iterator's "
                f"{self.fingerprint}; the data arguments changed since the state was saved")
        target = int(state["batches_emitted"])
        self._stream = self._make_stream()
        self._batches = 0
        for _ in range(target):
            try:
                next(self._stream)
            except StopIteration:
                raise ValueError(f"data state position {target} is past the end of the "
                                 f"stream ({self._batches} batches)") from None
            self._batches += 1
