"""Best-fit packing of (inputs, targets) examples into rows with seqio's packed features.

seqio's trim_and_pack keeps one open row and starts a new one whenever the next example does
not fit, so rows are often far from full. Here each bounded window of examples (default 512) is
packed best-fit-decreasing over both lengths at once: examples sorted by their size and each put
in the open row it leaves the least room in (a row holds segments whose inputs total <=
input_len *and* targets total <= target_len). The least-filled rows of a window stay open for
the next window once, so a window boundary wastes little. Pure numpy, deterministic (stable
sorts, ties by arrival order), streaming, and no example is dropped: over-long examples are
truncated to the lengths, as seqio trims.

Rows carry exactly seqio.EncDecFeatureConverter(pack=True)'s features (see module `FEATURES`):
segment ids 1-based with 0 = padding, positions restarting at 0 per segment, decoder inputs
shifted right within each segment with 0 (BOS) at segment starts, loss weights 1 on real
target tokens.
"""
from __future__ import annotations

from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np

PACKED_FEATURES = ("encoder_input_tokens", "encoder_segment_ids", "encoder_positions",
                   "decoder_target_tokens", "decoder_input_tokens", "decoder_loss_weights",
                   "decoder_segment_ids", "decoder_positions")
UNPACKED_FEATURES = ("encoder_input_tokens", "decoder_target_tokens", "decoder_input_tokens",
                     "decoder_loss_weights")
_ENCODER = ("encoder_input_tokens", "encoder_segment_ids", "encoder_positions")

Row = dict[str, np.ndarray]
Example = Mapping[str, Sequence[int] | np.ndarray]


def _lengths(feature_lengths: Mapping[str, int]) -> tuple[int, int]:
    return int(feature_lengths["inputs"]), int(feature_lengths["targets"])


def _trim(ex: Example, input_len: int, target_len: int) -> tuple[np.ndarray, np.ndarray]:
    return (np.asarray(ex["inputs"], np.int32)[:input_len],
            np.asarray(ex["targets"], np.int32)[:target_len])


def packed_row(segments: Sequence[tuple[np.ndarray, np.ndarray]], input_len: int,
               target_len: int) -> Row:
    """Features of one packed row holding `segments` [(inputs, targets), ...] in order."""
    row = {k: np.zeros(input_len if k in _ENCODER else target_len, np.int32)
           for k in PACKED_FEATURES}
    oi = ot = 0
    for seg_id, (inp, tgt) in enumerate(segments, start=1):
        n, m = len(inp), len(tgt)
        if oi + n > input_len or ot + m > target_len:
            raise ValueError("segments overflow the row")
        row["encoder_input_tokens"][oi:oi + n] = inp
        row["encoder_segment_ids"][oi:oi + n] = seg_id
        row["encoder_positions"][oi:oi + n] = np.arange(n)
        row["decoder_target_tokens"][ot:ot + m] = tgt
        row["decoder_input_tokens"][ot + 1:ot + m] = tgt[:-1]  # [ot] stays 0 = BOS
        row["decoder_segment_ids"][ot:ot + m] = seg_id
        row["decoder_positions"][ot:ot + m] = np.arange(m)
        oi, ot = oi + n, ot + m
    # As seqio: loss on every non-padding target position.
    row["decoder_loss_weights"] = (row["decoder_target_tokens"] != 0).astype(np.int32)
    return row


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


class _OpenRow:
    __slots__ = ("segments", "room_in", "room_tgt", "carried")

    def __init__(self, input_len: int, target_len: int):
        self.segments: list[tuple[np.ndarray, np.ndarray]] = []
        self.room_in, self.room_tgt = input_len, target_len
        self.carried = False


def _best_fit(window: list[tuple[np.ndarray, np.ndarray]], rows: list[_OpenRow],
              input_len: int, target_len: int) -> None:
    """Places every example of `window` into `rows` (appending new rows as needed)."""
    li = np.array([len(x[0]) for x in window], np.float64)
    lt = np.array([len(x[1]) for x in window], np.float64)
    size = li / input_len + lt / target_len
    order = np.argsort(-size, kind="stable")  # decreasing size, ties by arrival
    room_in = np.array([r.room_in for r in rows] + [0] * len(window), np.int64)
    room_tgt = np.array([r.room_tgt for r in rows] + [0] * len(window), np.int64)
    n_rows = len(rows)
    for k in order:
        a, b = int(li[k]), int(lt[k])
        ri, rt = room_in[:n_rows], room_tgt[:n_rows]
        fits = (ri >= a) & (rt >= b)
        if fits.any():
            slack = (ri - a) / input_len + (rt - b) / target_len
            j = int(np.argmin(np.where(fits, slack, np.inf)))  # first best on ties
        else:
            j = n_rows
            rows.append(_OpenRow(input_len, target_len))
            room_in[j], room_tgt[j] = input_len, target_len
            n_rows += 1
        rows[j].segments.append(window[k])
        room_in[j] -= a
        room_tgt[j] -= b
        rows[j].room_in, rows[j].room_tgt = int(room_in[j]), int(room_tgt[j])


def pack(examples: Iterable[Example], feature_lengths: Mapping[str, int], *,
         window: int = 512, carry: int | None = None) -> Iterator[Row]:
    """Packs a stream of {"inputs", "targets"} token arrays into rows (generator of Row).

    Args:
      examples: iterable of examples with 1-D int token arrays "inputs" and "targets".
      feature_lengths: {"inputs": input_len, "targets": target_len}.
      window: examples buffered per best-fit round (bounds memory and latency).
      carry: how many least-filled rows of a window may stay open for the next window
        (default window // 64); a row is carried at most once.
    Examples with no tokens at all occupy nothing and produce no segment.
    """
    input_len, target_len = _lengths(feature_lengths)
    carry = max(1, window // 64) if carry is None else carry
    open_rows: list[_OpenRow] = []
    buf: list[tuple[np.ndarray, np.ndarray]] = []

    def flush(final: bool) -> Iterator[Row]:
        nonlocal open_rows
        rows = open_rows
        if buf:
            _best_fit(buf, rows, input_len, target_len)
            buf.clear()
        keep: list[_OpenRow] = []
        if not final and carry:
            fresh = [r for r in rows if not r.carried]
            # Least filled first; stable so ties keep creation order.
            fresh.sort(key=lambda r: -(r.room_in / input_len + r.room_tgt / target_len))
            keep = fresh[:carry]
        keep_ids = {id(r) for r in keep}
        for r in rows:
            if id(r) not in keep_ids and r.segments:
                yield packed_row(r.segments, input_len, target_len)
        for r in keep:
            r.carried = True
        open_rows = [r for r in rows if id(r) in keep_ids]

    for ex in examples:
        inp, tgt = _trim(ex, input_len, target_len)
        if len(inp) == 0 and len(tgt) == 0:
            continue
        buf.append((inp, tgt))
        if len(buf) >= window:
            yield from flush(final=False)
    yield from flush(final=True)


def pad(examples: Iterable[Example], feature_lengths: Mapping[str, int]) -> Iterator[Row]:
    """Unpacked mode: one example per row (generator of Row)."""
    input_len, target_len = _lengths(feature_lengths)
    for ex in examples:
        yield unpacked_row(ex, input_len, target_len)


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
