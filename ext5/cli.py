"""`ext5` / `t5x` command line: train | eval | infer, with t5x's flags.

  t5x train --gin_file=local_tiny.gin --gin.MODEL_DIR="'/tmp/m'" --gin.TRAIN_STEPS=20
  ext5 eval --gin_file=local_tiny.gin --gin_file=eval.gin --gin.CHECKPOINT_PATH="'/tmp/m'"

Flags: --gin_file (repeatable; packaged files resolve by name), --gin_bindings (repeatable), --gin.NAME=VALUE,
--gin_search_paths, --tfds_data_dir, --seqio_additional_cache_dirs, --module_import, and the multi-host
flags --multiprocess_gpu, --coordinator_address, --process_count, --process_index.
This module is thin on purpose: parse flags and gin, then call one importable function.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence

from ext5.errors import UsageError

COMMANDS = ("train", "eval", "infer")
# Commands with their own flags: name -> module under ext5.commands exposing main(argv) -> int.
SUBCOMMANDS = {"convert": "convert", "inspect": "inspect_cmd", "experiment": "experiment", "cache": "cache",
               "plan": "plan", "report": "report"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ext5", allow_abbrev=False, description="Extreme multi-task T5 (ExT5, T0) on JAX, t5x-style.")
    p.add_argument("command", choices=COMMANDS + tuple(SUBCOMMANDS),
                   help="what to run (convert|inspect|experiment|cache take their own flags: ext5 CMD --help)")
    p.add_argument("--gin_file", action="append", default=[], help="gin file (repeatable; later wins)")
    p.add_argument("--gin_bindings", action="append", default=[], help="gin binding 'NAME = VALUE' (repeatable)")
    p.add_argument("--gin_search_paths", action="append", default=[], help="comma-separated gin folders")
    p.add_argument("--tfds_data_dir", default=None, help="TFDS data dir (seqio.set_tfds_data_dir_override)")
    p.add_argument("--seqio_additional_cache_dirs", action="append", default=[],
                   help="extra directories to look for seqio task caches")
    p.add_argument("--module_import", action="append", default=[], help="module to import (registers tasks)")
    p.add_argument("--multiprocess_gpu", action="store_true", help="initialise jax.distributed for multi-GPU hosts")
    p.add_argument("--coordinator_address", default=None, help="host:port of process 0 (jax.distributed)")
    p.add_argument("--process_count", type=int, default=None, help="number of processes (jax.distributed)")
    p.add_argument("--process_index", type=int, default=None, help="this process's index (jax.distributed)")
    return p


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """Parse flags; `--gin.X=V` becomes the binding `X = V`. Returns (args, all gin bindings in order)."""
    from ext5 import config
    rest, gin_flag_bindings = config.rewrite_gin_args(argv)
    parser = build_parser()
    args, unknown = parser.parse_known_args(rest)
    if unknown:
        raise UsageError(f"unknown flag(s) {' '.join(unknown)}; see `ext5 {args.command} --help`")
    return args, list(args.gin_bindings) + gin_flag_bindings


def apply_data_flags(args: argparse.Namespace) -> None:
    """--tfds_data_dir, --seqio_additional_cache_dirs and --module_import (shared with `ext5 experiment`)."""
    if args.tfds_data_dir or args.seqio_additional_cache_dirs:
        import seqio
        if args.tfds_data_dir:
            seqio.set_tfds_data_dir_override(args.tfds_data_dir)
        if args.seqio_additional_cache_dirs:
            seqio.add_global_cache_dirs(args.seqio_additional_cache_dirs)
    for m in args.module_import:
        importlib.import_module(m)


def _setup(args: argparse.Namespace, bindings: list[str]) -> None:
    from ext5 import config
    from ext5.train import partitioning
    partitioning.maybe_initialize_distributed(
        multiprocess_gpu=args.multiprocess_gpu, coordinator_address=args.coordinator_address,
        process_count=args.process_count, process_index=args.process_index)
    apply_data_flags(args)
    config.parse(args.gin_file, bindings, args.gin_search_paths)


def run_train(args: argparse.Namespace, bindings: list[str]):
    """Parse gin, validate the mixture, write MODEL_DIR/config.gin, and call the configured `trainer.train`."""
    import gin
    import jax
    from ext5 import config
    from ext5.train import trainer
    _setup(args, bindings)
    name = config.macro("MIXTURE_OR_TASK_NAME")
    if name:
        from ext5.data import pipeline
        module = config.macro("MIXTURE_OR_TASK_MODULE")
        if module:
            importlib.import_module(module)
        pipeline.check_registered(name)
        if config.macro("USE_CACHED_TASKS"):
            from ext5.commands.cache import check_cached
            check_cached(name)
    model_dir = config.macro("MODEL_DIR")
    if jax.process_index() == 0:
        config.write_config(model_dir)
    return gin.get_configurable(trainer.train)()


def run_eval(args: argparse.Namespace, bindings: list[str]):
    import gin
    from ext5.eval import run as eval_run
    _setup(args, bindings)
    return gin.get_configurable(eval_run.evaluate)()


def run_infer(args: argparse.Namespace, bindings: list[str]):
    import gin
    from ext5.eval import run as eval_run
    _setup(args, bindings)
    return gin.get_configurable(eval_run.infer)()


def _one_line_errors() -> tuple[type[BaseException], ...]:
    from ext5.config import ConfigError
    from ext5.errors import UnknownTaskError
    from ext5.train.checkpoints import IncompatibleCheckpointError, NoReadableCheckpointError
    from ext5.train.partitioning import PartitioningError
    return (UsageError, ConfigError, IncompatibleCheckpointError, NoReadableCheckpointError, PartitioningError,
            UnknownTaskError)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        if argv and argv[0] in SUBCOMMANDS:
            module = importlib.import_module(f"ext5.commands.{SUBCOMMANDS[argv[0]]}")
            return int(module.main(argv[1:]) or 0)
        args, bindings = parse_args(argv)
        {"train": run_train, "eval": run_eval, "infer": run_infer}[args.command](args, bindings)
    except Exception as e:  # noqa: BLE001  (classified lazily: the error types import TensorFlow)
        if os.environ.get("EXT5_TRACEBACK") or not isinstance(e, _one_line_errors()):
            raise
        # gin appends "In call to configurable ..." lines; our messages are one line by construction.
        print(f"ext5: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
