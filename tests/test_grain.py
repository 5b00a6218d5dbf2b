"""The grain pipeline over ArrayRecord caches: determinism, rates, host independence, elastic resume, the size of
the data position, and broken shards (no TensorFlow, no Beam: caches are written directly)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from ext5.data import array_cache
from ext5.data.array_cache import CacheError, CachedSplit
from ext5.data.grain_pipeline import GrainBatchSource, MixtureIndex, permute
from ext5.data.packing import unpack_row


def _examples(n, seed, max_in=40, max_tgt=10, task=0):
    rng = np.random.default_rng(seed)
    # Every example is unique (its first token encodes task and number), so rows can be traced back.
    return [{"inputs": np.concatenate([[1000 * (task + 1) + i], rng.integers(2, 99, rng.integers(0, max_in))]),
             "targets": rng.integers(2, 99, rng.integers(1, max_tgt))} for i in range(n)]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    sizes = {"a": 300, "b": 120, "c": 41}
    for t, (name, n) in enumerate(sizes.items()):
        array_cache.write_split(str(root / name), "train", _examples(n, t, task=t), num_shards=2 if n > 100 else 1)
    return root, sizes


def _source(cache, *, rates=(1.0, 2.0, 0.5), batch=8, host=0, hosts=1, **kw):
    root, sizes = cache
    tasks = [(n, CachedSplit(str(root / n), "train"), r) for n, r in zip(sizes, rates)]
    return GrainBatchSource(tasks, 48, 12, batch, shard_index=host, num_shards=hosts, pack_window=32, **kw)


def _global(sources, n):
    """n global batches from the host sources (concatenated in host order)."""
    out = []
    for _ in range(n):
        parts = [next(s) for s in sources]
        out.append({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
    return out


def _same(xs, ys):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)


def _first_tokens(batches):
    return [int(seg[0][0]) for b in batches for r in range(len(b["encoder_input_tokens"]))
            for seg in unpack_row({k: v[r] for k, v in b.items()})]


def test_permutation_and_mixture_rates():
    for n in (1, 2, 5, 64, 1000):
        assert sorted(permute(np.arange(n), n, 7).tolist()) == list(range(n))
    assert not np.array_equal(permute(np.arange(100), 100, 1), permute(np.arange(100), 100, 2))
    idx = MixtureIndex([300, 120, 41], [1.0, 2.0, 0.5], seed=3)
    task, ex = idx.locate(np.arange(idx.epoch_size * 3))
    # Exact rates over whole epochs; each task's draws cover its examples evenly, pass after pass.
    np.testing.assert_allclose(np.bincount(task) / len(task), [1 / 3.5, 2 / 3.5, 0.5 / 3.5], atol=1e-3)
    for t, n in enumerate((300, 120, 41)):
        counts = np.bincount(ex[task == t], minlength=n)
        assert counts.max() - counts.min() <= 1
    t2, e2 = idx.locate(np.array([5, idx.epoch_size + 17]))  # random access agrees with the sequence
    assert (t2.tolist(), e2.tolist()) == ([task[5], task[idx.epoch_size + 17]], [ex[5], ex[idx.epoch_size + 17]])


def test_batches_are_a_function_of_seed_and_step_and_hold_every_example_once(cache):
    a = _global([_source(cache, seed=1)], 12)
    _same(a, _global([_source(cache, seed=1)], 12))
    assert not all(np.array_equal(x["encoder_input_tokens"], y["encoder_input_tokens"])
                   for x, y in zip(a, _global([_source(cache, seed=2)], 12)))
    # Examples-proportional rates: an epoch holds each example once, so nothing repeats within one.
    ids = _first_tokens(_global([_source(cache, seed=1, rates=(300, 120, 41))], 12))
    assert len(ids) == len(set(ids)) > 100
    assert a[0]["encoder_segment_ids"].max() > 1  # packed


@pytest.mark.parametrize("before,after", [(2, 1), (1, 2), (1, 4)])
def test_elastic_resume_continues_the_same_global_sequence(cache, before, after):
    straight = _global([_source(cache, seed=5, hosts=1)], 10)
    first = [_source(cache, seed=5, host=h, hosts=before) for h in range(before)]
    _same(straight[:4], _global(first, 4))
    states = [json.loads(json.dumps(s.state("unused"))) for s in first]
    assert all(s == states[0] for s in states)  # one position for all hosts: the primary's is enough
    second = [_source(cache, seed=5, host=h, hosts=after) for h in range(after)]
    for s in second:
        s.restore(states[0], "unused")
    _same(straight[4:], _global(second, 6))
    other = _source(cache, seed=6)
    with pytest.raises(ValueError, match="fingerprint"):
        other.restore(states[0])


def test_unpacked_rows_and_worker_processes(cache):
    unpacked = _global([_source(cache, seed=1, pack=False)], 3)
    assert set(unpacked[0]) == {"encoder_input_tokens", "decoder_target_tokens", "decoder_input_tokens",
                                "decoder_loss_weights"}
    src = _source(cache, seed=1)
    want = _global([src], 6)
    state = src.state()
    with_workers = _source(cache, seed=1, workers=2)
    try:
        _same(want[:3], _global([with_workers], 3))  # batches 0, 2 from one worker, 1 from the other
        with_workers.restore(state)
        _same(_global([src], 2), _global([with_workers], 2))
    finally:
        with_workers.close()


def test_data_position_is_small_for_313_tasks_at_1024_256(tmp_path):
    tasks = []
    for t in range(313):
        d = tmp_path / f"t{t}"
        array_cache.write_split(str(d), "train", _examples(8 + t % 5, t, max_in=900, max_tgt=200, task=t))
        tasks.append((f"t{t}", CachedSplit(str(d), "train"), 1.0 + t % 7))
    src = GrainBatchSource(tasks, 1024, 256, 256, pack_window=512)
    for _ in range(3):
        next(src)
    size = len(json.dumps(src.state()))
    assert size < 64 * 1024, size  # <= 1 MiB per host is the bound; it is a few KiB, whatever the tasks


def test_broken_shards_are_one_line_errors_naming_the_shard(tmp_path):
    d = tmp_path / "t"
    array_cache.write_split(str(d), "train", _examples(50, 0), num_shards=2)
    shard = d / array_cache.shard_name("train", 1, 2)
    data = shard.read_bytes()
    shard.write_bytes(data[:len(data) // 3])  # truncated
    split = CachedSplit(str(d), "train")
    with pytest.raises(CacheError, match=f"{shard}.*truncated.*ext5 cache") as e:
        split.verify()
    assert "\n" not in str(e.value)
    garbled = bytearray(data)
    garbled[100:400] = bytes(300)
    shard.write_bytes(bytes(garbled))
    with pytest.raises(CacheError, match=f"{shard}.*corrupted") as e:
        CachedSplit(str(d), "train").read(list(range(25, 50)))
    assert "\n" not in str(e.value)
    (d / "train.ext5_index.json").write_text("{")
    with pytest.raises(CacheError, match="ext5_index.json is missing or unreadable"):
        CachedSplit(str(d), "train")


def test_grain_path_imports_no_tensorflow(cache):
    root, sizes = cache
    code = textwrap.dedent(f"""
        import sys
        sys.modules["tensorflow"] = None
        from ext5.data.array_cache import CachedSplit
        from ext5.data.grain_pipeline import GrainBatchSource
        src = GrainBatchSource([(n, CachedSplit({str(root)!r} + "/" + n, "train"), 1.0) for n in {list(sizes)!r}],
                               48, 12, 4).open()
        next(src)
        print("OK")
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert p.returncode == 0 and "OK" in p.stdout, p.stderr[-2000:]
