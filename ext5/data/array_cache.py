"""ArrayRecord caches of tokenized examples: record format, index, and a random-access reader (no TensorFlow).

`ext5 cache` writes, next to seqio's own cache files of a task (which keep seqio and t5x reading it as cached):

    <task_dir>/<split>.array_record-00000-of-00064     examples, one record each, ArrayRecord (group_size:1)
    <split>.lengths-00000-of-00064.npy                 int32 [examples, 2]: (inputs, targets) token counts
    <split>.ext5_index.json                            {"format", "features", "shards": [{"file", "examples"}],
                                                        "examples"}: the counts per split

A record is the tokens of one example: uint32 lengths of the features (in the index's order) followed by their
int32 tokens; decoding is one np.frombuffer. The lengths files let every host plan packed rows from 8 bytes
per example without reading tokens (docs/data_at_scale.md).
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import numpy as np

FORMAT = "ext5-array-record-v1"
FEATURES = ("inputs", "targets")
WRITER_OPTIONS = "group_size:1"  # one record per chunk: a random read decompresses one example only
READER_OPTIONS = "readahead_buffer_size:0"  # random access: no readahead


class CacheError(ValueError):
    """An ArrayRecord cache is missing, incomplete or unreadable (one-line message naming the file)."""


def index_path(task_dir: str, split: str) -> str:
    return os.path.join(task_dir, f"{split}.ext5_index.json")


def shard_name(split: str, shard: int, num_shards: int) -> str:
    return f"{split}.array_record-{shard:05d}-of-{num_shards:05d}"


def lengths_name(split: str, shard: int, num_shards: int) -> str:
    return f"{split}.lengths-{shard:05d}-of-{num_shards:05d}.npy"


def encode(example: Mapping[str, Any], features: Sequence[str] = FEATURES) -> bytes:
    """One record: uint32 feature lengths, then the int32 tokens of each feature (absent features are empty)."""
    arrays = [np.asarray(example.get(f, ()), np.int32).reshape(-1) for f in features]
    head = np.array([len(a) for a in arrays], np.uint32)
    return head.tobytes() + b"".join(a.tobytes() for a in arrays)


def decode(record: bytes, num_features: int = len(FEATURES)) -> list[np.ndarray]:
    """Inverse of encode(): the token arrays, in feature order. Raises ValueError if the sizes disagree."""
    head = np.frombuffer(record, np.uint32, num_features)
    body = np.frombuffer(record, np.int32, offset=4 * num_features)
    if int(head.sum()) != len(body):
        raise ValueError(f"record of {len(record)} bytes does not hold the {head.tolist()} tokens its header says")
    cuts = np.cumsum(head[:-1].astype(np.int64))
    return np.split(body, cuts)


def record_lengths(records: Sequence[bytes], num_features: int = len(FEATURES)) -> np.ndarray:
    """int32 [len(records), num_features]: the token counts in each record's header."""
    if not records:
        return np.zeros((0, num_features), np.int32)
    return np.stack([np.frombuffer(r, np.uint32, num_features) for r in records]).astype(np.int32)


def write_shard(path: str, records: Sequence[bytes]) -> None:
    """Writes one ArrayRecord shard at local `path` (callers copy it to remote storage)."""
    from array_record.python.array_record_module import ArrayRecordWriter
    writer = ArrayRecordWriter(path, WRITER_OPTIONS)
    for r in records:
        writer.write(r)
    writer.close()


def _read_bytes(path: str) -> bytes:
    if "://" in path:
        from etils import epath
        return epath.Path(path).read_bytes()
    with open(path, "rb") as f:
        return f.read()


def has_index(task_dir: str | None, split: str) -> bool:
    """Whether `task_dir` holds an ext5 ArrayRecord index for `split`."""
    if not task_dir:
        return False
    path = index_path(task_dir, split)
    if "://" in path:
        from etils import epath
        return epath.Path(path).exists()
    return os.path.exists(path)


class CachedSplit:
    """Random access to one task split's ArrayRecord cache: len(), lengths(), read(indices).

    Shard readers open lazily (and are not pickled: grain worker processes reopen them). A shard that is
    missing, truncated or garbled raises CacheError naming the file and the fix, never hangs.
    """

    def __init__(self, task_dir: str, split: str, task_name: str = ""):
        self.task_dir, self.split, self.task_name = task_dir, split, task_name or os.path.basename(task_dir)
        path = index_path(task_dir, split)
        try:
            index = json.loads(_read_bytes(path))
        except (OSError, ValueError) as e:
            raise CacheError(f"{path} is missing or unreadable ({type(e).__name__}); "
                             f"rerun `ext5 cache --tasks={self.task_name} --overwrite`") from None
        if index.get("format") != FORMAT:
            raise CacheError(f"{path} has format {index.get('format')!r}, expected {FORMAT!r}; "
                             f"rerun `ext5 cache --tasks={self.task_name} --overwrite`")
        self.features = tuple(index["features"])
        self.files = [s["file"] for s in index["shards"]]
        counts = np.array([int(s["examples"]) for s in index["shards"]], np.int64)
        self._starts = np.concatenate([[0], np.cumsum(counts)])
        self.num_examples = int(self._starts[-1])
        if self.num_examples != int(index["examples"]):
            raise CacheError(f"{path}: shard counts sum to {self.num_examples}, the index says "
                             f"{index['examples']}; rerun `ext5 cache --tasks={self.task_name} --overwrite`")
        self._readers: dict[int, Any] = {}
        self._lengths: np.ndarray | None = None

    def __len__(self) -> int:
        return self.num_examples

    def __getstate__(self) -> dict:
        # Readers hold file handles and lengths may be memory-mapped: both reopened where used.
        return {**self.__dict__, "_readers": {}, "_lengths": None}

    def _fail(self, shard: int, what: str) -> CacheError:
        return CacheError(f"ArrayRecord shard {os.path.join(self.task_dir, self.files[shard])} is {what}; "
                          f"rerun `ext5 cache --tasks={self.task_name} --overwrite`")

    def lengths(self) -> np.ndarray:
        """int32 [examples, 2]: (inputs, targets) token counts, memory-mapped where local."""
        if self._lengths is None:
            parts = []
            for s, name in enumerate(self.files):
                path = os.path.join(self.task_dir, name.replace(".array_record-", ".lengths-") + ".npy")
                try:
                    if "://" in path:
                        import io
                        arr = np.load(io.BytesIO(_read_bytes(path)), allow_pickle=False)
                    else:
                        arr = np.load(path, mmap_mode="r", allow_pickle=False)
                except (OSError, ValueError) as e:
                    raise CacheError(f"lengths file {path} is missing or unreadable ({type(e).__name__}); rerun "
                                     f"`ext5 cache --tasks={self.task_name} --overwrite`") from None
                want = int(self._starts[s + 1] - self._starts[s])
                if arr.shape != (want, len(self.features)):
                    raise CacheError(f"lengths file {path} has shape {arr.shape}, expected "
                                     f"{(want, len(self.features))}; rerun `ext5 cache --tasks={self.task_name} "
                                     f"--overwrite`")
                parts.append(arr)
            self._lengths = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return self._lengths

    def _reader(self, shard: int):
        r = self._readers.get(shard)
        if r is None:
            from array_record.python.array_record_module import ArrayRecordReader
            path = os.path.join(self.task_dir, self.files[shard])
            try:
                r = ArrayRecordReader(path, READER_OPTIONS)
            except (OSError, RuntimeError, ValueError) as e:
                raise self._fail(shard, f"unreadable ({str(e).splitlines()[0][:200]})") from None
            if not r.ok():
                raise self._fail(shard, "truncated or not an ArrayRecord file")
            want = int(self._starts[shard + 1] - self._starts[shard])
            if r.num_records() != want:
                raise self._fail(shard, f"holding {r.num_records()} records where the index says {want}")
            self._readers[shard] = r
        return r

    def verify(self) -> None:
        """Opens every shard (checks its footer and record count): fails fast, before training starts."""
        for s in range(len(self.files)):
            self._reader(s)

    def read(self, indices: Sequence[int]) -> list[list[np.ndarray]]:
        """Token arrays (one per feature) of the examples at `indices` (any order, repeats allowed)."""
        idx = np.asarray(indices, np.int64)
        if len(idx) and (idx.min() < 0 or idx.max() >= self.num_examples):
            raise IndexError(f"{self.task_name}/{self.split}: index out of range [0, {self.num_examples})")
        shard = np.searchsorted(self._starts, idx, side="right") - 1
        out: list[Any] = [None] * len(idx)
        for s in np.unique(shard).tolist():
            where = np.nonzero(shard == s)[0]
            local = (idx[where] - self._starts[s]).tolist()
            try:
                records = self._reader(s).read(local)
            except (RuntimeError, OSError, ValueError) as e:
                raise self._fail(s, f"corrupted ({str(e).splitlines()[0][:200]})") from None
            for w, rec in zip(where.tolist(), records):
                try:
                    out[w] = decode(rec, len(self.features))
                except ValueError as e:
                    raise self._fail(s, f"corrupted ({e})") from None
        return out

    def close(self) -> None:
        for r in self._readers.values():
            r.close()
        self._readers = {}


def write_split(task_dir: str, split: str, examples: Sequence[Mapping[str, Any]], num_shards: int = 1) -> None:
    """Writes `examples` as a complete local ArrayRecord cache of one split (shards, lengths, index), in order.

    `ext5 cache` writes the same files from Beam; this is for tests, benchmarks and small local data."""
    os.makedirs(task_dir, exist_ok=True)
    records = [encode(ex) for ex in examples]
    bounds = np.linspace(0, len(records), num_shards + 1).astype(int)
    shards = []
    for s in range(num_shards):
        part = records[bounds[s]:bounds[s + 1]]
        name = shard_name(split, s, num_shards)
        write_shard(os.path.join(task_dir, name), part)
        np.save(os.path.join(task_dir, lengths_name(split, s, num_shards)), record_lengths(part), allow_pickle=False)
        shards.append({"file": name, "examples": len(part)})
    with open(index_path(task_dir, split), "w", encoding="utf-8") as f:
        json.dump({"format": FORMAT, "features": list(FEATURES), "shards": shards, "examples": len(records)}, f)
