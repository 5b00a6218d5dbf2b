"""Packing benchmark: ext5's best-fit packer vs seqio.utils.trim_and_pack_dataset, same run.

  .venv/bin/python bench/packing.py [--only t0|local] [--n 20000]

(a) "t0": a T0-like synthetic length mix -- inputs log-normal with median 120 tokens (sigma 0.9,
    clipped 4..1024); targets median 5 (sigma 0.6), 15% long targets median 60 (sigma 0.5),
    clipped 1..256; 20,000 examples, seed 0; packed into 1024 + 256.
(b) "local": the lengths of the embedded default mixture `local_default` (20,000 examples of
    the shuffled training stream, seed 0), packed into its configured 128 + 32.

Reported per packer: rows used, rows / lower bound (lower bound = ceil(max(total input tokens /
input_len, total target tokens / target_len))), non-padding fraction of encoder_input_tokens and
decoder_target_tokens, examples/s. The seqio column runs trim_and_pack_dataset on a tf.data
dataset of the same examples; "ext5 (tf.data)" is ext5's drop-in for it
(packing.best_fit_pack_dataset, what BestFitEncDecFeatureConverter uses); "ext5 (numpy)" is
the streaming packer the training pipeline calls.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402


def t0_like_lengths(n: int = 20000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(input lengths, target lengths) of the T0-like mix, exactly as the issue specifies."""
    rng = np.random.default_rng(seed)
    inputs = np.exp(np.log(120) + 0.9 * rng.standard_normal(n))
    short = np.exp(np.log(5) + 0.6 * rng.standard_normal(n))
    long_ = np.exp(np.log(60) + 0.5 * rng.standard_normal(n))
    targets = np.where(rng.random(n) < 0.15, long_, short)
    return (np.clip(np.rint(inputs), 4, 1024).astype(np.int64),
            np.clip(np.rint(targets), 1, 256).astype(np.int64))


def examples_of_lengths(li: np.ndarray, lt: np.ndarray, seed: int = 1) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"inputs": rng.integers(2, 32000, a, dtype=np.int32),
             "targets": rng.integers(2, 32000, b, dtype=np.int32)} for a, b in zip(li, lt)]


def local_default_examples(n: int, lengths: dict[str, int]) -> list[dict]:
    import seqio
    import ext5.tasks  # noqa: F401  registers local_default
    ds = seqio.get_mixture_or_task("local_default").get_dataset(
        sequence_length=lengths, split="train", shuffle=True, seed=0, num_epochs=None)
    ds = ds.map(lambda ex: {"inputs": ex["inputs"], "targets": ex["targets"]}).take(n)
    return list(ds.as_numpy_iterator())


def _tf_dataset(examples: list[dict]):
    """In-memory tf.data dataset of the examples (ragged slices, so input costs little)."""
    import tensorflow as tf
    cols = {}
    for k in ("inputs", "targets"):
        vals = np.concatenate([e[k] for e in examples]).astype(np.int32)
        cols[k] = tf.RaggedTensor.from_row_lengths(vals, [len(e[k]) for e in examples])
    return tf.data.Dataset.from_tensor_slices(cols)


def _stats(rows_in: list[np.ndarray], rows_tgt: list[np.ndarray]) -> dict:
    enc = np.concatenate(rows_in)
    dec = np.concatenate(rows_tgt)
    return {"rows": len(enc), "enc_fill": float((enc != 0).mean()), "dec_fill": float((dec != 0).mean())}


def run_seqio(examples: list[dict], lengths: dict[str, int]) -> dict:
    import seqio
    ds = seqio.utils.trim_and_pack_dataset(_tf_dataset(examples), lengths).batch(256)
    t = time.perf_counter()
    got = list(ds.as_numpy_iterator())
    dt = time.perf_counter() - t
    return {**_stats([b["inputs"] for b in got], [b["targets"] for b in got]), "seconds": dt}


def run_ext5_tf(examples: list[dict], lengths: dict[str, int]) -> dict:
    from ext5.data import packing
    ds = packing.best_fit_pack_dataset(_tf_dataset(examples), lengths).batch(256)
    t = time.perf_counter()
    got = list(ds.as_numpy_iterator())
    dt = time.perf_counter() - t
    return {**_stats([b["inputs"] for b in got], [b["targets"] for b in got]), "seconds": dt}


def run_ext5_numpy(examples: list[dict], lengths: dict[str, int]) -> dict:
    from ext5.data import packing
    t = time.perf_counter()
    blocks = list(packing.pack_blocks(examples, lengths))
    dt = time.perf_counter() - t
    return {**_stats([b["encoder_input_tokens"] for b in blocks],
                     [b["decoder_target_tokens"] for b in blocks]), "seconds": dt}


def lower_bound(examples: list[dict], lengths: dict[str, int]) -> int:
    ti = sum(min(len(e["inputs"]), lengths["inputs"]) for e in examples)
    tt = sum(min(len(e["targets"]), lengths["targets"]) for e in examples)
    return math.ceil(max(ti / lengths["inputs"], tt / lengths["targets"]))


def report(title: str, examples: list[dict], lengths: dict[str, int]) -> list[str]:
    lb = lower_bound(examples, lengths)
    runs = [("seqio trim_and_pack", run_seqio), ("ext5 best-fit (numpy)", run_ext5_numpy),
            ("ext5 best-fit (tf.data)", run_ext5_tf)]
    lines = [f"{title}: {len(examples)} examples, lengths {lengths['inputs']}+{lengths['targets']}, "
             f"lower bound {lb} rows",
             f"{'packer':26s}{'rows':>8s}{'rows/LB':>9s}{'enc fill':>10s}{'dec fill':>10s}{'examples/s':>12s}"]
    res = {}
    for name, fn in runs:
        r = fn(examples, lengths)
        res[name] = r
        lines.append(f"{name:26s}{r['rows']:8d}{r['rows'] / lb:9.3f}{r['enc_fill']:10.3f}"
                     f"{r['dec_fill']:10.3f}{len(examples) / r['seconds']:12.0f}")
    s, e = res["seqio trim_and_pack"], res["ext5 best-fit (numpy)"]
    lines.append(f"ext5 (numpy) uses {e['rows'] / s['rows']:.3f}x seqio's rows at "
                 f"{s['seconds'] / e['seconds']:.2f}x its examples/s")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", choices=("t0", "local"), default=None)
    p.add_argument("--n", type=int, default=20000)
    args = p.parse_args(argv)
    out = [f"# bench/packing.py --n {args.n} ({os.cpu_count()} CPUs)"]
    if args.only in (None, "t0"):
        li, lt = t0_like_lengths(args.n, seed=0)
        out += report("(a) T0-like synthetic mix", examples_of_lengths(li, lt),
                      {"inputs": 1024, "targets": 256})
    if args.only in (None, "local"):
        lengths = {"inputs": 128, "targets": 32}
        out += [""] + report("(b) local_default lengths", local_default_examples(args.n, lengths), lengths)
    print("\n".join(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
