"""Train-step throughput: ext5 (JAX) vs Hugging Face transformers' PyTorch T5, same config and batch, one run.

    .venv/bin/python bench/train_step.py                      # CPU: T5.1.1-small, batch 8, 128/32 tokens
    .venv/bin/python bench/train_step.py --size tiny --batch 32
    python bench/train_step.py --mfu --sizes base,large       # GPU machine: MFU on synthetic batches (no TF)

Both sides run forward + backward + an Adafactor update on identical packed-free batches (float32 on CPU).
Prints steps/s, tokens/s and the ext5 / transformers ratio. The MFU mode uses only the TF-free trainer core.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def _batch(cfg, batch: int, input_len: int, target_len: int, seed: int = 0):
    import numpy as np
    rng = np.random.default_rng(seed)
    enc = rng.integers(2, cfg.vocab_size, size=(batch, input_len)).astype(np.int32)
    tgt = rng.integers(2, cfg.vocab_size, size=(batch, target_len)).astype(np.int32)
    dec_in = np.concatenate([np.zeros((batch, 1), np.int32), tgt[:, :-1]], axis=1)
    return {"encoder_input_tokens": enc, "decoder_target_tokens": tgt, "decoder_input_tokens": dec_in,
            "decoder_loss_weights": np.ones_like(tgt)}


def bench_ext5(cfg, batch, steps: int, warmup: int) -> float:
    """Seconds per step of ext5's compiled train step on one device."""
    import jax
    from ext5.train import optimizer, partitioning, step as step_lib
    mesh = partitioning.make_mesh(1, jax.devices()[:1])
    fns = step_lib.build(cfg, mesh, partitioning.standard_logical_axis_rules(),
                         optimizer.adafactor(optimizer.create_learning_rate_scheduler("constant", 1e-3)),
                         input_len=batch["encoder_input_tokens"].shape[1],
                         target_len=batch["decoder_target_tokens"].shape[1], z_loss=0.0,
                         loss_normalizing_factor="NUM_REAL_TARGET_TOKENS")
    state = fns.init(jax.random.PRNGKey(0))
    gb = partitioning.make_global_batch(batch, mesh, batch["encoder_input_tokens"].shape[0])
    for _ in range(warmup):
        state, m = fns.train_step(state, gb)
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for _ in range(steps):
        state, m = fns.train_step(state, gb)
    jax.block_until_ready(m)
    return (time.perf_counter() - t0) / steps


def bench_torch(cfg, batch, steps: int, warmup: int) -> float:
    """Seconds per step of transformers' T5ForConditionalGeneration (eager PyTorch) with HF Adafactor."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration
    from transformers.optimization import Adafactor
    from ext5.interop import hf
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(T5Config(**hf.to_hf_config(cfg))).train()
    opt = Adafactor(model.parameters(), lr=1e-3, scale_parameter=True, relative_step=False, warmup_init=False,
                    clip_threshold=1.0, decay_rate=-0.8)
    ids = torch.tensor(batch["encoder_input_tokens"], dtype=torch.long)
    labels = torch.tensor(batch["decoder_target_tokens"], dtype=torch.long)
    dec_in = torch.tensor(batch["decoder_input_tokens"], dtype=torch.long)

    def one():
        opt.zero_grad(set_to_none=True)
        out = model(input_ids=ids, attention_mask=(ids > 0).long(), decoder_input_ids=dec_in, labels=labels)
        out.loss.backward()
        opt.step()

    for _ in range(warmup):
        one()
    t0 = time.perf_counter()
    for _ in range(steps):
        one()
    return (time.perf_counter() - t0) / steps


def cpu_compare(args) -> None:
    import jax
    import torch
    from ext5.model import configs
    cfg = configs.get_config(args.size, dtype="float32", dropout_rate=0.0)
    batch = _batch(cfg, args.batch, args.input_len, args.target_len)
    tokens = args.batch * (args.input_len + args.target_len)
    torch.set_num_threads(os.cpu_count() or 1)
    print(f"T5.1.1-{args.size}, batch {args.batch} x ({args.input_len}+{args.target_len}) tokens, float32, "
          f"{args.steps} timed steps after {args.warmup} warm-up; jax {jax.__version__} on "
          f"{jax.devices()[0].device_kind}, torch {torch.__version__} with {torch.get_num_threads()} threads")
    t_ext5 = bench_ext5(cfg, batch, args.steps, args.warmup)
    t_torch = bench_torch(cfg, batch, args.steps, args.warmup)
    print(f"{'':<22}{'steps/s':>10}{'tokens/s':>12}")
    print(f"{'ext5 (JAX, jit)':<22}{1 / t_ext5:>10.2f}{tokens / t_ext5:>12.0f}")
    print(f"{'transformers (torch)':<22}{1 / t_torch:>10.2f}{tokens / t_torch:>12.0f}")
    print(f"ratio ext5 / transformers: {t_torch / t_ext5:.2f}x")


def gpu_mfu(args) -> None:
    """MFU of T5.1.1 sizes on synthetic batches, bf16 activations, through the TF-free trainer core."""
    import jax
    from ext5.model import configs, flops
    kind = jax.devices()[0].device_kind
    peak = flops.peak_flops_per_device(kind)
    print(f"device {kind} x{jax.device_count()}, peak {peak / 1e12 if peak else float('nan'):.0f} TFLOP/s bf16")
    for size in args.sizes.split(","):
        cfg = configs.get_config(size, dtype="bfloat16", remat_policy=args.remat)
        batch = _batch(cfg, args.batch, args.input_len, args.target_len)
        t = bench_ext5(cfg, batch, args.steps, args.warmup)
        f = flops.train_flops_per_step(cfg, args.batch, args.input_len, args.target_len)
        mfu = f / t / jax.device_count() / peak if peak else float("nan")
        print(f"T5.1.1-{size}: {1 / t:.2f} steps/s, {f / t / 1e12:.1f} TFLOP/s, MFU {mfu:.1%} "
              f"(batch {args.batch} x {args.input_len}+{args.target_len}, remat {args.remat})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="small")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--input_len", type=int, default=128)
    p.add_argument("--target_len", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--mfu", action="store_true", help="GPU/TPU: MFU for --sizes on synthetic batches")
    p.add_argument("--sizes", default="base,large")
    p.add_argument("--remat", default="none")
    args = p.parse_args()
    if args.mfu:
        gpu_mfu(args)
    else:
        cpu_compare(args)


if __name__ == "__main__":
    main()
