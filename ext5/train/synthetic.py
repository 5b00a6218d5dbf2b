"""Synthetic packed batches, a pure function of (seed, step, host shard): for benchmarks where TensorFlow is
absent (GPU machines) and for trainer tests that must not depend on the data pipeline."""
from __future__ import annotations

import numpy as np


class SyntheticBatches:
    """Iterator of host batches in the packed EncDecFeatureConverter format, two segments per row
    (an `ext5.data.source.BatchSource`).

    Each host slices rows [shard_index * host_batch, ...) out of the same global batch, so a run on N hosts
    sees exactly the rows a 1-host run sees.
    """

    def __init__(self, *, input_len: int, target_len: int, vocab_size: int, host_batch_size: int,
                 shard_index: int = 0, num_shards: int = 1, seed: int = 0, packed: bool = True):
        self.input_len, self.target_len, self.vocab = input_len, target_len, vocab_size
        self.host_batch, self.shard, self.num_shards = host_batch_size, shard_index, num_shards
        self.seed, self.packed = seed, packed
        self.step = 0

    def __iter__(self):
        return self

    def _segments(self, rng: np.random.Generator, n: int, length: int, min_len: int):
        toks = rng.integers(2, self.vocab, size=(n, length), dtype=np.int32)
        seg = np.zeros((n, length), np.int32)
        pos = np.zeros((n, length), np.int32)
        for r in range(n):
            a = int(rng.integers(min_len, max(min_len + 1, length // 2)))
            b = int(rng.integers(min_len, max(min_len + 1, length - a))) if self.packed else 0
            seg[r, :a], pos[r, :a] = 1, np.arange(a)
            if b:
                seg[r, a:a + b], pos[r, a:a + b] = 2, np.arange(b)
        toks = np.where(seg > 0, toks, 0).astype(np.int32)
        return toks, seg, pos

    def global_batch(self, step: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, step])
        n = self.host_batch * self.num_shards
        enc, enc_seg, enc_pos = self._segments(rng, n, self.input_len, 2)
        tgt, dec_seg, dec_pos = self._segments(rng, n, self.target_len, 1)
        dec_in = np.where(dec_pos == 0, 0, np.roll(tgt, 1, axis=1)) * (dec_seg > 0)
        out = {"encoder_input_tokens": enc, "decoder_target_tokens": tgt,
               "decoder_input_tokens": dec_in.astype(np.int32),
               "decoder_loss_weights": (dec_seg > 0).astype(np.int32)}
        if self.packed:
            out.update(encoder_segment_ids=enc_seg, encoder_positions=enc_pos,
                       decoder_segment_ids=dec_seg, decoder_positions=dec_pos)
        return out

    def __next__(self) -> dict[str, np.ndarray]:
        g = self.global_batch(self.step)
        self.step += 1
        lo = self.shard * self.host_batch
        return {k: v[lo:lo + self.host_batch] for k, v in g.items()}

    def state(self, directory: str | None = None) -> dict:
        """Position (a pure function of the step: nothing to write under `directory`)."""
        return {"kind": "synthetic", "step": self.step, "seed": self.seed}

    def restore(self, state: dict, directory: str | None = None) -> None:
        self.step = int(state["step"])
