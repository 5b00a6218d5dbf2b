"""Packing: every example exactly once, seqio-identical features, better fill than seqio."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import seqio
import tensorflow as tf

from ext5.data import packing

LENGTHS = {"inputs": 64, "targets": 16}


def _random_examples(n: int, seed: int = 0, max_in: int = 80, max_tgt: int = 20) -> list[dict]:
    """Random token examples; some longer than LENGTHS so truncation is exercised."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        li, lt = int(rng.integers(1, max_in)), int(rng.integers(1, max_tgt))
        out.append({"inputs": rng.integers(2, 500, li).astype(np.int32),
                    "targets": rng.integers(2, 500, lt).astype(np.int32)})
    return out


def _seqio_convert(examples: list[dict], pack: bool, lengths=LENGTHS) -> list[dict]:
    trimmed = [{"inputs": e["inputs"][:lengths["inputs"]],
                "targets": e["targets"][:lengths["targets"]]} for e in examples]
    ds = tf.data.Dataset.from_generator(
        lambda: iter(trimmed),
        output_signature={"inputs": tf.TensorSpec([None], tf.int32),
                          "targets": tf.TensorSpec([None], tf.int32)})
    conv = seqio.EncDecFeatureConverter(pack=pack)
    return list(conv(ds, lengths).as_numpy_iterator())


def _key(inp, tgt) -> tuple:
    return tuple(int(x) for x in inp), tuple(int(x) for x in tgt)


def _check_row(row: dict, lengths=LENGTHS) -> None:
    """Structural invariants of one packed row (raises AssertionError)."""
    for side, tok, length in (("encoder", "encoder_input_tokens", lengths["inputs"]),
                              ("decoder", "decoder_target_tokens", lengths["targets"])):
        seg, pos, x = row[f"{side}_segment_ids"], row[f"{side}_positions"], row[tok]
        assert seg.shape == pos.shape == x.shape == (length,)
        assert ((seg == 0) == (x == 0)).all(), "padding must be exactly where segment id is 0"
        real = seg[seg > 0]
        # Segments are contiguous runs numbered 1, 2, ... in order: none crosses another.
        if real.size:
            assert (np.diff(real) >= 0).all() and (np.diff(real) <= 1).all() and real[0] == 1
            assert (seg[real.size:] == 0).all(), "padding only at the end"
        for s in np.unique(real):
            idx = np.flatnonzero(seg == s)
            assert (np.diff(idx) == 1).all(), "segment split across the row"
            assert (pos[idx] == np.arange(idx.size)).all(), "positions restart per segment"
        assert (pos[seg == 0] == 0).all()
    seg = row["decoder_segment_ids"]
    tgt, dec_in = row["decoder_target_tokens"], row["decoder_input_tokens"]
    for s in np.unique(seg[seg > 0]):
        idx = np.flatnonzero(seg == s)
        assert dec_in[idx[0]] == 0, "BOS (0) at each segment start"
        assert (dec_in[idx[1:]] == tgt[idx[:-1]]).all(), "shift right within the segment"
    assert (dec_in[seg == 0] == 0).all()
    assert (row["decoder_loss_weights"] == (tgt != 0)).all()
    assert all(v.dtype == np.int32 for v in row.values())


@pytest.mark.parametrize("window,n", [(512, 700), (32, 300)])
def test_every_example_exactly_once(window, n):
    examples = _random_examples(n, seed=window)
    rows = list(packing.pack(examples, LENGTHS, window=window))
    got = sorted(_key(i, t) for r in rows for i, t in packing.unpack_row(r))
    want = sorted(_key(e["inputs"][:64], e["targets"][:16]) for e in examples)
    assert got == want
    for r in rows:
        _check_row(r)


def test_broken_row_is_caught():
    """The invariant checker can fail: a row with a wrong shift must be rejected."""
    row = next(packing.pack(_random_examples(20), LENGTHS))
    row["decoder_input_tokens"] = row["decoder_target_tokens"].copy()
    with pytest.raises(AssertionError):
        _check_row(row)


def test_same_features_and_values_as_seqio_packed():
    # Two examples in decreasing size that share one row: seqio packs them in arrival order,
    # best-fit-decreasing in size order, so the rows must be identical.
    exs = [{"inputs": np.array([7, 8, 5, 9, 3, 1], np.int32),
            "targets": np.array([3, 9, 4, 1], np.int32)},
           {"inputs": np.array([8, 4, 1], np.int32), "targets": np.array([4, 1], np.int32)}]
    lengths = {"inputs": 10, "targets": 7}
    ours = list(packing.pack(exs, lengths))
    theirs = _seqio_convert(exs, pack=True, lengths=lengths)
    assert len(ours) == len(theirs) == 1
    assert set(ours[0]) == set(theirs[0]) == set(packing.PACKED_FEATURES)
    for k in theirs[0]:
        assert ours[0][k].dtype == theirs[0][k].dtype, k
        np.testing.assert_array_equal(ours[0][k], theirs[0][k], err_msg=k)


def test_keys_dtypes_shapes_match_seqio_on_random_data():
    exs = _random_examples(60, seed=3)
    ours = list(packing.batch_rows(packing.pack(exs, LENGTHS), 4))
    theirs = _seqio_convert(exs, pack=True)
    assert set(ours[0]) == set(theirs[0])
    for k in theirs[0]:
        assert ours[0][k].dtype == theirs[0][k].dtype
        assert ours[0][k].shape[1:] == theirs[0][k].shape
    # Same multiset of (segment) examples on both sides.
    seq_segments = sorted(_key(i, t) for r in theirs for i, t in packing.unpack_row(r))
    our_segments = sorted(_key(i, t) for b in ours for j in range(4)
                          for i, t in packing.unpack_row({k: v[j] for k, v in b.items()}))
    assert our_segments == seq_segments


def test_unpacked_equals_seqio_unpacked():
    exs = _random_examples(25, seed=5)
    ours = list(packing.pad(exs, LENGTHS))
    theirs = _seqio_convert(exs, pack=False)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert set(a) == set(b) == set(packing.UNPACKED_FEATURES)
        for k in b:
            assert a[k].dtype == b[k].dtype
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_fill_at_least_seqio_on_random_mix():
    exs = _random_examples(1500, seed=11, max_in=65, max_tgt=17)
    ours = list(packing.pack(exs, LENGTHS))
    theirs = _seqio_convert(exs, pack=True)
    ours_fill = packing.fill_rate(packing.batch_rows(ours, 1))
    theirs_fill = packing.fill_rate(packing.batch_rows(theirs, 1))
    print(f"rows ours={len(ours)} seqio={len(theirs)}; fill ours={ours_fill} seqio={theirs_fill}")
    assert len(ours) <= len(theirs)
    assert ours_fill["inputs"] >= theirs_fill["inputs"]
    assert ours_fill["targets"] >= theirs_fill["targets"]


def test_deterministic_and_streaming():
    exs = _random_examples(300, seed=2)
    a = list(packing.pack(iter(exs), LENGTHS, window=64))
    b = list(packing.pack(iter(exs), LENGTHS, window=64))
    assert len(a) == len(b)
    assert all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in x)

    # An endless generator still yields rows: only a bounded window is buffered.
    def endless():
        for i in itertools.count():
            yield {"inputs": np.full(1 + i % 30, 5, np.int32), "targets": np.full(1 + i % 7, 6, np.int32)}
    rows = list(itertools.islice(packing.pack(endless(), LENGTHS, window=64), 5))
    assert len(rows) == 5


def test_batch_rows_pads_last_batch():
    rows = list(packing.pack(_random_examples(50, seed=4), LENGTHS))
    batches = list(packing.batch_rows(rows, 8))
    assert all(b["encoder_input_tokens"].shape == (8, 64) for b in batches)
    assert len(batches) == -(-len(rows) // 8)
    pad_rows = len(batches) * 8 - len(rows)
    if pad_rows:
        assert (batches[-1]["decoder_loss_weights"][-pad_rows:] == 0).all()


# ------------------------------------------------------------------ seqio drop-in, state, ratio
def _tf_ds(examples: list[dict]):
    return tf.data.Dataset.from_generator(
        lambda: iter(examples), output_signature={"inputs": tf.TensorSpec([None], tf.int32),
                                                  "targets": tf.TensorSpec([None], tf.int32)})


def test_best_fit_feature_converter_is_seqios_converter_with_our_rows():
    # Trimmed already: seqio's converter rejects examples longer than the task lengths.
    exs = [{"inputs": e["inputs"][:64], "targets": e["targets"][:16]} for e in _random_examples(200, seed=8)]
    conv = packing.BestFitEncDecFeatureConverter(pack=True, pack_window=64)
    assert isinstance(conv, seqio.EncDecFeatureConverter)
    got = list(conv(_tf_ds(exs), LENGTHS).as_numpy_iterator())
    want = list(packing.pack(exs, LENGTHS, window=64))
    assert len(got) == len(want)
    assert set(got[0]) == set(_seqio_convert(exs[:3], pack=True)[0])  # seqio's feature set
    for g, w in zip(got, want):
        for k in w:
            assert g[k].dtype == w[k].dtype == np.int32
            np.testing.assert_array_equal(g[k], w[k], err_msg=k)
    # With pack=False it is exactly seqio's converter.
    unpacked = list(packing.BestFitEncDecFeatureConverter(pack=False)(_tf_ds(exs[:20]), LENGTHS)
                    .as_numpy_iterator())
    theirs = _seqio_convert(exs[:20], pack=False)
    assert all(np.array_equal(a[k], b[k]) for a, b in zip(unpacked, theirs) for k in b)


def test_drop_in_matches_seqio_row_for_row_when_arrival_order_is_best_fit():
    # Examples in decreasing size, each pair filling one row exactly: greedy and best-fit agree, so the
    # full converter outputs (after seqio's own shifting/loss weights) must be identical, up to row order.
    # Big examples (decreasing, two never fit together) each followed by the small one that completes its
    # row on both sides; every small is smaller than every big.
    exs = []
    for i in range(4):
        exs.append({"inputs": np.arange(2, 2 + 40 - i, dtype=np.int32), "targets": np.arange(5, 5 + 12 - i,
                                                                                         dtype=np.int32)})
        exs.append({"inputs": np.arange(3, 3 + 24 + i, dtype=np.int32), "targets": np.full(4 + i, 9, np.int32)})
    ours = list(packing.BestFitEncDecFeatureConverter(pack=True)(_tf_ds(exs), LENGTHS).as_numpy_iterator())
    theirs = _seqio_convert(exs, pack=True)
    assert len(ours) == len(theirs) == 4
    key = lambda row: row["encoder_input_tokens"].tobytes()  # noqa: E731  (ext5 shuffles the rows of a window)
    for a, b in zip(sorted(ours, key=key), sorted(theirs, key=key)):
        assert set(a) == set(b)
        for k in b:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_packer_state_round_trip_continues_identically():
    exs = _random_examples(400, seed=9)
    straight = list(packing.pack(exs, LENGTHS, window=50))
    p = packing.BestFitPacker(64, 16, window=50)
    blocks = [p.add(e["inputs"], e["targets"]) for e in exs[:173]]
    arrays = p.state()
    assert all(v.dtype != object for v in arrays.values())  # plain int arrays: savez without pickle
    q = packing.BestFitPacker(64, 16, window=50)
    q.restore(arrays)
    blocks += [q.add(e["inputs"], e["targets"]) for e in exs[173:]] + [q.finish()]
    rows = [r for b in blocks if b is not None for r in packing.split_block(b)]
    assert len(rows) == len(straight)
    assert all(np.array_equal(a[k], b[k]) for a, b in zip(rows, straight) for k in a)
    with pytest.raises(ValueError, match="packer state is for"):
        packing.BestFitPacker(64, 16, window=51).restore(arrays)


def test_t0_like_mix_within_two_percent_of_the_lower_bound():
    import importlib.util
    import os
    spec = importlib.util.spec_from_file_location(
        "bench_packing", os.path.join(os.path.dirname(__file__), "..", "bench", "packing.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    li, lt = bench.t0_like_lengths(4000, seed=0)
    exs = bench.examples_of_lengths(li, lt)
    lengths = {"inputs": 1024, "targets": 256}
    rows = sum(len(b["encoder_input_tokens"]) for b in packing.pack_blocks(exs, lengths))
    lb = bench.lower_bound(exs, lengths)
    assert rows <= 1.02 * lb, (rows, lb)


def test_rows_of_a_window_are_not_emitted_longest_first():
    rng = np.random.RandomState(3)
    exs = [{"inputs": np.ones(rng.randint(1, 60), np.int32), "targets": np.ones(rng.randint(1, 12), np.int32)}
           for _ in range(256)]
    def largest_segments(rows):  # size of each row's first segment, in the packer's own units
        return [int(np.sum(r["encoder_segment_ids"] == 1) * LENGTHS["targets"]
                    + np.sum(r["decoder_segment_ids"] == 1) * LENGTHS["inputs"]) for r in rows]
    biggest = largest_segments(packing.pack(exs, LENGTHS, window=256))
    # Best-fit-decreasing opens each row with a larger example than the next row's: in creation order this
    # list would be non-increasing (bar the few least-filled rows carried to the end).
    assert biggest[:40] != sorted(biggest[:40], reverse=True)
    assert biggest == largest_segments(packing.pack(exs, LENGTHS, window=256))  # deterministic
