"""End-to-end input pipeline benchmark on the embedded default mixture `local_default`.

  .venv/bin/python bench/pipeline.py [--batches 150] [--batch_size 32] [--grain] [--workers 0,2]
                                      [--positions 6,96,313] [--position_lengths 1024,256]

Read, preprocess, tokenize, mix, pack, batch -- two paths, same mixture, lengths (128 + 32, as
gin/local_tiny.gin), batch size and seed, in one run:

  seqio default  seqio.get_dataset(..., feature_converter=seqio.EncDecFeatureConverter(pack=True))
                 then .batch() (what t5x's utils.get_dataset does)
  ext5           ext5.data.pipeline.HostBatchIterator (seqio tasks -> best-fit numpy packer -> batches)

Reported: packed (non-padding) tokens per second of wall time and per CPU-second (process CPU time,
all threads: "per core"), rows per batch that hold data, non-padding fraction. The first batch
(dataset construction, tracing) is excluded from the timing. Then the cost of resuming at the end
position: ext5's state files (tf.data iterator checkpoint + packer arrays) vs replaying the stream.

--grain: the cached path side by side with today's, on `bench_local6` (local_default's six tasks whose
post-cache preprocessing the grain path runs, at local_default's rates; local_span_corruption is random after
its cache point, so it stays on tf.data): tf.data uncached (today's default), tf.data reading seqio's cache
(USE_CACHED_TASKS), and grain over ArrayRecord, in-process and with --workers worker processes (CPU time then
includes the workers'). The 6 tasks are cached with `ext5 cache` into --cache_dir first (kept for reruns). Then
the time to the first batch after a resume on both paths.

--positions 6,96,313: bytes of the data position per host for mixtures of that many tasks (copies of the six,
each reading the same cache), at --position_lengths, on both paths (tf.data: its iterator checkpoint files;
grain: its JSON); --tf_positions_max caps the tf.data sizes measured (they take minutes and gigabytes).
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


def _measure(it, n: int, cpu=time.process_time) -> dict:
    """Real tokens, wall and CPU seconds (`cpu`: a clock, e.g. _CPU() to count worker processes too) and fill
    over `n` batches; the first batch (construction and tracing) is not timed."""
    next(it)
    w, c = time.perf_counter(), cpu()
    tokens = slots = 0
    for _ in range(n):
        b = next(it)
        enc, dec = np.asarray(b["encoder_input_tokens"]), np.asarray(b["decoder_target_tokens"])
        tokens += int((enc != 0).sum() + (dec != 0).sum())
        slots += enc.size + dec.size
    return {"tokens": tokens, "wall": time.perf_counter() - w, "cpu": cpu() - c, "fill": tokens / slots}


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


# ------------------------------------------------------------------ grain vs tf.data (cached mixtures)
GRAIN_TASKS = ("local_cbqa", "local_classify", "local_nli", "local_rc", "local_scan", "local_summarize")


def _register_copies(n: int) -> str:
    """A mixture of n tasks cycling through GRAIN_TASKS (copies read the same data and cache); returns its name."""
    import seqio
    name = f"bench_local{n}"
    if name in seqio.MixtureRegistry.names():
        return name
    names = []
    for i in range(n):
        base = seqio.TaskRegistry.get(GRAIN_TASKS[i % len(GRAIN_TASKS)])
        if i < len(GRAIN_TASKS):
            names.append(base.name)
            continue
        copy = f"{base.name}_copy{i}"
        if copy not in seqio.TaskRegistry.names():
            seqio.TaskRegistry.add(copy, source=base.source, preprocessors=base.preprocessors,
                                   output_features=base.output_features)
            seqio.TaskRegistry.get(copy)._cache_dir = base.cache_dir
        names.append(copy)
    seqio.MixtureRegistry.add(name, [(t, 3000.0) for t in names])
    return name


def _ensure_cache(cache_dir: str) -> None:
    import seqio
    from ext5.commands.cache import cache_tasks
    cache_tasks(list(GRAIN_TASKS), cache_dir, min_shards=4, log=lambda *a: print(*a, file=sys.stderr))
    seqio.add_global_cache_dirs([cache_dir])
    for t in GRAIN_TASKS:
        seqio.TaskRegistry.get(t)._cache_dir = None


class _CPU:
    """CPU seconds of this process and its children (grain workers), while they run."""

    def __init__(self):
        try:
            import psutil
            self._p = psutil.Process()
        except ImportError:  # children not counted
            self._p = None

    def __call__(self) -> float:
        if self._p is None:
            return time.process_time()
        total = sum(self._p.cpu_times()[:2])
        for c in self._p.children(recursive=True):
            try:
                total += sum(c.cpu_times()[:2])
            except Exception:  # noqa: BLE001 -- a child that just exited
                pass
        return total



def _grain(name, batch_size, seed, lengths=LENGTHS, workers=0):
    from ext5.data import batch_sources
    return batch_sources.grain_source(name, "train", lengths["inputs"], lengths["targets"], batch_size, seed=seed,
                                      workers=workers)


def grain_vs_tf(args) -> list[str]:
    from ext5.data.pipeline import HostBatchIterator
    _ensure_cache(args.cache_dir)
    name = _register_copies(len(GRAIN_TASKS))
    bs, seed = args.batch_size, args.seed
    paths = [("tf.data uncached (today)", lambda: HostBatchIterator(name, LENGTHS, bs, seed=seed)),
             ("tf.data, seqio cache", lambda: HostBatchIterator(name, LENGTHS, bs, seed=seed, use_cached=True))]
    for w in args.workers:
        paths.append((f"grain, {w} workers" if w else "grain, in-process",
                      lambda w=w: _grain(name, bs, seed, workers=w)))
    lines = [f"## {name}: {len(GRAIN_TASKS)} cached tasks, {LENGTHS['inputs']}+{LENGTHS['targets']}, batch {bs}, "
             f"{args.batches} batches",
             f"{'path':28s}{'tokens/s':>10s}{'tokens/CPU-s':>14s}{'fill':>7s}{'wall s':>8s}{'CPU s':>8s}"]
    res = {}
    for label, make in paths:
        it = make()
        r = _measure(it, args.batches, cpu=_CPU())
        if hasattr(it, "close"):
            it.close()
        res[label] = r
        lines.append(f"{label:28s}{r['tokens'] / r['wall']:10.0f}{r['tokens'] / r['cpu']:14.0f}"
                     f"{r['fill']:7.3f}{r['wall']:8.1f}{r['cpu']:8.1f}")
    g, t = res["grain, in-process"] if "grain, in-process" in res else None, res["tf.data uncached (today)"]
    if g:
        ratio = (g["tokens"] / g["cpu"]) / (t["tokens"] / t["cpu"])
        lines.append(f"grain (in-process) / tf.data uncached: {ratio:.2f}x packed tokens per CPU-second")
    # Time to the first batch after a resume, both paths, at the same position.
    lines.append(f"resume at batch {args.resume_at}: restore + first batch")
    for label, make, files in (("tf.data uncached", lambda: HostBatchIterator(name, LENGTHS, bs, seed=seed), True),
                               ("grain", lambda: _grain(name, bs, seed), False)):
        a = make()
        for _ in range(args.resume_at):
            next(a)
        d = os.path.join(tempfile.mkdtemp(), "pos")
        t0 = time.perf_counter()
        state = json.loads(json.dumps(a.state(d)))
        save = time.perf_counter() - t0
        size = len(json.dumps(state)) + sum(os.path.getsize(os.path.join(r, f))
                                            for r, _, fs in os.walk(d) for f in fs)
        want = next(a)
        b = make()
        t0 = time.perf_counter()
        b.restore(state, d)
        got = next(b)
        dt = time.perf_counter() - t0
        same = all(np.array_equal(want[k], got[k]) for k in want)
        lines.append(f"  {label:18s} {dt:6.2f}s (position {size / 2**20:.3f} MiB, written in {save:.2f}s; "
                     f"next batch identical: {same})")
    return lines


def positions(args) -> list[str]:
    """Data-position bytes per host for mixtures of N tasks, both paths."""
    from ext5.data.pipeline import HostBatchIterator
    _ensure_cache(args.cache_dir)
    li, lt = args.position_lengths
    lengths = {"inputs": li, "targets": lt}
    lines = [f"## data position per host, {li}+{lt}, batch {args.batch_size}, after {args.position_batches} batches",
             f"{'tasks':>6s}{'tf.data MiB':>14s}{'write s':>9s}{'grain bytes':>14s}"]
    for n in args.positions:
        name = _register_copies(n)
        g = _grain(name, args.batch_size, args.seed, lengths)
        for _ in range(args.position_batches):
            next(g)
        gbytes = len(json.dumps(g.state()))
        tf_mib, tf_s = "-", "-"
        if n <= args.tf_positions_max:
            it = HostBatchIterator(name, lengths, args.batch_size, seed=args.seed)
            for _ in range(args.position_batches):
                next(it)
            d = os.path.join(tempfile.mkdtemp(), "pos")
            t0 = time.perf_counter()
            state = it.state(d)
            tf_s = f"{time.perf_counter() - t0:.2f}"
            files = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(d) for f in fs)
            tf_mib = f"{(len(json.dumps(state)) + files) / 2**20:.1f}"
        lines.append(f"{n:6d}{tf_mib:>14s}{tf_s:>9s}{gbytes:14d}")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batches", type=int, default=150)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume_at", type=int, default=300)
    p.add_argument("--grain", action="store_true", help="add the grain path (cached tasks) side by side")
    p.add_argument("--skip_seqio", action="store_true", help="skip the seqio-default vs ext5 comparison")
    p.add_argument("--workers", type=lambda s: [int(x) for x in s.split(",")], default=[0],
                   help="grain worker-process counts to measure, e.g. 0,2")
    p.add_argument("--cache_dir", default=os.path.join(tempfile.gettempdir(), "ext5_bench_cache"))
    p.add_argument("--positions", type=lambda s: [int(x) for x in s.split(",")], default=[],
                   help="measure data-position bytes for mixtures of these many tasks, e.g. 6,96,313")
    p.add_argument("--position_lengths", type=lambda s: [int(x) for x in s.split(",")], default=[1024, 256])
    p.add_argument("--position_batches", type=int, default=20)
    p.add_argument("--tf_positions_max", type=int, default=96, help="largest mixture measured on tf.data")
    args = p.parse_args(argv)
    import ext5.tasks  # noqa: F401  registers local_default
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines = [f"# bench/pipeline.py --batches {args.batches} --batch_size {args.batch_size} "
             f"(local_default, {LENGTHS['inputs']}+{LENGTHS['targets']}, {cores} CPU cores visible)",
             f"{'path':28s}{'tokens/s':>10s}{'tokens/CPU-s':>14s}{'fill':>7s}{'wall s':>8s}{'CPU s':>8s}"]
    res = {}
    for name, make in (() if args.skip_seqio else (("seqio default (greedy pack)", seqio_default),
                                                   ("ext5 (best-fit pack)", ext5_path))):
        r = _measure(make(args.batch_size, args.seed), args.batches)
        res[name] = r
        lines.append(f"{name:28s}{r['tokens'] / r['wall']:10.0f}{r['tokens'] / r['cpu']:14.0f}"
                     f"{r['fill']:7.3f}{r['wall']:8.1f}{r['cpu']:8.1f}")
    if res:
        s, e = res["seqio default (greedy pack)"], res["ext5 (best-fit pack)"]
        lines.append(f"ext5 / seqio: {(e['tokens'] / e['cpu']) / (s['tokens'] / s['cpu']):.2f}x packed tokens per "
                     f"CPU-second, {(e['tokens'] / e['wall']) / (s['tokens'] / s['wall']):.2f}x per wall second")
        if args.resume_at:
            lines += [""] + resume_cost(args.batch_size, args.seed, args.resume_at)
    if args.grain:
        lines += [""] + grain_vs_tf(args)
    if args.positions:
        lines += [""] + positions(args)
    print("\n".join(lines), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
