"""`ext5 convert`: import Hugging Face / t5x T5 checkpoints into an ext5 MODEL_DIR, export ext5 to Hugging Face.

  ext5 convert --from=hf  ~/t5-v1_1-base --to=/ckpt/t5_base            # -> /ckpt/t5_base/checkpoint_0
  ext5 convert --from=t5x ~/t5_1_1_lm100k_base/checkpoint_1100000 --to=/ckpt/lm_adapt_base
  ext5 convert --export-hf=/runs/demo --to=/tmp/demo_hf                  # latest step; config from its meta

The imported checkpoint is what t5x's INITIAL_CHECKPOINT_PATH expects: the weights, the step (the t5x
checkpoint's, 0 for Hugging Face unless --step) and a fresh Adafactor state. The model config is read from
the source (config.json, or the t5x weights' shapes); --gin_file/--gin.X=V give ext5's model gin instead,
which must have the same shapes (use it for dtype, scan_layers or a non-default activation).
"""
from __future__ import annotations

import argparse
import os
import time
from typing import Sequence

from ext5.errors import UsageError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ext5 convert", allow_abbrev=False,
        description="Import Hugging Face or t5x T5 checkpoints into ext5, or export ext5 to Hugging Face.",
        epilog="Examples:\n"
               "  ext5 convert --from=hf ./t5-v1_1-base --to=/ckpt/t5_base\n"
               "  ext5 convert --from=t5x ./t5_1_1_lm100k_base/checkpoint_1100000 --to=/ckpt/lm_adapt\n"
               "  ext5 convert --export-hf=/runs/demo --to=/tmp/demo_hf\n"
               "then fine-tune with --gin.INITIAL_CHECKPOINT_PATH=\"'/ckpt/t5_base/checkpoint_0'\".",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", nargs="?", help="what to import: a Hugging Face model directory (--from=hf) or a t5x "
                                          "checkpoint_<step> directory / t5x MODEL_DIR (--from=t5x)")
    p.add_argument("--from", dest="src_format", choices=("hf", "t5x"), help="format of SRC to import")
    p.add_argument("--export-hf", "--export_hf", dest="export_hf", metavar="CHECKPOINT_PATH",
                   help="export an ext5 MODEL_DIR (latest step) or MODEL_DIR/checkpoint_<step> to Hugging Face")
    p.add_argument("--to", required=False, metavar="DIR",
                   help="output: an ext5 MODEL_DIR (import) or a Hugging Face model directory (export)")
    p.add_argument("--step", type=int, default=None,
                   help="step of the imported checkpoint (default: the t5x checkpoint's step; 0 for hf)")
    p.add_argument("--gin_file", action="append", default=[],
                   help="ext5 model gin (e.g. t5_1_1_base.gin, local_tiny.gin) instead of the source's config")
    p.add_argument("--gin_search_paths", action="append", default=[], help="comma-separated gin folders")
    p.add_argument("--gin_bindings", action="append", default=[], help="gin binding 'NAME = VALUE' (repeatable)")
    return p


def _gin_model(gin_files: list[str], bindings: list[str], search_paths: list[str]):
    """The MODEL macro (an ext5 T5Config) of the given gin files, or None without --gin_file."""
    if not gin_files:
        if bindings:
            raise UsageError("--gin.X/--gin_bindings need a --gin_file that defines MODEL, e.g. --gin_file=t5_1_1_base.gin")
        return None
    from ext5 import config
    from ext5.model.configs import T5Config
    # Run gins require macros the conversion never reads; a bare model gin requires DROPOUT_RATE (which
    # changes no weight). The user's own bindings come last and win.
    defaults = [f"{m} = None" for m in ("MODEL_DIR", "MIXTURE_OR_TASK_NAME", "TASK_FEATURE_LENGTHS", "TRAIN_STEPS",
                                        "INITIAL_CHECKPOINT_PATH", "CHECKPOINT_PATH")]
    if not any(b.replace(" ", "").startswith("DROPOUT_RATE=") for b in bindings):
        defaults.append("DROPOUT_RATE = 0.0")
    config.parse(gin_files, defaults + list(bindings), search_paths)
    ref = config.macro("MODEL")
    model = ref.scoped_configurable_fn() if hasattr(ref, "scoped_configurable_fn") else ref
    if not isinstance(model, T5Config):
        raise UsageError("the gin files define no MODEL (an ext5 T5Config); include a model gin such as "
                         "t5_1_1_base.gin")
    return model


_SHAPE_FIELDS = ("vocab_size", "emb_dim", "num_heads", "head_dim", "mlp_dim", "num_encoder_layers",
                 "num_decoder_layers", "relative_attention_num_buckets", "logits_via_embedding")
_HF_FIELDS = _SHAPE_FIELDS + ("mlp_activations", "relative_attention_max_distance")


def _reconcile(source_cfg, gin_cfg, fields: Sequence[str], what: str):
    """Use the gin model where given, after checking it describes the source's network."""
    if gin_cfg is None:
        return source_cfg
    for f in fields:
        a, b = getattr(source_cfg, f), getattr(gin_cfg, f)
        if a != b:
            raise UsageError(f"the {what} checkpoint has {f}={a!r} but the gin MODEL has {b!r}; fix the gin "
                             f"file or drop --gin_file to use the checkpoint's own config")
    return gin_cfg


def _count(params) -> int:
    import numpy as np
    from ext5.interop.params import param_shapes
    return int(sum(np.prod(s) for s in param_shapes(params).values()))


def run_import(args: argparse.Namespace, bindings: list[str]) -> str:
    from ext5.interop import checkpoint, hf_files, t5x
    from ext5.interop.params import describe
    checkpoint.ensure_fresh_model_dir(args.to)  # before reading gigabytes
    gin_cfg = _gin_model(args.gin_file, bindings, args.gin_search_paths)
    t0 = time.time()
    if args.src_format == "hf":
        print(f"[ext5] reading Hugging Face T5 from {args.src}", flush=True)
        cfg, params = hf_files.load_hf(args.src)
        cfg = _reconcile(cfg, gin_cfg, _HF_FIELDS, "hf")
        step, source = (args.step if args.step is not None else 0), "hf"
    else:
        print(f"[ext5] reading t5x checkpoint {args.src}", flush=True)
        cfg, params, t5x_step, layout = t5x.load_t5x(args.src)
        print(f"[ext5] t5x {layout} layout, step {t5x_step}", flush=True)
        cfg = _reconcile(cfg, gin_cfg, _SHAPE_FIELDS, "t5x")
        step, source = (args.step if args.step is not None else t5x_step), f"t5x-{layout}"
    print(f"[ext5] model: {describe(cfg)}; {_count(params) / 1e6:.2f}M params "
          f"(read in {time.time() - t0:.1f}s)", flush=True)
    path = checkpoint.write_checkpoint(params, cfg, args.to, step=step, converted_from=os.path.abspath(args.src),
                                    source_format=source)
    print(f"[ext5] wrote {path} (step {step}, params + fresh Adafactor state)", flush=True)
    print(f"[ext5] fine-tune from it: --gin.INITIAL_CHECKPOINT_PATH=\"'{path}'\"", flush=True)
    return path


def run_export(args: argparse.Namespace, bindings: list[str]) -> list[str]:
    from ext5.interop import checkpoint, hf_files
    from ext5.interop.params import describe
    gin_cfg = _gin_model(args.gin_file, bindings, args.gin_search_paths)
    stored_cfg, step = checkpoint.checkpoint_config(args.export_hf)
    cfg = gin_cfg or stored_cfg
    print(f"[ext5] reading ext5 checkpoint {args.export_hf} (step {step}; model config from "
          f"{'--gin_file' if gin_cfg else 'the checkpoint meta'})", flush=True)
    params, step = checkpoint.load_checkpoint_params(args.export_hf, cfg)
    print(f"[ext5] model: {describe(cfg)}; {_count(params) / 1e6:.2f}M params", flush=True)
    paths = hf_files.export_hf(params, cfg, args.to)
    print(f"[ext5] wrote {', '.join(paths)}", flush=True)
    print(f"[ext5] load with transformers.T5ForConditionalGeneration.from_pretrained('{args.to}'); token ids "
          f"are those of the run's seqio vocabulary", flush=True)
    return paths


def main(argv: list[str]) -> int:
    """Entry point of `ext5 convert` (dispatched by ext5.cli)."""
    from ext5 import config
    from ext5.interop.params import ConversionError
    rest, gin_flags = config.rewrite_gin_args(argv)
    parser = build_parser()
    args, unknown = parser.parse_known_args(rest)
    if unknown:
        raise UsageError(f"unknown argument(s) {' '.join(unknown)}; see `ext5 convert --help`")
    bindings = list(args.gin_bindings) + gin_flags
    if bool(args.src_format) == bool(args.export_hf):
        raise UsageError("give either --from={hf,t5x} SRC (import) or --export-hf=CHECKPOINT_PATH (export), "
                         "each with --to=DIR")
    if not args.to:
        raise UsageError("missing --to=DIR (the ext5 MODEL_DIR to write, or the Hugging Face directory to export to)")
    try:
        if args.export_hf:
            if args.src or args.step is not None:
                raise UsageError("--export-hf takes no SRC and no --step; the checkpoint path names the step")
            run_export(args, bindings)
        else:
            if not args.src:
                raise UsageError(f"missing SRC: ext5 convert --from={args.src_format} SRC --to=DIR")
            if args.step is not None and args.step < 0:
                raise UsageError(f"--step must be >= 0, got {args.step}")
            run_import(args, bindings)
    except ConversionError as e:
        raise UsageError(str(e)) from None
    return 0
