"""End-to-end input pipeline benchmark on the embedded default mixture `local_default`.

  .venv/bin/python bench/pipeline.py [--batches 150] [--batch_size 32]

Read, preprocess, tokenize, mix, pack, batch -- two paths, same mixture, lengths (128 + 32, as
gin/local_tiny.gin), batch size and seed, in one run:

  seqio default  seqio.get_dataset(..., feature_converter=seqio.EncDecFeatureConverter(pack=True))
                 then .batch() (what t5x's utils.get_dataset does)
  ext5           ext5.data.pipeline.HostBatchIterator (seqio tasks -> best-fit numpy packer -> batches)

Reported: packed (non-padding) tokens per second of wall time and per CPU-second (process CPU time,
all threads: "per core"), rows per batch that hold data, non-padding fraction. The first batch
(dataset construction, tracing) is excluded from the timing. Then the cost of resuming at the end
position: ext5's state files (tf.data iterator checkpoint + packer arrays) vs replaying the stream.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

LENGTHS = {"inputs": 128, "targets": 32}


def _measure(it, n: int) -> dict:
    next(it)  # construction and tracing: not timed
    w, c = time.perf_counter(), time.process_time()
    tokens = slots = 0
    for _ in range(n):
        b = next(it)
        enc, dec = np.asarray(b["encoder_input_tokens"]), np.asarray(b["decoder_target_tokens"])
        tokens += int((enc != 0).sum() + (dec != 0).sum())
        slots += enc.size + dec.size
    wall, cpu = time.perf_counter() - w, time.process_time() - c
    return {"tokens": tokens, "wall": wall, "cpu": cpu, "fill": tokens / slots}


def seqio_default(batch_size: int, seed: int):
    import seqio
    ds = seqio.get_dataset("local_default", LENGTHS, dataset_split="train", shuffle=True, num_epochs=None,
                           feature_converter=seqio.EncDecFeatureConverter(pack=True), seed=seed)
    return ds.batch(batch_size, drop_remainder=True).as_numpy_iterator()


def ext5_path(batch_size: int, seed: int):
    from ext5.data.pipeline import HostBatchIterator
    return HostBatchIterator("local_default", LENGTHS, batch_size, seed=seed)


def resume_cost(batch_size: int, seed: int, position: int) -> list[str]:
    from ext5.data.pipeline import HostBatchIterator
    a = HostBatchIterator("local_default", LENGTHS, batch_size, seed=seed)
    for _ in range(position):
        next(a)
    d = os.path.join(tempfile.mkdtemp(), "pos")
    t = time.perf_counter()
    state = json.loads(json.dumps(a.state(d)))
    save = time.perf_counter() - t
    size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(d) for f in fs)
    want = next(a)
    out = [f"resume at batch {position}: writing the position files took {save:.2f}s ({size / 1e6:.1f} MB)"]
    for label, directory in (("from files", d), ("replay (fast-forward)", None)):
        b = HostBatchIterator("local_default", LENGTHS, batch_size, seed=seed)
        t = time.perf_counter()
        b.restore(state, directory)
        got = next(b)
        dt = time.perf_counter() - t
        same = all(np.array_equal(want[k], got[k]) for k in want)
        out.append(f"  restore {label:22s} + first batch: {dt:6.2f}s  (next batch identical: {same})")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batches", type=int, default=150)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume_at", type=int, default=300)
    args = p.parse_args(argv)
    import ext5.tasks  # noqa: F401  registers local_default
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines = [f"# bench/pipeline.py --batches {args.batches} --batch_size {args.batch_size} "
             f"(local_default, {LENGTHS['inputs']}+{LENGTHS['targets']}, {cores} CPU cores visible)",
             f"{'path':28s}{'tokens/s':>10s}{'tokens/CPU-s':>14s}{'fill':>7s}{'wall s':>8s}{'CPU s':>8s}"]
    res = {}
    for name, make in (("seqio default (greedy pack)", seqio_default), ("ext5 (best-fit pack)", ext5_path)):
        r = _measure(make(args.batch_size, args.seed), args.batches)
        res[name] = r
        lines.append(f"{name:28s}{r['tokens'] / r['wall']:10.0f}{r['tokens'] / r['cpu']:14.0f}"
                     f"{r['fill']:7.3f}{r['wall']:8.1f}{r['cpu']:8.1f}")
    s, e = res["seqio default (greedy pack)"], res["ext5 (best-fit pack)"]
    lines.append(f"ext5 / seqio: {(e['tokens'] / e['cpu']) / (s['tokens'] / s['cpu']):.2f}x packed tokens per "
                 f"CPU-second, {(e['tokens'] / e['wall']) / (s['tokens'] / s['wall']):.2f}x per wall second")
    if args.resume_at:
        lines += [""] + resume_cost(args.batch_size, args.seed, args.resume_at)
    print("\n".join(lines), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
