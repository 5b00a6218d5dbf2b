"""Cached mixtures by index: ArrayRecord tasks -> rates -> global shuffle -> global best-fit rows -> host slice.

No TensorFlow. The whole stream is a function of (data, seed) and of nothing about the hosts:

  global example i  --MixtureIndex-->  (task t, example r of t)            random access, vectorised
  examples 0, 1, 2, ... in windows  --BestFitPlanner on cached lengths-->  global rows of example indices
  global batch k = the next `global_batch_size` rows; host h of H reads and builds rows
  [k*B + h*B/H, k*B + (h+1)*B/H) only (its tokens: one ArrayRecord read per example).

Every host plans every global row from the lengths files (8 bytes per example, no tokens), so the global
batch is the same for any number of hosts, and the data position is a few integers plus the packer's
carry-over as example indices (GrainBatchSource.state, docs/data_at_scale.md). Worker processes (grain's
mp_prefetch) each plan the same rows and build every P-th batch.
"""
from __future__ import annotations

import collections
import hashlib
import json
import math
import sys
import threading
from typing import Any, Mapping, Sequence

import numpy as np

from ext5.data import packing

STATE_KIND = "ext5-grain-v1"
_C = np.uint64(0x9E3779B97F4A7C15)


# ------------------------------------------------------------------ random-access permutations
def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser (uint64 -> uint64, wrapping)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def hash_seed(*parts: Any) -> np.ndarray:
    """A 64-bit key from integers or integer arrays (seed, epoch, task...), elementwise and vectorised; the
    same in every process and on every platform."""
    with np.errstate(over="ignore"):
        h = np.uint64(0x243F6A8885A308D3)
        for p in parts:
            h = _mix64(h ^ (np.asarray(p).astype(np.uint64) * _C + np.uint64(1)))
    return h


def permute(x: Any, n: Any, key: Any, rounds: int = 4) -> np.ndarray:
    """Elementwise: the image of x (0 <= x < n) under the pseudo-random permutation of [0, n) chosen by key.

    A balanced Feistel network on the smallest even number of bits covering n, cycle-walked back into
    [0, n): a bijection for every (n, key), computed for a whole array at once (n and key may vary per
    element), so a window of examples costs a few numpy passes instead of one call per index.
    """
    x, n, key = np.broadcast_arrays(np.asarray(x, np.uint64), np.asarray(n, np.uint64),
                                    np.asarray(key, np.uint64))
    n_minus = np.maximum(n.astype(np.float64) - 1, 1)
    bits = np.floor(np.log2(n_minus)).astype(np.uint64) + np.uint64(1)
    half = (bits + np.uint64(1)) // np.uint64(2)
    mask = (np.uint64(1) << half) - np.uint64(1)

    def enc(v, half, mask, key):
        left, right = v >> half, v & mask
        for r in range(rounds):
            f = _mix64(right ^ key ^ (np.uint64(r + 1) * _C)) & mask
            left, right = right, left ^ f
        return (left << half) | right

    with np.errstate(over="ignore"):
        y = enc(x, half, mask, key)
        bad = np.nonzero(y >= n)[0]
        while len(bad):
            y[bad] = enc(y[bad], half[bad], mask[bad], key[bad])
            bad = bad[y[bad] >= n[bad]]
    return y.astype(np.int64)


class MixtureIndex:
    """Global example index -> (task, example of that task), by the task rates; random access.

    A mixture epoch is M slots, task t owning c_t ~ M * rate_t of them (largest remainders; every task with a
    positive rate owns at least one). Epoch e's slots are permuted by a key of (seed, e): slot s belongs to
    the task whose range holds s, and is that task's draw number e * c_t + (s - start_t). A task's draws walk
    through its examples in a permutation keyed by (seed, task, pass), a new one on every pass over the task.
    Rates are therefore exact over each epoch, the order is a global shuffle per epoch, and no per-task
    position needs saving: the global index is the whole position.
    """

    def __init__(self, sizes: Sequence[int], rates: Sequence[float], seed: int, *, min_epoch: int = 0,
                 shuffle: bool = True):
        sizes = np.asarray(sizes, np.int64)
        p = np.asarray(rates, np.float64)
        if len(sizes) != len(p) or not len(p) or (p < 0).any() or not np.isfinite(p).all() or p.sum() <= 0:
            raise ValueError(f"bad mixture rates {list(p)} for {len(sizes)} tasks")
        if (sizes[p > 0] <= 0).any():
            raise ValueError("a task with a positive rate has no examples")
        p = p / p.sum()
        positive = p[p > 0]
        # One slot per cached example (examples-proportional rates then hold every example once per epoch), and
        # enough that the smallest rate gets >= 20 slots, so no rate is off by more than 5% by rounding.
        m = int(max(sizes.sum(), min_epoch, math.ceil(20 / positive.min()), len(p)))
        m = min(m, 1 << 40)
        raw = p * m
        counts = np.floor(raw).astype(np.int64)
        counts[(p > 0) & (counts == 0)] = 1
        short = m - int(counts.sum())
        if short > 0:
            order = np.argsort(-(raw - np.floor(raw)), kind="stable")
            counts[order[:short]] += 1
        m = int(counts.sum())
        self.sizes, self.counts, self.epoch_size, self.seed = sizes, counts, m, int(seed)
        self.shuffle = bool(shuffle)
        self.starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)

    def locate(self, indices: Any) -> tuple[np.ndarray, np.ndarray]:
        """(task numbers, example indices within the tasks) of the global examples `indices` (an int array)."""
        i = np.asarray(indices, np.int64)
        m = self.epoch_size
        epoch = i // m
        slot = permute(i % m, m, hash_seed(self.seed, 0, epoch)) if self.shuffle else i % m
        task = np.searchsorted(self.starts, slot, side="right") - 1
        draw = epoch * self.counts[task] + slot - self.starts[task]
        n = self.sizes[task]
        if not self.shuffle:
            return task, draw % n
        return task, permute(draw % n, n, hash_seed(self.seed, 1, task, draw // n))


# ------------------------------------------------------------------ the plan: global rows
class _Plan:
    """The global row stream (rows of global example indices), planned from lengths alone."""

    def __init__(self, index: MixtureIndex, lengths: Sequence[np.ndarray], input_len: int, target_len: int,
                 global_batch_size: int, pack: bool, window: int):
        self.index, self.lengths = index, lengths
        self.batch, self.pack, self.window = int(global_batch_size), bool(pack), int(window)
        self.planner = packing.BestFitPlanner(input_len, target_len, window=window)
        self.next_example = 0
        self.rows: collections.deque[list[int]] = collections.deque()
        self.batches = 0

    def _window(self) -> None:
        start, n = self.next_example, self.window
        task, ex = self.index.locate(np.arange(start, start + n))
        self.next_example += n
        if not self.pack:
            self.rows.extend([start + j] for j in range(n))
            return
        lens = np.empty((n, 2), np.int64)
        for t in np.unique(task).tolist():
            sel = task == t
            lens[sel] = self.lengths[t][ex[sel]]
        for j, (a, b) in enumerate(lens.tolist()):
            out = self.planner.add(start + j, a, b)
            if out:
                self.rows.extend(out)

    def next_batch(self) -> list[list[int]]:
        """The next global batch: `global_batch_size` rows of global example indices."""
        while len(self.rows) < self.batch:
            self._window()
        self.batches += 1
        return [self.rows.popleft() for _ in range(self.batch)]

    def snapshot(self) -> dict[str, Any]:
        return {"batches": self.batches, "next_example": self.next_example,
                "packer": self.planner.snapshot(), "rows": [list(r) for r in self.rows]}

    def load(self, snap: Mapping[str, Any]) -> None:
        self.batches, self.next_example = int(snap["batches"]), int(snap["next_example"])
        self.planner.load(snap["packer"])
        self.rows = collections.deque([int(x) for x in r] for r in snap["rows"])


# ------------------------------------------------------------------ the batch source
class GrainBatchSource:
    """This host's batches of a cached mixture: `__next__() -> dict[str, np.ndarray]` in today's format.

    Args:
      tasks: (name, CachedSplit, rate[, eos]) per task (rates as seqio's mixture gives them; 0 drops a task).
        eos: {"inputs"|"targets": (eos_id, after_trim)}, the task's post-cache seqio.preprocessors.append_eos_after_trim
        (after_trim=True) or append_eos (False), applied here in numpy.
      input_len, target_len: task_feature_lengths.
      global_batch_size: rows per global batch (all hosts); this host gets rows [h*B/H, (h+1)*B/H).
      shard_index, num_shards: this host h and the number of hosts H (they do not change the global stream).
      seed: keys the mixture epochs and per-task passes; shuffle=False keeps every order as stored.
      pack: best-fit packing (seqio's packed features) or one example per row (unpacked features).
      pack_window: examples per best-fit round.
      workers: 0 builds batches in this process; P > 0 in P grain worker processes (mp_prefetch).
    """

    def __init__(self, tasks: Sequence[tuple], input_len: int, target_len: int,
                 global_batch_size: int, *, shard_index: int = 0, num_shards: int = 1, seed: int = 0,
                 shuffle: bool = True, pack: bool = True, pack_window: int = 512, workers: int = 0):
        if global_batch_size % num_shards or not 0 <= shard_index < num_shards:
            raise ValueError(f"global batch {global_batch_size} does not split over {num_shards} hosts "
                             f"(host {shard_index})")
        tasks = [t for t in tasks if t[2] > 0]
        if not tasks:
            raise ValueError("no task has a positive mixing rate")
        self.names = [t[0] for t in tasks]
        self.splits = [t[1] for t in tasks]
        self.rates = [float(t[2]) for t in tasks]
        self.eos = [{k: (int(v[0]), bool(v[1])) for k, v in (t[3] if len(t) > 3 else {}).items()} for t in tasks]
        self.input_len, self.target_len = int(input_len), int(target_len)
        self.global_batch_size = int(global_batch_size)
        self.shard_index, self.num_shards = int(shard_index), int(num_shards)
        self.host_batch_size = self.global_batch_size // self.num_shards
        self.seed, self.pack, self.pack_window = int(seed), bool(pack), int(pack_window)
        self.workers = int(workers)
        self.index = MixtureIndex([len(s) for s in self.splits], self.rates, self.seed, shuffle=shuffle)
        self._plan = self._new_plan()
        self._start: dict[str, Any] = self._plan.snapshot()
        self._it: Any = None

    def __getstate__(self) -> dict:
        # Sent to grain worker processes: they rebuild plans and readers themselves.
        return {**self.__dict__, "_plan": None, "_it": None}

    def _new_plan(self) -> _Plan:
        lengths = []
        for s, eos in zip(self.splits, self.eos):
            n = s.lengths()
            if eos:  # token counts after the EOS the tokens will get
                n = np.array(n, np.int64)
                for j, (f, cap) in enumerate((("inputs", self.input_len), ("targets", self.target_len))):
                    if f in eos:
                        n[:, j] = np.minimum(n[:, j], cap - 1) + 1 if eos[f][1] else n[:, j] + 1
            lengths.append(n)
        return _Plan(self.index, lengths, self.input_len, self.target_len,
                     self.global_batch_size, self.pack, self.pack_window)

    def open(self) -> "GrainBatchSource":
        """Checks every shard and lengths file now, so a broken cache fails before the model is built."""
        for s in self.splits:
            s.verify()
            s.lengths()
        return self

    def describe(self) -> str:
        return (f"grain over ArrayRecord: {len(self.names)} cached task(s), global batch {self.global_batch_size} "
                f"rows, host {self.shard_index}/{self.num_shards}, mixture epoch {self.index.epoch_size} examples"
                + (f", {self.workers} worker processes" if self.workers else ""))

    # -- building this host's rows
    def build(self, global_rows: Sequence[Sequence[int]]) -> dict[str, np.ndarray]:
        """This host's slice of a global batch of rows (global example indices) as packed/padded features."""
        lo = self.shard_index * self.host_batch_size
        mine = global_rows[lo:lo + self.host_batch_size]
        flat = [i for r in mine for i in r]
        tokens: dict[int, list[np.ndarray]] = {}
        if flat:
            ids = np.asarray(flat, np.int64)
            task, ex = self.index.locate(ids)
            for t in np.unique(task).tolist():
                sel = np.nonzero(task == t)[0]
                for j, feats in zip(sel.tolist(), self.splits[t].read(ex[sel].tolist())):
                    tokens[flat[j]] = self._post(t, feats)
        il, tl = self.input_len, self.target_len
        if self.pack:
            rows = [[(tokens[i][0][:il], tokens[i][1][:tl]) for i in r] for r in mine]
            return packing.build_block(rows, il, tl)
        rows = [packing.unpacked_row({"inputs": tokens[r[0]][0], "targets": tokens[r[0]][1]}, il, tl)
                for r in mine]
        return {k: np.stack([r[k] for r in rows]) for k in rows[0]}

    def _post(self, t: int, feats: list[np.ndarray]) -> list[np.ndarray]:
        """The task's post-cache EOS, as seqio's append_eos_after_trim / append_eos would add it."""
        eos = self.eos[t]
        if not eos:
            return feats
        out = []
        for f, cap, x in (("inputs", self.input_len, feats[0]), ("targets", self.target_len, feats[1])):
            if f in eos:
                eos_id, after_trim = eos[f]
                x = np.concatenate([x[:cap - 1] if after_trim else x, np.array([eos_id], np.int32)])
            out.append(x)
        return out

    # -- iteration
    def __iter__(self) -> "GrainBatchSource":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        rows = self._plan.next_batch()
        if not self.workers:
            return self.build(rows)
        if self._it is None:
            self._it = self._worker_iterator(self._start)
        # Copied out of grain's shared memory, which is then released.
        return {k: np.array(v) for k, v in next(self._it).items()}

    def _worker_iterator(self, start: Mapping[str, Any]):
        import grain
        from absl import flags
        if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; ext5's CLI parses its own (argparse)
            flags.FLAGS.mark_as_parsed()
        # One reading thread per worker: its plan advances sequentially (_BatchesFrom is also locked).
        ds = grain.MapDataset.source(_BatchesFrom(self, start)).to_iter_dataset(
            grain.ReadOptions(num_threads=1, prefetch_buffer_size=2))
        return iter(ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.workers)))

    # -- data position
    @property
    def fingerprint(self) -> str:
        """Hash of what determines the global stream (not the number of hosts)."""
        blob = json.dumps([self.names, [len(s) for s in self.splits], [f"{r:.12g}" for r in self.rates], self.eos,
                           self.seed, self.index.shuffle, self.input_len, self.target_len,
                           self.global_batch_size, self.pack,
                           self.pack_window, self.index.epoch_size], sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def state(self, directory: str | None = None) -> dict:
        """The data position: the same small JSON on every host (writes no files; `directory` is unused)."""
        return {"kind": STATE_KIND, "fingerprint": self.fingerprint, "num_shards": self.num_shards,
                **self._plan.snapshot()}

    def restore(self, state: Mapping[str, Any], directory: str | None = None) -> None:
        """Continue after the batch at which `state` was taken, on any number of hosts."""
        if state.get("kind") != STATE_KIND:
            raise ValueError(f"the checkpoint's data position is of kind {state.get('kind', 'tf.data')!r}, not "
                             f"{STATE_KIND!r}: it was written by the other pipeline; resume with the same "
                             "DatasetConfig.pipeline and cache")
        if state.get("fingerprint") != self.fingerprint:
            raise ValueError(f"data position fingerprint {state.get('fingerprint')} does not match this "
                             f"pipeline's {self.fingerprint}: the mixture, cache, lengths, seed or global batch "
                             "changed since it was saved")
        self._close_workers()
        self._plan = self._new_plan()
        self._plan.load(state)
        self._start = self._plan.snapshot()

    def _close_workers(self) -> None:
        if self._it is not None and hasattr(self._it, "close"):
            self._it.close()
        self._it = None

    def close(self) -> None:
        self._close_workers()
        for s in self.splits:
            s.close()


class _BatchesFrom:
    """Random-access view (for grain's MapDataset) of a source's host batches from a start position.

    Element j is the host batch `j` batches after the start. Each worker process replans sequentially from the
    start (lengths only), keeping its plan between calls, as its indices increase.
    """

    def __init__(self, source: GrainBatchSource, start: Mapping[str, Any]):
        self.source, self.start = source, dict(start)
        self._plan: _Plan | None = None
        self._done = 0
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        return {"source": self.source, "start": self.start}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["source"], state["start"])

    def __len__(self) -> int:
        return sys.maxsize

    def __getitem__(self, j: int) -> dict[str, np.ndarray]:
        with self._lock:
            return self._get(j)

    def _get(self, j: int) -> dict[str, np.ndarray]:
        if self._plan is None or j < self._done:
            self._plan = self.source._new_plan()
            self._plan.load(self.start)
            self._done = 0
        rows = None
        while self._done <= j:
            rows = self._plan.next_batch()
            self._done += 1
        return self.source.build(rows)
