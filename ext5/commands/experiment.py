"""`ext5 experiment NAME ...`: multi-run experiments built on the trainer.

  ext5 experiment transfer --gin_file=experiments/transfer_tiny.gin --families nli,classify,summarize \\
      --steps 200 --out /tmp/transfer

Takes the same gin and data flags as `ext5 train` (declared once, in `ext5.cli`).
"""
from __future__ import annotations

import argparse
from typing import Sequence

from ext5 import cli
from ext5.errors import UsageError

EXPERIMENTS = ("transfer",)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ext5 experiment", allow_abbrev=False,
                                description="Multi-run experiments (ExT5 family transfer).")
    p.add_argument("experiment", choices=EXPERIMENTS,
                   help="transfer: family x family co-training matrix (ExT5 Figure 1)")
    cli.add_gin_flags(p)
    cli.add_data_flags(p)
    p.add_argument("--mixture", default=None,
                   help="base mixture whose tasks are grouped by family (default: the gin's MIXTURE_OR_TASK_NAME)")
    p.add_argument("--families", default=None,
                   help="comma-separated families (default: every family of the base mixture that has metrics)")
    p.add_argument("--steps", type=int, default=None, help="training steps per run (default: the gin's TRAIN_STEPS)")
    p.add_argument("--out", default="transfer", help="output directory (default: ./transfer)")
    p.add_argument("--single_mixture", default=None,
                   help="use registered single-family mixtures named by this format, e.g. 'exmix_{a}'")
    p.add_argument("--pair_mixture", default=None,
                   help="use registered pair mixtures named by this format, e.g. 'exmix_pair_{a}_{b}'")
    return p


def main(argv: Sequence[str]) -> int:
    from ext5 import config
    rest, gin_flag_bindings = config.rewrite_gin_args(list(argv))
    args, unknown = build_parser().parse_known_args(rest)
    if unknown:
        raise UsageError(f"unknown flag(s) {' '.join(unknown)}; see `ext5 experiment --help`")
    if not args.gin_file:
        raise UsageError("no --gin_file given; e.g. --gin_file=experiments/transfer_tiny.gin")
    if args.steps is not None and args.steps < 1:
        raise UsageError(f"--steps must be >= 1, got {args.steps}")
    families = [f.strip() for f in args.families.split(",") if f.strip()] if args.families else None
    cli.apply_data_flags(args)
    train_flags = cli.data_flags_argv(args)  # each run is `ext5 train` in its own process: same data flags
    from ext5.experiments import transfer
    transfer.run(args.gin_file, list(args.gin_bindings) + gin_flag_bindings, out_dir=args.out,
                 families=families, steps=args.steps, mixture=args.mixture,
                 search_paths=args.gin_search_paths, single_format=args.single_mixture,
                 pair_format=args.pair_mixture, train_flags=train_flags)
    return 0
