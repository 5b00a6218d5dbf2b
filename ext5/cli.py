"""`ext5` / `t5x` command line: train | eval | infer, with t5x's flags.

  t5x train --gin_file=local_tiny.gin --gin.MODEL_DIR="'/tmp/m'" --gin.TRAIN_STEPS=20
  ext5 eval --gin_file=local_tiny.gin --gin_file=eval.gin --gin.CHECKPOINT_PATH="'/tmp/m'"

t5x's flags: --gin_file (repeatable; packaged files resolve by name), --gin_bindings (repeatable),
--gin.NAME=VALUE, --gin_search_paths, --tfds_data_dir, --seqio_additional_cache_dirs, and the multi-host
flags --multiprocess_gpu, --coordinator_address, --process_count, --process_index. ext5's own:
--module_import (t5x's way, --gin.MIXTURE_OR_TASK_MODULE, works too). t5x's configurable names are
accepted in gin files and bindings (`ext5.t5x_names`). The flags are declared here once; the subcommands
that take them (`ext5 experiment`, ...) add them with `add_gin_flags` / `add_data_flags`.
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


def add_gin_flags(p: argparse.ArgumentParser) -> None:
    """t5x's gin flags: --gin_file, --gin_bindings, --gin_search_paths (`--gin.NAME=VALUE` is rewritten by
    `config.rewrite_gin_args` before argparse sees it)."""
    p.add_argument("--gin_file", action="append", default=[], help="gin file (repeatable; later wins)")
    p.add_argument("--gin_bindings", action="append", default=[], help="gin binding 'NAME = VALUE' (repeatable)")
    p.add_argument("--gin_search_paths", action="append", default=[], help="comma-separated gin folders")


def add_data_flags(p: argparse.ArgumentParser, *, cache_dirs: bool = True) -> None:
    """t5x's --tfds_data_dir and --seqio_additional_cache_dirs, and ext5's own --module_import."""
    p.add_argument("--tfds_data_dir", default=None, help="TFDS data dir (seqio.set_tfds_data_dir_override)")
    if cache_dirs:
        p.add_argument("--seqio_additional_cache_dirs", action="append", default=[],
                       help="extra directories to look for seqio task caches")
    p.add_argument("--module_import", action="append", default=[],
                   help="ext5's own: module to import first, to register tasks (t5x: --gin.MIXTURE_OR_TASK_MODULE)")


def data_flags_argv(args: argparse.Namespace) -> list[str]:
    """The data flags of `args` as command-line flags again, for a child `ext5 train` process."""
    return ([f"--tfds_data_dir={args.tfds_data_dir}"] if args.tfds_data_dir else []) + [
        f"--seqio_additional_cache_dirs={d}" for d in getattr(args, "seqio_additional_cache_dirs", [])] + [
        f"--module_import={m}" for m in args.module_import]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ext5", allow_abbrev=False, description="Extreme multi-task T5 (ExT5, T0) on JAX, t5x-style.")
    p.add_argument("command", choices=COMMANDS + tuple(SUBCOMMANDS),
                   help=f"what to run ({'|'.join(SUBCOMMANDS)} take their own flags: ext5 CMD --help)")
    add_gin_flags(p)
    add_data_flags(p)
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
    cache_dirs = getattr(args, "seqio_additional_cache_dirs", [])
    if args.tfds_data_dir or cache_dirs:
        import seqio
        if args.tfds_data_dir:
            seqio.set_tfds_data_dir_override(args.tfds_data_dir)
        if cache_dirs:
            seqio.add_global_cache_dirs(cache_dirs)
    for m in args.module_import:
        import_task_module(m, "--module_import")


def import_task_module(module: str, what: str) -> None:
    """Import a module that registers tasks; a missing one is a one-line error."""
    try:
        importlib.import_module(module)
    except ImportError as e:
        raise UsageError(f"{what}={module!r} cannot be imported ({e}); check the module name and PYTHONPATH") from None


def _setup(args: argparse.Namespace, bindings: list[str]) -> None:
    from ext5 import config
    from ext5.train import partitioning
    partitioning.maybe_initialize_distributed(
        multiprocess_gpu=args.multiprocess_gpu, coordinator_address=args.coordinator_address,
        process_count=args.process_count, process_index=args.process_index)
    apply_data_flags(args)
    config.parse(args.gin_file, bindings, args.gin_search_paths)
    module = config.macro("MIXTURE_OR_TASK_MODULE")  # t5x's way to register a user's tasks
    if module:
        import_task_module(module, "MIXTURE_OR_TASK_MODULE")


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
