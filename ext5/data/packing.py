"""Best-fit packing of (inputs, targets) examples into rows with seqio's packed features.

seqio's trim_and_pack keeps one open row and starts a new one whenever the next example does
not fit, so rows are often far from full (1.19x the minimum rows on a T0-like mix). Here each
bounded window of examples (default 512) is packed best-fit-decreasing over both lengths at
once: examples sorted by size (inputs/input_len + targets/target_len) and each put in the open
row it leaves the least room in, among rows where inputs total <= input_len *and* targets total
<= target_len. The least-filled rows of a window stay open for the next window once, so window
boundaries waste little. Deterministic (integer keys, ties by arrival/creation order), streaming
(memory bounded by the window), and nothing is dropped: over-long examples are trimmed to the
lengths, as seqio trims.

The placement itself (`BestFitPlanner`) sees only the two lengths of each item, so the grain pipeline plans
rows of example indices from cached lengths with the same code (`BestFitPacker` is the planner with token
arrays as items).

Finding the best row is a bisect in a sorted list of (room key, row) pairs: any row that fits an
example has room key >= the example's size key, so scanning upward from the bisect point the
first row that fits both sides is the best fit. Rows are then built for a whole window with a
few vectorised numpy scatters.

Rows carry exactly seqio.EncDecFeatureConverter(pack=True)'s features (`PACKED_FEATURES`):
segment ids 1-based with 0 = padding, positions restarting at 0 per segment, decoder inputs
shifted right within each segment with 0 (BOS) at segment starts, loss weights 1 on real
target tokens. `BestFitEncDecFeatureConverter` is that converter with this packer in place of
seqio.utils.trim_and_pack_dataset and nothing else changed (built on first access, so the numpy
packer itself imports no TensorFlow).
"""
from __future__ import annotations

import bisect
import zlib
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

PACKED_FEATURES = ("encoder_input_tokens", "encoder_segment_ids", "encoder_positions",
                   "decoder_target_tokens", "decoder_input_tokens", "decoder_loss_weights",
                   "decoder_segment_ids", "decoder_positions")
UNPACKED_FEATURES = ("encoder_input_tokens", "decoder_target_tokens", "decoder_input_tokens",
                     "decoder_loss_weights")
_ENCODER = ("encoder_input_tokens", "encoder_segment_ids", "encoder_positions")
PACKERS = ("best_fit", "seqio")

Row = dict[str, np.ndarray]
Block = dict[str, np.ndarray]  # the same features stacked: [rows, length]
Example = Mapping[str, Sequence[int] | np.ndarray]
Segment = tuple[np.ndarray, np.ndarray]


def _lengths(feature_lengths: Mapping[str, int]) -> tuple[int, int]:
    return int(feature_lengths["inputs"]), int(feature_lengths["targets"])


def _trim(ex: Example, input_len: int, target_len: int) -> Segment:
    return (np.asarray(ex["inputs"], np.int32)[:input_len],
            np.asarray(ex["targets"], np.int32)[:target_len])


def check_packer(packer: str) -> str:
    """Validate a packer name (gin: DatasetConfig.packer)."""
    if packer not in PACKERS:
        raise ValueError(f"unknown packer '{packer}'; use one of {', '.join(PACKERS)}")
    return packer


# ------------------------------------------------------------------ row construction
def build_block(rows: Sequence[Sequence[Segment]], input_len: int, target_len: int) -> Block:
    """Packed features of len(rows) rows, row r holding the segments rows[r] in order."""
    n_rows = len(rows)
    per_row = np.fromiter((len(r) for r in rows), np.int64, n_rows)
    segs = [s for r in rows for s in r]
    n_seg = len(segs)
    row_of = np.repeat(np.arange(n_rows), per_row)
    first_seg = np.cumsum(per_row) - per_row
    seg_num = (np.arange(n_seg) - first_seg[row_of] + 1).astype(np.int32)
    out: Block = {}
    for side, length, (tok_k, seg_k, pos_k) in (
            (0, input_len, _ENCODER),
            (1, target_len, ("decoder_target_tokens", "decoder_segment_ids", "decoder_positions"))):
        lens = np.fromiter((len(s[side]) for s in segs), np.int64, n_seg)
        toks = (np.concatenate([s[side] for s in segs]) if n_seg else np.zeros(0, np.int32))
        gstart = np.cumsum(lens) - lens  # start of each segment in `toks`
        # Offset of each segment inside its row: tokens of the row's earlier segments.
        row_tok_start = gstart[first_seg] if n_rows else np.zeros(0, np.int64)
        in_row = gstart - row_tok_start[row_of]
        if (in_row + lens > length).any():
            raise ValueError("segments overflow the row")
        seg_of_tok = np.repeat(np.arange(n_seg), lens)
        pos = np.arange(len(toks)) - gstart[seg_of_tok]
        dest = row_of[seg_of_tok] * length + in_row[seg_of_tok] + pos
        for key, values in ((tok_k, toks), (seg_k, seg_num[seg_of_tok]), (pos_k, pos)):
            flat = np.zeros(n_rows * length, np.int32)
            flat[dest] = values
            out[key] = flat.reshape(n_rows, length)
        if side == 1:
            # Shift right within each segment; 0 (BOS) at every segment start.
            prev = np.concatenate([[0], toks[:-1]]).astype(np.int32) if len(toks) else toks
            flat = np.zeros(n_rows * length, np.int32)
            flat[dest] = np.where(pos > 0, prev, 0)
            out["decoder_input_tokens"] = flat.reshape(n_rows, length)
    # As seqio: loss on every non-padding target position.
    out["decoder_loss_weights"] = (out["decoder_target_tokens"] != 0).astype(np.int32)
    return {k: out[k] for k in PACKED_FEATURES}


def packed_row(segments: Sequence[Segment], input_len: int, target_len: int) -> Row:
    """Features of one packed row holding `segments` [(inputs, targets), ...] in order."""
    return {k: v[0] for k, v in build_block([segments], input_len, target_len).items()}


def unpacked_row(ex: Example, input_len: int, target_len: int) -> Row:
    """One example padded to a row, exactly as seqio.EncDecFeatureConverter(pack=False)."""
    inp, tgt = _trim(ex, input_len, target_len)
    enc = np.zeros(input_len, np.int32)
    enc[:len(inp)] = inp
    dec = np.zeros(target_len, np.int32)
    dec[:len(tgt)] = tgt
    # seqio shifts the padded targets right (no segment ids), so EOS reappears after the end.
    dec_in = np.concatenate([[0], dec[:-1]]).astype(np.int32)
    return {"encoder_input_tokens": enc, "decoder_target_tokens": dec,
            "decoder_input_tokens": dec_in,
            "decoder_loss_weights": (dec != 0).astype(np.int32)}


# ------------------------------------------------------------------ the packer
class _OpenRow:
    __slots__ = ("items", "room_in", "room_tgt", "carried")

    def __init__(self, input_len: int, target_len: int):
        self.items: list[tuple[Any, int, int]] = []  # (item, inputs length, targets length)
        self.room_in, self.room_tgt = input_len, target_len
        self.carried = False


class BestFitPlanner:
    """Best-fit-decreasing placement of opaque items by their two lengths alone: the packer's core.

    add(item, n_in, n_tgt) buffers an item (an example, or just its index); when a window is full
    it returns the finished rows as lists of items. Both pipelines share it: the tf.data path packs
    token arrays (BestFitPacker), the grain path plans rows of global example indices from the
    cached lengths, so every host computes the same rows without reading their tokens.

    Args:
      input_len, target_len: row lengths (seqio task_feature_lengths "inputs"/"targets").
      window: items buffered per best-fit round (bounds memory and latency).
      carry: how many least-filled rows of a window may stay open for the next window
        (default window // 64); a row is carried at most once.
    Items with no tokens at all occupy nothing and are dropped.
    """

    def __init__(self, input_len: int, target_len: int, *, window: int = 512,
                 carry: int | None = None):
        if window < 1:
            raise ValueError(f"packing window must be >= 1, got {window}")
        self.input_len, self.target_len = int(input_len), int(target_len)
        self.window = int(window)
        self.carry = max(1, self.window // 64) if carry is None else int(carry)
        self._buf: list[tuple[Any, int, int]] = []
        self._open: list[_OpenRow] = []

    def add(self, item: Any, n_in: int, n_tgt: int) -> list[list[Any]] | None:
        """Buffer one item of lengths (n_in, n_tgt), trimmed to the row lengths; rows when a window completes."""
        a, b = min(int(n_in), self.input_len), min(int(n_tgt), self.target_len)
        if a or b:
            self._buf.append((item, a, b))
        return self._flush(final=False) if len(self._buf) >= self.window else None

    def finish(self) -> list[list[Any]]:
        """Place what is buffered and close every row (end of stream)."""
        return self._flush(final=True)

    def _place(self) -> list[_OpenRow]:
        """Best-fit-decreasing of the buffered window into the carried rows plus new rows."""
        il, tl = self.input_len, self.target_len
        window, self._buf = self._buf, []
        rows = self._open
        li = np.fromiter((x[1] for x in window), np.int64, len(window))
        lt = np.fromiter((x[2] for x in window), np.int64, len(window))
        # Sizes scaled by il*tl: integer keys, so ties (and the result) are exact.
        size = li * tl + lt * il
        order = np.argsort(-size, kind="stable")  # decreasing size, ties by arrival
        keys = sorted((r.room_in * tl + r.room_tgt * il, j) for j, r in enumerate(rows))
        li_l, lt_l, size_l = li.tolist(), lt.tolist(), size.tolist()
        for k in order.tolist():
            a, b = li_l[k], lt_l[k]
            pos = bisect.bisect_left(keys, (size_l[k], -1))
            j = -1
            while pos < len(keys):
                r = rows[keys[pos][1]]
                if r.room_in >= a and r.room_tgt >= b:
                    j = keys.pop(pos)[1]
                    break
                pos += 1
            if j < 0:
                j = len(rows)
                rows.append(_OpenRow(il, tl))
            r = rows[j]
            r.items.append(window[k])
            r.room_in -= a
            r.room_tgt -= b
            bisect.insort(keys, (r.room_in * tl + r.room_tgt * il, j))
        return rows

    def _flush(self, final: bool) -> list[list[Any]]:
        il, tl = self.input_len, self.target_len
        rows = self._place()
        keep: list[_OpenRow] = []
        if not final and self.carry:
            fresh = [r for r in rows if not r.carried]
            # Least filled first; stable, so ties keep creation order.
            fresh.sort(key=lambda r: -(r.room_in * tl + r.room_tgt * il))
            keep = fresh[:self.carry]
        kept = {id(r) for r in keep}
        done = [r.items for r in rows if id(r) not in kept and r.items]
        # Rows are created largest-first; emitted in that order, consecutive batches would hold only long or only
        # short examples. Shuffle them with a seed taken from the window's lengths: deterministic and
        # resume-safe without any extra state.
        lens = np.array([n for row in done for it in row for n in it[1:]], np.int64)
        order = np.random.default_rng(zlib.crc32(lens.tobytes())).permutation(len(done))
        for r in keep:
            r.carried = True
        self._open = [r for r in rows if id(r) in kept]
        return [[it[0] for it in done[i]] for i in order]

    # -- state: the buffered and carried items with their lengths
    def snapshot(self) -> dict[str, Any]:
        """{"buffered": [[item, n_in, n_tgt], ...], "open": [[carried, [[item, n_in, n_tgt], ...]], ...]}.

        JSON-able when the items are (the grain path's items are example indices)."""
        return {"buffered": [list(x) for x in self._buf],
                "open": [[int(r.carried), [list(x) for x in r.items]] for r in self._open]}

    def load(self, snap: Mapping[str, Any]) -> None:
        """Inverse of snapshot()."""
        self._buf = [(x[0], int(x[1]), int(x[2])) for x in snap["buffered"]]
        self._open = []
        for carried, items in snap["open"]:
            r = _OpenRow(self.input_len, self.target_len)
            r.items = [(x[0], int(x[1]), int(x[2])) for x in items]
            r.room_in -= sum(x[1] for x in r.items)
            r.room_tgt -= sum(x[2] for x in r.items)
            r.carried = bool(carried)
            self._open.append(r)


class BestFitPacker:
    """Streaming best-fit-decreasing packer: add() examples, get blocks of finished rows.

    A BestFitPlanner whose items are the (inputs, targets) token arrays; see it for `window` and `carry`.
    Examples with no tokens at all occupy nothing and produce no segment.
    """

    def __init__(self, input_len: int, target_len: int, *, window: int = 512,
                 carry: int | None = None):
        self._plan = BestFitPlanner(input_len, target_len, window=window, carry=carry)
        self.input_len, self.target_len = self._plan.input_len, self._plan.target_len
        self.window, self.carry = self._plan.window, self._plan.carry

    def add(self, inputs: Any, targets: Any) -> Block | None:
        """Buffer one example; returns a block of finished rows when a window completes."""
        inp = np.asarray(inputs, np.int32)[:self.input_len]
        tgt = np.asarray(targets, np.int32)[:self.target_len]
        return self._block(self._plan.add((inp, tgt), len(inp), len(tgt)))

    def finish(self) -> Block | None:
        """Pack what is buffered and close every row (end of stream)."""
        return self._block(self._plan.finish())

    def _block(self, rows: list[list[Segment]] | None) -> Block | None:
        return build_block(rows, self.input_len, self.target_len) if rows else None

    # -- state (for resumable pipelines): plain int arrays, no pickle
    def state(self) -> dict[str, np.ndarray]:
        """Buffered examples and carried rows as int arrays (np.savez-able)."""
        p = self._plan
        segs = [x[0] for x in p._buf] + [x[0] for r in p._open for x in r.items]
        out = _segments_to_arrays(segs)
        out["packer_config"] = np.array([self.input_len, self.target_len, self.window, self.carry],
                                        np.int64)
        out["num_buffered"] = np.array([len(p._buf)], np.int64)
        out["open_row_sizes"] = np.array([len(r.items) for r in p._open], np.int64)
        out["open_row_carried"] = np.array([r.carried for r in p._open], np.int64)
        return out

    def restore(self, state: Mapping[str, np.ndarray]) -> None:
        """Inverse of state(); raises ValueError if it came from a differently configured packer."""
        cfg = [int(x) for x in state["packer_config"]]
        if cfg != [self.input_len, self.target_len, self.window, self.carry]:
            raise ValueError(f"packer state is for (input_len, target_len, window, carry)={cfg}, "
                             f"this packer is {[self.input_len, self.target_len, self.window, self.carry]}")
        segs = [(s, len(s[0]), len(s[1])) for s in _arrays_to_segments(state)]
        nb = int(state["num_buffered"][0])
        snap = {"buffered": segs[:nb], "open": []}
        i = nb
        for n, carried in zip(state["open_row_sizes"].tolist(), state["open_row_carried"].tolist()):
            snap["open"].append([carried, segs[i:i + n]])
            i += n
        self._plan.load(snap)


def _segments_to_arrays(segs: Sequence[Segment]) -> dict[str, np.ndarray]:
    out = {}
    for side, name in ((0, "inputs"), (1, "targets")):
        out[f"{name}_lengths"] = np.array([len(s[side]) for s in segs], np.int64)
        out[f"{name}_tokens"] = (np.concatenate([s[side] for s in segs]).astype(np.int32)
                                 if segs else np.zeros(0, np.int32))
    return out


def _arrays_to_segments(state: Mapping[str, np.ndarray]) -> list[Segment]:
    sides = []
    for name in ("inputs", "targets"):
        lens = state[f"{name}_lengths"]
        cuts = np.cumsum(lens)[:-1] if len(lens) else []
        sides.append(np.split(np.asarray(state[f"{name}_tokens"], np.int32), cuts) if len(lens) else [])
    return list(zip(*sides))


def pack_blocks(examples: Iterable[Example], feature_lengths: Mapping[str, int], *,
                window: int = 512, carry: int | None = None) -> Iterator[Block]:
    """Packs a stream of {"inputs", "targets"} examples; yields blocks [rows, length] of rows."""
    packer = BestFitPacker(*_lengths(feature_lengths), window=window, carry=carry)
    for ex in examples:
        block = packer.add(ex["inputs"], ex["targets"])
        if block is not None:
            yield block
    block = packer.finish()
    if block is not None:
        yield block


def split_block(block: Block) -> Iterator[Row]:
    n = len(next(iter(block.values())))
    for i in range(n):
        yield {k: v[i] for k, v in block.items()}


def pack(examples: Iterable[Example], feature_lengths: Mapping[str, int], *,
         window: int = 512, carry: int | None = None) -> Iterator[Row]:
    """Packs a stream of {"inputs", "targets"} token arrays into rows (generator of Row).

    See BestFitPacker for `window` and `carry`.
    """
    for block in pack_blocks(examples, feature_lengths, window=window, carry=carry):
        yield from split_block(block)


def pad(examples: Iterable[Example], feature_lengths: Mapping[str, int]) -> Iterator[Row]:
    """Unpacked mode: one example per row (generator of Row)."""
    input_len, target_len = _lengths(feature_lengths)
    for ex in examples:
        yield unpacked_row(ex, input_len, target_len)


def zero_rows(like: Mapping[str, np.ndarray], n: int) -> Block:
    """n all-padding rows with the features and lengths of `like` (a row or a block)."""
    return {k: np.zeros((n, np.shape(v)[-1]), np.int32) for k, v in like.items()}


def batch_rows(rows: Iterable[Row], batch_size: int, *, pad_last: bool = True
               ) -> Iterator[dict[str, np.ndarray]]:
    """Stacks rows into [batch_size, length] int32 arrays.

    The last partial batch is completed with all-zero rows (padding everywhere, zero loss
    weight) when pad_last, so every batch has a static shape and no example is dropped.
    """
    pending: list[Row] = []
    for row in rows:
        pending.append(row)
        if len(pending) == batch_size:
            yield {k: np.stack([r[k] for r in pending]) for k in pending[0]}
            pending = []
    if pending and pad_last:
        zero = {k: np.zeros_like(v) for k, v in pending[0].items()}
        pending += [zero] * (batch_size - len(pending))
        yield {k: np.stack([r[k] for r in pending]) for k in pending[0]}


def fill_rate(batches: Iterable[Mapping[str, np.ndarray]]) -> dict[str, float]:
    """Fraction of non-padding positions on each side, over rows that hold any data."""
    tot = {"inputs": [0, 0], "targets": [0, 0]}
    for b in batches:
        used = (b["encoder_input_tokens"] != 0).any(-1) | (b["decoder_target_tokens"] != 0).any(-1)
        for side, key in (("inputs", "encoder_input_tokens"), ("targets", "decoder_target_tokens")):
            x = np.asarray(b[key])[used]
            tot[side][0] += int((x != 0).sum())
            tot[side][1] += x.size
    return {k: (n / d if d else 0.0) for k, (n, d) in tot.items()}


def unpack_row(row: Mapping[str, np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Inverse of packed_row: the (inputs, targets) segments of one packed row, in order."""
    n = int(max(row["encoder_segment_ids"].max(initial=0), row["decoder_segment_ids"].max(initial=0)))
    return [(row["encoder_input_tokens"][row["encoder_segment_ids"] == s],
             row["decoder_target_tokens"][row["decoder_segment_ids"] == s])
            for s in range(1, n + 1)]


# ------------------------------------------------------------------ seqio drop-in
# seqio's packed intermediate names (utils.trim_and_pack_dataset output) -> ours.
_SEQIO_PACKED = {"inputs": "encoder_input_tokens", "inputs_segment_ids": "encoder_segment_ids",
                 "inputs_positions": "encoder_positions", "targets": "decoder_target_tokens",
                 "targets_segment_ids": "decoder_segment_ids",
                 "targets_positions": "decoder_positions"}


def best_fit_pack_dataset(ds: Any, feature_lengths: Mapping[str, int], *, window: int = 512,
                          carry: int | None = None) -> Any:
    """Drop-in for seqio.utils.trim_and_pack_dataset on {"inputs", "targets"} (tf.data in and out).

    Emits the same features (inputs, inputs_segment_ids, inputs_positions, targets, ...),
    int32, padded to the lengths, with best-fit rows instead of greedy ones.
    """
    import tensorflow as tf  # noqa: WPS433 (the numpy packer stays TF-free)
    lengths = {"inputs": int(feature_lengths["inputs"]), "targets": int(feature_lengths["targets"])}

    # Trim and batch in tf.data first: handing examples to Python one at a time would cost
    # more than packing them.
    def trim(ex):
        inp, tgt = ex["inputs"][:lengths["inputs"]], ex["targets"][:lengths["targets"]]
        return {"inputs": inp, "targets": tgt, "n_in": tf.size(inp), "n_tgt": tf.size(tgt)}

    chunks = ds.map(trim, num_parallel_calls=tf.data.AUTOTUNE).padded_batch(
        window, padded_shapes={"inputs": [None], "targets": [None], "n_in": [], "n_tgt": []})

    def examples():
        for c in chunks.as_numpy_iterator():
            for inp, tgt, a, b in zip(c["inputs"], c["targets"], c["n_in"], c["n_tgt"]):
                yield {"inputs": inp[:a], "targets": tgt[:b]}

    def gen():
        for block in pack_blocks(examples(), lengths, window=window, carry=carry):
            yield {k: block[ours] for k, ours in _SEQIO_PACKED.items()}

    sig = {k: tf.TensorSpec([None, lengths["inputs" if k.startswith("inputs") else "targets"]],
                            tf.int32) for k in _SEQIO_PACKED}
    return tf.data.Dataset.from_generator(gen, output_signature=sig).unbatch()


def _make_converter_class():
    import seqio  # noqa: WPS433

    class BestFitEncDecFeatureConverter(seqio.EncDecFeatureConverter):
        """seqio.EncDecFeatureConverter with ext5's best-fit packer instead of greedy packing.

        Everything else (validation, decoder input shifting, loss weights, output features) is
        seqio's own code; with pack=False it is exactly seqio's converter. Usable wherever seqio or
        t5x take an encoder-decoder feature converter: `seqio.get_dataset(...,
        feature_converter=BestFitEncDecFeatureConverter(pack=True))`, or as a t5x
        EncoderDecoderModel subclass's FEATURE_CONVERTER_CLS.
        """

        def __init__(self, *args, pack_window: int = 512, pack_carry: int | None = None, **kwargs):
            super().__init__(*args, **kwargs)
            self._pack_window, self._pack_carry = pack_window, pack_carry

        def _pack_or_pad(self, ds, packed_lengths):
            if not self.pack:
                return super()._pack_or_pad(ds, packed_lengths)
            return best_fit_pack_dataset(ds, packed_lengths, window=self._pack_window,
                                         carry=self._pack_carry)

    return BestFitEncDecFeatureConverter


_LAZY: dict[str, Any] = {}


def __getattr__(name: str) -> Any:
    if name == "BestFitEncDecFeatureConverter":
        if name not in _LAZY:
            _LAZY[name] = _make_converter_class()
        return _LAZY[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
