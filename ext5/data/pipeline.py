"""Mixture/task -> per-host numpy batches in seqio's packed EncDecFeatureConverter format (the tf.data path).

Cached mixtures with ArrayRecord caches read through ext5/data/grain_pipeline.py instead (same batches' format,
same packer); ext5/data/batch_sources.py picks the path.

    seqio get_dataset (rates, shard, shuffle, trim) -> chunks of examples -> best-fit packing
    (numpy) -> host batches

Determinism: with a fixed seed, seqio's shuffles, mixture sampling and random preprocessors (map
seeds) are all seeded and packing is deterministic, so the batch stream is a function of
(arguments, seed, host shard) and batch k of it is the batch of training step k.

Resumable position (design choice): the data position is the tf.data iterator's own checkpoint
(tf.train.Checkpoint of the iterator: shuffle buffers, mixture-sampling RNG state, per-task
positions; no pickle) plus the packer's Python state (buffered window, carried rows, rows not
yet batched) as an int-array .npz. `state(directory)` writes both there, atomically (tmp dir +
rename); `restore(state, directory)` reads them back, so resuming costs one read of the buffers
(local_default: ~9 MB, ~0.3 s to write, ~0.5 s to read) instead of regenerating every batch
before the position. Datasets with ops tf.data cannot checkpoint (py_function, from_generator)
and states saved without a directory fall back to rebuilding the stream and fast-forwarding to
the position (exact, but linear in it), with a warning.
"""
from __future__ import annotations

import difflib
import hashlib
import io
import json
import logging
import os
import uuid
from typing import Any, Mapping

import numpy as np
import seqio
import tensorflow as tf

from ext5.data import packing
from ext5.errors import UnknownTaskError  # defined TF-free so the CLI can catch it cheaply

STATE_VERSION = 2
_PACKER_FILE = "host_state.npz"
_TF_PREFIX = "tf_iterator/ckpt"
_CHUNK = 64  # examples handed from tf.data to the packer at a time

log = logging.getLogger(__name__)


def unknown_name_error(name: str) -> UnknownTaskError:
    """One-line error for an unregistered name, with near-miss suggestions."""
    names = sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    return UnknownTaskError(
        f"mixture or task '{name}' is not registered; registered names "
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


class _Rows:
    """FIFO of packed/padded rows held as blocks; take(n) slices n rows off the front."""

    def __init__(self):
        self.blocks: list[packing.Block] = []
        self.count = 0

    def put(self, block: packing.Block | None) -> None:
        if block is not None and len(block["encoder_input_tokens"]):
            self.blocks.append(block)
            self.count += len(block["encoder_input_tokens"])

    def take(self, n: int) -> packing.Block:
        merged = ({k: np.concatenate([b[k] for b in self.blocks]) for k in self.blocks[0]}
                  if len(self.blocks) > 1 else self.blocks[0])
        out = {k: v[:n] for k, v in merged.items()}
        rest = {k: v[n:] for k, v in merged.items()}
        self.blocks, self.count = [], 0
        self.put(rest)
        return out

    def state(self) -> dict[str, np.ndarray]:
        if not self.blocks:
            return {}
        return {f"rows/{k}": np.concatenate([b[k] for b in self.blocks]) for k in self.blocks[0]}

    def restore(self, arrays: Mapping[str, np.ndarray]) -> None:
        self.blocks, self.count = [], 0
        block = {k[len("rows/"):]: np.asarray(v, np.int32) for k, v in arrays.items()
                 if k.startswith("rows/")}
        if block:
            self.put(block)


class HostBatchIterator:
    """Iterator of host batches: dict[str, np.ndarray] int32 [host_batch_size, length].

    Packed batches carry all eight seqio packed features; unpacked ones carry
    encoder_input_tokens, decoder_target_tokens, decoder_input_tokens, decoder_loss_weights.
    packer="best_fit" (default) packs with ext5's best-fit packer; "seqio" uses
    seqio.EncDecFeatureConverter(pack=True) unchanged (greedy packing). With num_epochs set,
    the stream ends (StopIteration) after the last example; the last batch is completed with
    all-padding rows.
    """

    def __init__(self, mixture_or_task_name: str, task_feature_lengths: dict[str, int],
                 host_batch_size: int, *, split: str = "train", shuffle: bool = True,
                 seed: int = 0, shard_index: int = 0, num_shards: int = 1, pack: bool = True,
                 use_cached: bool = False, num_epochs: int | None = None,
                 pack_window: int = 512, packer: str = "best_fit"):
        missing = {"inputs", "targets"} - set(task_feature_lengths)
        if missing:
            raise ValueError(f"task_feature_lengths needs 'inputs' and 'targets'; got "
                             f"{dict(task_feature_lengths)}")
        if host_batch_size < 1 or not 0 <= shard_index < num_shards:
            raise ValueError(f"bad host_batch_size={host_batch_size} or shard "
                             f"{shard_index}/{num_shards}")
        packing.check_packer(packer)
        self._provider = get_provider(mixture_or_task_name)
        self.args: dict[str, Any] = dict(
            mixture_or_task_name=mixture_or_task_name,
            task_feature_lengths={k: int(v) for k, v in sorted(task_feature_lengths.items())},
            host_batch_size=int(host_batch_size), split=split, shuffle=bool(shuffle),
            seed=int(seed), shard_index=int(shard_index), num_shards=int(num_shards),
            pack=bool(pack), use_cached=bool(use_cached), num_epochs=num_epochs,
            pack_window=int(pack_window))
        if packer != "best_fit":  # keep fingerprints of best-fit streams as they were
            self.args["packer"] = packer
        self._reset()

    # -- stream
    @property
    def input_len(self) -> int:
        return self.args["task_feature_lengths"]["inputs"]

    @property
    def target_len(self) -> int:
        return self.args["task_feature_lengths"]["targets"]

    @property
    def _lengths(self) -> dict[str, int]:
        return {k: self.args["task_feature_lengths"][k] for k in ("inputs", "targets")}

    @property
    def _mode(self) -> str:
        return "pad" if not self.args["pack"] else self.args.get("packer", "best_fit")

    def _dataset(self) -> tf.data.Dataset:
        a, lengths = self.args, self._lengths
        ds = self._provider.get_dataset(
            sequence_length=lengths, split=a["split"], shuffle=a["shuffle"], seed=a["seed"],
            shard_info=seqio.ShardInfo(index=a["shard_index"], num_shards=a["num_shards"]),
            num_epochs=a["num_epochs"], use_cached=a["use_cached"])
        # Keep only the model's features (tasks may pass through e.g. answers/pretokenized).
        ds = ds.map(lambda ex: {"inputs": ex["inputs"], "targets": ex["targets"]})
        if self._mode == "seqio":
            return seqio.EncDecFeatureConverter(pack=True)(ds, lengths).batch(_CHUNK)

        def trim(ex):
            inp, tgt = ex["inputs"][:lengths["inputs"]], ex["targets"][:lengths["targets"]]
            return {"inputs": inp, "targets": tgt, "n_in": tf.size(inp), "n_tgt": tf.size(tgt)}

        # Hand examples to numpy in chunks: one Python round trip per example costs more than
        # packing it.
        return ds.map(trim).padded_batch(
            _CHUNK, padded_shapes={"inputs": [None], "targets": [None], "n_in": [], "n_tgt": []})

    def _reset(self) -> None:
        # Built on first use (building the dataset takes seconds); an iterator nothing was read from is kept.
        if getattr(self, "_pulled", True):
            self._it_cache: Any = None
        self._pulled = False
        self._packer = packing.BestFitPacker(*self._lengths.values(), window=self.args["pack_window"])
        self._rows = _Rows()
        self._exhausted = False
        self._batches = 0

    @property
    def _it(self) -> Any:
        if self._it_cache is None:
            self._it_cache = iter(self._dataset())
        return self._it_cache

    def open(self) -> "HostBatchIterator":
        """Builds the tf.data pipeline now, so that missing data fails before the model is initialised."""
        _ = self._it
        return self

    def _pull(self) -> None:
        """Moves one chunk from tf.data through the packer into the row queue."""
        self._pulled = True
        try:
            chunk = {k: v.numpy() for k, v in next(self._it).items()}
        except StopIteration:
            self._exhausted = True
            if self._mode == "best_fit":
                self._rows.put(self._packer.finish())
            return
        if self._mode == "seqio":
            self._rows.put({k: chunk[k].astype(np.int32) for k in packing.PACKED_FEATURES})
            return
        lengths = self._lengths
        examples = ({"inputs": i[:a], "targets": t[:b]} for i, t, a, b in
                    zip(chunk["inputs"], chunk["targets"], chunk["n_in"], chunk["n_tgt"]))
        if self._mode == "pad":
            rows = [packing.unpacked_row(ex, lengths["inputs"], lengths["targets"]) for ex in examples]
            self._rows.put({k: np.stack([r[k] for r in rows]) for k in rows[0]})
            return
        for ex in examples:
            self._rows.put(self._packer.add(ex["inputs"], ex["targets"]))

    def __iter__(self) -> "HostBatchIterator":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        bs = self.args["host_batch_size"]
        while self._rows.count < bs and not self._exhausted:
            self._pull()
        if self._rows.count == 0:
            raise StopIteration
        batch = self._rows.take(bs)
        n = len(batch["encoder_input_tokens"])
        if n < bs:  # end of a finite stream: complete with all-padding rows
            pad = packing.zero_rows(batch, bs - n)
            batch = {k: np.concatenate([v, pad[k]]) for k, v in batch.items()}
        self._batches += 1
        return batch

    # -- data position
    @property
    def fingerprint(self) -> str:
        """Hash of the arguments that determine the stream."""
        blob = json.dumps(self.args, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def state(self, directory: str | None = None) -> dict:
        """JSON-serialisable data position; with `directory`, also the files that resume it fast.

        The files (tf.data iterator checkpoint + packer arrays) are written to a temporary
        directory renamed to `directory` when complete. If this dataset cannot be checkpointed
        by tf.data, no files are written and restore() will fast-forward instead.
        """
        out = {"version": STATE_VERSION, "batches_emitted": self._batches,
               "fingerprint": self.fingerprint,
               "mixture_or_task_name": self.args["mixture_or_task_name"], "files": False}
        if directory is None:
            return out
        tmp = f"{directory.rstrip('/')}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            tf.io.gfile.makedirs(tmp)
            tf.train.Checkpoint(iterator=self._it).write(os.path.join(tmp, _TF_PREFIX))
            arrays = {**self._packer.state(), **self._rows.state(),
                      "position": np.array([self._batches, int(self._exhausted)], np.int64)}
            buf = io.BytesIO()  # np.savez seeks; GFile (also for gs://) may not
            np.savez(buf, **arrays)
            with tf.io.gfile.GFile(os.path.join(tmp, _PACKER_FILE), "wb") as f:
                f.write(buf.getvalue())
            if tf.io.gfile.exists(directory):
                tf.io.gfile.rmtree(directory)
            tf.io.gfile.rename(tmp, directory)
            out["files"] = True
        except (tf.errors.OpError, ValueError) as e:
            # e.g. "EagerPyFunc is stateful": a source tf.data cannot checkpoint.
            log.warning("ext5: the data position at batch %d is saved as a count only (restore will "
                        "fast-forward): tf.data cannot checkpoint this dataset: %s",
                        self._batches, str(e).splitlines()[0][:300])
            if tf.io.gfile.exists(tmp):
                tf.io.gfile.rmtree(tmp)
        return out

    def restore(self, state: Mapping[str, Any], directory: str | None = None) -> None:
        """Continues exactly after the batch at which `state` was taken.

        Reads the files state(directory) wrote when there are any; otherwise (or if they are
        unreadable, with a warning) rebuilds the stream and fast-forwards to the position.
        Raises ValueError if the state came from a differently configured iterator (other
        mixture, lengths, batch size, seed, shard, packer...): its position would mean other data.
        """
        if state.get("fingerprint") != self.fingerprint:
            raise ValueError(
                f"data state fingerprint {state.get('fingerprint')} (from "
                f"'{state.get('mixture_or_task_name')}') does not match this iterator's "
                f"{self.fingerprint}; the data arguments changed since the state was saved")
        target = int(state["batches_emitted"])
        if state.get("files") and directory is not None:
            try:
                self._restore_files(directory, target)
                return
            except (tf.errors.OpError, ValueError, KeyError, OSError, AssertionError) as e:
                log.warning("ext5: data position files in %s are unreadable (%s); fast-forwarding "
                            "%d batches instead", directory, str(e).splitlines()[0][:300], target)
        self._fast_forward(target)

    def _restore_files(self, directory: str, target: int) -> None:
        self._reset()
        with tf.io.gfile.GFile(os.path.join(directory, _PACKER_FILE), "rb") as f:
            arrays = dict(np.load(io.BytesIO(f.read()), allow_pickle=False))
        batches, exhausted = (int(x) for x in arrays["position"])
        if batches != target:
            raise ValueError(f"files hold position {batches}, the checkpoint says {target}")
        self._pulled = True  # a failed read may leave the iterator half-restored: never reuse it
        status = tf.train.Checkpoint(iterator=self._it).read(os.path.join(directory, _TF_PREFIX))
        status.assert_consumed()
        self._packer.restore(arrays)
        self._rows.restore(arrays)
        self._exhausted, self._batches = bool(exhausted), batches

    def _fast_forward(self, target: int) -> None:
        self._reset()
        for _ in range(target):
            try:
                next(self)
            except StopIteration:
                raise ValueError(f"data state position {target} is past the end of the "
                                 f"stream ({self._batches} batches)") from None
