"""Rank-classification scoring: shared encoder + shared cross K/V vs per-choice duplication, one run.

    .venv/bin/python bench/rank_eval.py            # CPU: T5.1.1-small, 2 examples, 256 / 8..16 tokens
    .venv/bin/python bench/rank_eval.py --size base --batch 1
    python bench/rank_eval.py --gpu                # accelerator: base, batch 32, bf16

Both sides score the same C answer choices per example (summed target log-likelihood):
  duplicated  every choice is its own row: the input is repeated C times and the whole model runs on
              B*C rows (what scoring the rank-classification rows one by one does);
  shared      `ext5.model.scoring.score_choices`' computation: the encoder and every decoder layer's
              cross-attention keys/values run once per example, the decoder runs on the B*C choices.
FLOPs are reported two ways: XLA's count for the compiled function (`compiled.cost_analysis()['flops']`,
all ops) and an analytic matmul count (`ext5.model.flops.forward_flops`). Times are medians of timed
calls after one warm-up. The two sides' scores are checked to agree before anything is printed.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def _inputs(cfg, batch: int, choices: int, input_len: int, min_target: int, target_len: int, seed: int = 0):
    """Inputs of 75-100% of input_len real tokens; targets of min_target..target_len tokens."""
    import numpy as np
    rng = np.random.default_rng(seed)
    enc = rng.integers(2, cfg.vocab_size, size=(batch, input_len)).astype(np.int32)
    for r, n in enumerate(rng.integers(int(0.75 * input_len), input_len + 1, size=batch)):
        enc[r, n:] = 0
    tgt = rng.integers(2, cfg.vocab_size, size=(batch, choices, target_len)).astype(np.int32)
    lengths = rng.integers(min_target, target_len + 1, size=(batch, choices))
    tgt = np.where(np.arange(target_len)[None, None] < lengths[..., None], tgt, 0).astype(np.int32)
    return enc, tgt


def analytic_flops(cfg, batch: int, choices: int, input_len: int, target_len: int) -> tuple[float, float]:
    """(duplicated, shared) matmul FLOPs. forward_flops(.., target_len=0) is exactly the encoder plus the
    cross-attention key/value projections, the part that sharing runs once per example."""
    from ext5.model.flops import forward_flops
    rows = batch * choices
    dup = forward_flops(cfg, rows, input_len, target_len)
    per_example = forward_flops(cfg, batch, input_len, 0)
    per_choice = dup - forward_flops(cfg, rows, input_len, 0)
    return dup, per_example + per_choice


def _time(fn, args, repeats: int) -> float:
    import jax
    import numpy as np
    jax.block_until_ready(fn(*args))  # warm-up (compiled already; first-call transfers)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def run(args) -> list[dict]:
    import jax
    import numpy as np
    from flax import linen as nn
    from ext5.model import configs
    from ext5.model.scoring import log_likelihood, shared_log_likelihood, shift_right
    from ext5.model.t5 import Transformer, init_params

    cfg = configs.get_config(args.size, dtype=args.dtype)
    model = Transformer(cfg)
    params = jax.jit(lambda k: nn.meta.unbox(init_params(cfg, k)))(jax.random.PRNGKey(0))
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
    print(f"T5.1.1-{args.size} ({n_params / 1e6:.0f}M params, {args.dtype}), batch {args.batch} examples, "
          f"inputs {args.input_len} tokens, targets {args.min_target}..{args.target_len} tokens; "
          f"jax {jax.__version__} on {jax.devices()[0].device_kind} ({jax.default_backend()})")

    @jax.jit
    def duplicated(p, enc_rows, tgt_rows):
        return log_likelihood(model, p, enc_rows, shift_right(tgt_rows), tgt_rows)

    @jax.jit
    def shared(p, enc, tgt):
        return shared_log_likelihood(model, p, enc, tgt)

    rows = []
    for c in args.choices:
        enc, tgt = _inputs(cfg, args.batch, c, args.input_len, args.min_target, args.target_len)
        b, t = args.batch, args.target_len
        enc_rows, tgt_rows = np.repeat(enc, c, axis=0), tgt.reshape(b * c, t)  # host-side duplication
        dup_args, sh_args = (params, enc_rows, tgt_rows), (params, enc, tgt)
        dup_c, sh_c = duplicated.lower(*dup_args).compile(), shared.lower(*sh_args).compile()
        ref = np.asarray(dup_c(*dup_args)).reshape(b, c)
        got = np.asarray(sh_c(*sh_args))
        tol = 1e-3 if args.dtype == "float32" else 0.5
        if not np.allclose(got, ref, atol=tol, rtol=tol):
            raise SystemExit(f"shared and duplicated scores differ: {got} vs {ref}")
        flops = [float(_cost(x)["flops"]) for x in (dup_c, sh_c)]
        analytic = analytic_flops(cfg, b, c, args.input_len, t)
        times = [_time(dup_c, dup_args, args.repeats), _time(sh_c, sh_args, args.repeats)]
        rows.append(dict(choices=c, t_dup=times[0], t_shared=times[1], f_dup=flops[0], f_shared=flops[1],
                         a_dup=analytic[0], a_shared=analytic[1]))
    return rows


def _cost(compiled) -> dict:
    ca = compiled.cost_analysis()
    return ca[0] if isinstance(ca, (list, tuple)) else ca


def print_table(rows: list[dict], batch: int) -> None:
    print(f"{'choices':>7} | {'ms dup':>9} {'ms shared':>9} {'speed-up':>8} | {'GFLOP dup':>9} "
          f"{'GFLOP sh.':>9} {'ratio':>6} (XLA) | {'GFLOP dup':>9} {'GFLOP sh.':>9} {'ratio':>6} (analytic)")
    for r in rows:
        print(f"{r['choices']:>7} | {1e3 * r['t_dup']:>9.1f} {1e3 * r['t_shared']:>9.1f} "
              f"{r['t_dup'] / r['t_shared']:>7.2f}x | {r['f_dup'] / 1e9:>9.1f} "
              f"{r['f_shared'] / 1e9:>9.1f} {r['f_dup'] / r['f_shared']:>5.2f}x       | "
              f"{r['a_dup'] / 1e9:>9.1f} {r['a_shared'] / 1e9:>9.1f} {r['a_dup'] / r['a_shared']:>5.2f}x")
    print(f"(per call of {batch} examples; 'ratio' = duplicated / shared FLOPs; target >= 2.5x at 4 choices)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default=None, help="T5.1.1 size (default small; base with --gpu)")
    p.add_argument("--batch", type=int, default=None, help="examples per call (default 2; 32 with --gpu)")
    p.add_argument("--input_len", type=int, default=256)
    p.add_argument("--target_len", type=int, default=16, help="padded target length (longest choice)")
    p.add_argument("--min_target", type=int, default=8, help="shortest choice")
    p.add_argument("--choices", default="2,4", help="comma-separated numbers of answer choices")
    p.add_argument("--repeats", type=int, default=None, help="timed calls (median; default 3, 20 with --gpu)")
    p.add_argument("--dtype", default=None, help="activation dtype (default float32; bfloat16 with --gpu)")
    p.add_argument("--gpu", action="store_true", help="accelerator defaults: base, batch 32, bf16")
    args = p.parse_args(argv)
    args.size = args.size or ("base" if args.gpu else "small")
    args.batch = args.batch or (32 if args.gpu else 2)
    args.repeats = args.repeats or (20 if args.gpu else 3)
    args.dtype = args.dtype or ("bfloat16" if args.gpu else "float32")
    args.choices = [int(c) for c in args.choices.split(",")]
    print_table(run(args), args.batch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
