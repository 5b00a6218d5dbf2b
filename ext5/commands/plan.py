"""`ext5 plan`: will this gin config fit a TPU slice, and how fast can it go? Answered before paying for it.

  ext5 plan --gin_file=t0_11b.gin --topology=v4-512
  ext5 plan --gin_file=t0_11b.gin --topology=v4-512 --json=plan.json
  ext5 plan --gin_file=t0_3b.gin --topology=v4-256 --search

Takes `train`'s flags and gin overrides, builds exactly the step `trainer.train` would build from that gin
(model, dtype, remat, scan, Adafactor state, microbatches, partitioning rules, donation, batch sharding),
compiles it ahead of time for the slice with libtpu, and prints bytes per device against the chip's HBM,
FLOPs (XLA's program against ext5.model.flops), the collectives in the compiled program, and a roofline
ESTIMATE of step time, tokens/s per chip and the MFU ceiling.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from typing import Any, Sequence

GiB = 2 ** 30
# Macros `train` needs and `plan` does not: bound to placeholders (before the user's bindings, which win).
_PLAN_PLACEHOLDERS = tuple(f"{m} = None" for m in ("MODEL_DIR", "MIXTURE_OR_TASK_NAME", "TRAIN_STEPS",
                                                      "INITIAL_CHECKPOINT_PATH", "CHECKPOINT_PATH"))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ext5 plan", allow_abbrev=False,
        description="Compile the train step a gin config builds for a Cloud TPU slice (ahead of time, with "
                    "libtpu, on this machine) and report bytes per device against HBM, FLOPs, collectives "
                    "and a roofline ESTIMATE of step time, tokens/s per chip and the MFU ceiling (it assumes "
                    "compute, HBM and interconnect traffic overlap perfectly; a ceiling, not a measurement). "
                    "Also takes train's flags: --gin_file, --gin_bindings, --gin.NAME=VALUE, --gin_search_paths.")
    p.add_argument("--topology", required=True,
                   help="Cloud TPU slice: v4-N / v5p-N (N TensorCores, 2 per chip), v5e-N (v5litepod-N) / "
                        "v6e-N (N chips), e.g. v4-512")
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH",
                   help="write the report as one JSON object to PATH (or stdout with no PATH)")
    p.add_argument("--search", action="store_true",
                   help="try num_partitions x fsdp x remat policy x microbatches x scan: rank by an analytic "
                        "estimate, compile the best few, print the fastest fitting plan as gin overrides")
    p.add_argument("--search_compiles", type=int, default=3, help="at most this many compiles in --search")
    p.add_argument("--keep_hlo", default=None, metavar="PATH", help="write the compiled HLO text to PATH")
    return p


@dataclasses.dataclass
class TrainArgs:
    """The gin-configured arguments of `trainer.train` that decide the compiled step."""

    model: Any
    partition: Any
    optimizer: Any
    learning_rate: Any
    batch_size: int
    input_len: int
    target_len: int
    num_microbatches: int
    z_loss: float
    loss_normalizing_factor: Any
    random_seed: int

    def build_kwargs(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def train_args_from_gin() -> TrainArgs:
    """Read `trainer.train`'s bound arguments from the parsed gin config, resolved as train() sees them."""
    import gin
    from ext5.config import ConfigError
    from ext5.train import partitioning, trainer
    import inspect
    defaults = {k: v.default for k, v in inspect.signature(trainer.train).parameters.items()}
    try:
        bound = gin.get_bindings(trainer.train, resolve_references=True)
    except Exception as e:  # noqa: BLE001 -- gin wraps whatever the referenced call raised
        raise ConfigError(f"gin: evaluating trainer.train's arguments failed: {str(e).splitlines()[0]}") from None
    get = lambda k: bound.get(k, defaults.get(k))  # noqa: E731
    if get("model") is None:
        raise ConfigError("the gin config binds no model for trainer.train; include a model gin "
                          "(e.g. t5_1_1_base.gin) and a run gin (pretrain.gin)")
    ds = get("train_dataset")
    if ds is not None:
        batch_size = int(ds.batch_size)  # train()'s global batch: the dataset's (one BATCH_SIZE binding)
        lengths = ds.task_feature_lengths
    else:
        batch_size, lengths = int(get("batch_size") or 0), None
    if not lengths or "inputs" not in lengths or "targets" not in lengths:
        raise ConfigError("plan needs TASK_FEATURE_LENGTHS = {'inputs': N, 'targets': M} in the gin config")
    return TrainArgs(model=get("model"), partition=get("partition") or partitioning.PartitionConfig(),
                     optimizer=get("optimizer"), learning_rate=get("learning_rate"), batch_size=batch_size,
                     input_len=int(lengths["inputs"]), target_len=int(lengths["targets"]),
                     num_microbatches=int(get("num_microbatches") or 1), z_loss=float(get("z_loss")),
                     loss_normalizing_factor=get("loss_normalizing_factor"), random_seed=int(get("random_seed") or 0))


def plan_one(ta: TrainArgs, topology: str, keep_hlo: str | None = None):
    """Build and compile one configuration for `topology`; a configuration that cannot even be laid out
    (num_partitions vs devices, batch vs data-parallel size) is a non-fitting report, not a crash."""
    from ext5.train import aot, partitioning, step as step_lib
    devices = aot.slice_devices(topology)
    try:
        fns = step_lib.build_for_training(**ta.build_kwargs(), devices=devices)
    except partitioning.PartitioningError as e:
        return None, f"does not fit on {topology}: {e}"
    r = aot.report(fns, slice_name=topology, model=ta.model, global_batch_size=ta.batch_size,
                   num_microbatches=ta.num_microbatches, partition=ta.partition, keep_hlo=keep_hlo)
    r.advice = aot.advice(r)
    return r, r.advice


def _layout_failure(ta: TrainArgs, topology: str, message: str) -> dict[str, Any]:
    from ext5.train import aot
    s = aot.parse_slice(topology)
    n_dev = s.num_chips * (s.chip.cores_per_chip if s.chip.chip_config == "default" else 1)
    return {"fits": False, "slice": s.name, "num_devices": n_dev, "num_chips": s.num_chips,
            "hbm_bytes_per_device": s.chip.usable_hbm_bytes, "advice": message,
            "settings": aot.step_settings(ta.model, ta.partition, ta.num_microbatches)}


def _fmt_bytes(b: float | None) -> str:
    return "-" if b is None else f"{b / GiB:8.2f} GiB"


def print_table(r, out=sys.stdout) -> None:
    """The human-readable report."""
    d = r.as_dict() if hasattr(r, "as_dict") else r
    w = lambda s="": print(s, file=out)  # noqa: E731
    w(f"ext5 plan: {d['slice']} ({d['num_chips']} chips, {d['num_devices']} devices of '{d['device_kind']}'), "
      f"mesh {d['mesh']}, {d['num_params'] / 1e9:.3f}B params, batch {d['global_batch_size']} x "
      f"({d['input_len']}+{d['target_len']}) tokens")
    w(f"settings: {d['settings']}")
    w("")
    hbm = d["hbm_bytes_per_device"]
    b = d["bytes_per_device"]
    w("memory per device")
    for k in ("params", "optimizer", "temp", "total"):
        pct = f"{100 * b[k] / hbm:5.1f}%" if b.get(k) is not None else ""
        w(f"  {k:<10} {_fmt_bytes(b.get(k))}  {pct}")
    w(f"  {'HBM':<10} {_fmt_bytes(hbm)}  (usable per device)")
    w(f"  params fully sharded would be {_fmt_bytes(d['params_bytes_fully_sharded'])}; largest replicated "
      f"parameter: {d['largest_replicated_param']['path'] or '-'} "
      f"({d['largest_replicated_param']['bytes'] / 2 ** 20:.1f} MiB)")
    verdict = "FITS" if d["fits"] else "DOES NOT FIT"
    w(f"  -> {verdict}" + (f", {100 * d['headroom']:.1f}% headroom" if d.get("headroom") is not None else ""))
    w("")
    xla = d.get("flops_per_step_xla")
    an = d["flops_per_step_analytic"]
    w("FLOPs per step (all devices)")
    w(f"  model (analytic)        {an:.4g}")
    w(f"  + remat (analytic)      {d['flops_remat_analytic']:.4g}")
    if xla:
        w(f"  compiled program (HLO)  {xla:.4g}  = {xla / an:.3f} x model")
    if d.get("collectives"):
        w("")
        w("collectives per step (per device; executions inside loops counted per iteration)")
        w(f"  {'kind':<20}{'count':>8}{'bytes':>14}")
        for k, c in d["collectives"].items():
            w(f"  {k:<20}{c['count']:>8}{_fmt_bytes(c['bytes']):>14}")
    if d.get("step_time_s_estimate"):
        rf = d["roofline"]
        w("")
        w("roofline ESTIMATE (perfect overlap; a ceiling, not a measurement)")
        w(f"  compute {rf['compute_s'] * 1e3:.1f} ms, HBM {rf['hbm_s'] * 1e3:.1f} ms, ICI {rf['ici_s'] * 1e3:.1f} ms"
          f" -> step {d['step_time_s_estimate'] * 1e3:.1f} ms, {d['tokens_per_sec_per_chip']:.0f} tokens/s/chip,"
          f" MFU ceiling {100 * d['mfu_ceiling']:.1f}%")
    if d.get("compile_error"):
        w(f"  compiler: {d['compile_error']}")
    if d.get("advice"):
        w("")
        w(f"ext5 plan: {d['advice']}")


def search(ta: TrainArgs, topology: str, max_compiles: int = 3, json_path: str | None = None) -> int:
    """Rank every buildable layout by the analytic estimate, compile the fastest few that look like they fit
    (with 10% headroom), and print the fastest compiled plan that fits as gin overrides."""
    from ext5.train import aot, plan_search
    s = aot.parse_slice(topology)
    n_dev = len(aot.slice_devices(topology))
    hbm = s.chip.usable_hbm_bytes
    ranked = []
    for c in plan_search.candidates(ta.model, n_dev, ta.batch_size):
        mem, t = plan_search.estimate(ta.model, c, n_dev, ta.batch_size, ta.input_len, ta.target_len,
                                      s.chip.peak_flops, s.chip.ici_bandwidth)
        if mem <= 0.9 * hbm:
            # Ties: prefer scanned layers (fast compiles), fewer microbatches, less recompute.
            ranked.append((t, not c.scan_layers, c.num_microbatches, c.remat_policy != "none", mem, c))
    ranked.sort(key=lambda x: x[:4])
    say = (lambda m: print(m, file=sys.stderr)) if json_path == "-" else print
    say(f"ext5 plan --search: {len(ranked)} layouts estimated to fit {s.name}; compiling up to {max_compiles}")
    best = None
    for t, _, _, _, mem, c in ranked[:max_compiles]:
        trial = dataclasses.replace(
            ta, model=ta.model.replace(remat_policy=c.remat_policy, scan_layers=c.scan_layers),
            partition=dataclasses.replace(ta.partition, num_partitions=c.num_partitions, fsdp=c.fsdp),
            num_microbatches=c.num_microbatches)
        r, message = plan_one(trial, topology)
        got = "layout failed" if r is None else (
            f"{r.bytes_per_device['total'] / GiB:.1f} GiB, fits={r.fits}, est. step "
            f"{(r.step_time_s_estimate or 0) * 1e3:.0f} ms")
        say(f"  {c}: estimated {mem / GiB:.1f} GiB, {t * 1e3:.0f} ms -> compiled: {got}")
        if r is not None and r.fits and r.headroom >= 0.10 and (
                best is None or r.step_time_s_estimate < best[0].step_time_s_estimate):
            best = (r, c)
    if best is None:
        say(f"ext5 plan --search: no layout among the {min(max_compiles, len(ranked))} compiled fits {s.name} "
            f"with 10% headroom; use a larger slice or raise --search_compiles")
        if json_path:
            _emit_json({"fits": False, "slice": s.name, "num_devices": n_dev, "advice": "no layout found"},
                       json_path)
        return 1
    r, c = best
    if json_path != "-":
        print_table(r)
    say("")
    say("fastest fitting plan (gin overrides, ready to paste):")
    say("  " + " ".join(c.gin_overrides()))
    if json_path:
        _emit_json(r.as_dict() | {"gin_overrides": c.gin_overrides()}, json_path)
    return 0


def _emit_json(obj: dict[str, Any], path: str) -> None:
    text = json.dumps(obj, indent=1, sort_keys=True, default=str)
    if path == "-":
        print(text)
    else:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text + "\n")


def build_parser() -> argparse.ArgumentParser:
    """plan's own flags plus train's (gin and data flags), as `ext5 plan --help` shows them."""
    from ext5 import cli
    p = _parser()
    cli.add_gin_flags(p)
    cli.add_data_flags(p)
    return p


def main(argv: Sequence[str]) -> int:
    from ext5 import cli, config
    from ext5.train import aot
    if any(a in ("-h", "--help") for a in argv):
        build_parser().print_help()
        return 0
    own, rest = _parser().parse_known_args(list(argv))
    args, bindings = cli.parse_args(["plan", *rest])
    cli.apply_data_flags(args)
    config.parse(args.gin_file, list(_PLAN_PLACEHOLDERS) + bindings, args.gin_search_paths)
    aot.parse_slice(own.topology)  # fail fast on a bad name
    ta = train_args_from_gin()
    if own.search:
        return search(ta, own.topology, max_compiles=own.search_compiles, json_path=own.json)
    r, message = plan_one(ta, own.topology, keep_hlo=own.keep_hlo)
    obj = r.as_dict() if r is not None else _layout_failure(ta, own.topology, message)
    if own.json != "-":
        if r is not None:
            print_table(r)
        else:
            print(f"ext5 plan: {message}")
    if own.json:
        _emit_json(obj, own.json)
    if not obj["fits"] and own.json == "-":
        print(f"ext5 plan: {obj.get('advice') or message}", file=sys.stderr)
    return 0 if obj["fits"] else 1
