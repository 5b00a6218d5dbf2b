"""Ahead-of-time planning: compile the real train step for a Cloud TPU slice on this (CPU) machine.

libtpu compiles for a TPU topology without the hardware (as MaxText's train_compile.py does). From the
compiled step we read the bytes each device holds (parameters, optimizer state, temporaries), the FLOPs,
HBM traffic and collectives of one step (`ext5.train.hlo`, loop trip counts included), and turn them into a
roofline estimate of step time and the MFU ceiling. Estimates, not measurements: the roofline assumes
compute, HBM traffic and interconnect traffic overlap perfectly.

Environment: libtpu must be installed (`pip install ext5[tpu]`); the process runs with
JAX_PLATFORMS=cpu; TPU_SKIP_MDS_QUERY=1 and ALLOW_MULTIPLE_LIBTPU_LOAD=1 are set here before libtpu loads.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
from typing import Any, Sequence

import jax
import numpy as np

from ext5.model import flops as flops_lib
from ext5.model.configs import T5Config
from ext5.train import hlo
from ext5.train import partitioning

GiB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Chip:
    """Facts about one TPU chip generation (Cloud TPU docs; usable HBM as libtpu 0.0.42 reports it)."""

    name: str  # Cloud's name: v4, v5e, v5p, v6e
    topology_prefix: str  # jax topology name prefix
    chip_config: str  # "megacore": one jax device per chip (both TensorCores); "default": one core per chip
    cores_per_chip: int  # TensorCores per chip; Cloud's v4-N / v5p-N count cores, v5e-N / v6e-N chips
    hbm_bytes: int  # nominal HBM per chip
    usable_hbm_bytes: int  # what libtpu lets a program use (measured: the out-of-memory message's limit)
    peak_flops: float  # dense bf16 FLOP/s per chip
    hbm_bandwidth: float  # bytes/s per chip
    ici_bandwidth: float  # bytes/s per chip, all links together (Cloud's "interchip interconnect BW")
    dims: int  # torus dimensions


CHIPS: dict[str, Chip] = {
    "v4": Chip("v4", "v4", "megacore", 2, 32 * GiB, int(30.75 * GiB), 275e12, 1228e9, 2400e9 / 8, 3),
    "v5e": Chip("v5e", "v5e", "default", 1, 16 * GiB, int(15.75 * GiB), 197e12, 819e9, 1600e9 / 8, 2),
    "v5p": Chip("v5p", "v5p", "megacore", 2, 95 * GiB, int(95.74 * GiB), 459e12, 2765e9, 4800e9 / 8, 3),
    "v6e": Chip("v6e", "v6e", "default", 1, 32 * GiB, int(31.25 * GiB), 918e12, 1640e9, 3584e9 / 8, 2),
}
_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6lite": "v6e", "v6litepod": "v6e"}

# Chips -> physical torus shape of a full slice (Cloud TPU's standard slice shapes).
_SHAPES_3D = {1: (1, 1, 1), 2: (1, 2, 1), 4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4),
              64: (4, 4, 4), 128: (4, 4, 8), 256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16),
              2048: (8, 16, 16), 4096: (16, 16, 16)}
_SHAPES_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16), 256: (16, 16)}


class TopologyError(ValueError):
    """An unknown slice name; the message lists valid ones."""


@dataclasses.dataclass(frozen=True)
class Slice:
    """A Cloud TPU slice: `v4-512` is 512 TensorCores = 256 v4 chips on a 4x8x8 torus."""

    name: str
    chip: Chip
    num_chips: int
    shape: tuple[int, ...]

    @property
    def topology_name(self) -> str:
        return f"{self.chip.topology_prefix}:{'x'.join(map(str, self.shape))}"


def parse_slice(name: str) -> Slice:
    """`v4-512`, `v5e-256` (or `v5litepod-256`), `v5p-128`, `v6e-64` -> Slice; bad names -> TopologyError."""
    m = re.fullmatch(r"\s*(v\d+[a-z]*)-(\d+)\s*", name.lower())
    gen = _ALIASES.get(m.group(1), m.group(1)) if m else None
    if not m or gen not in CHIPS:
        raise TopologyError(f"unknown TPU slice {name!r}; use Cloud's names, e.g. v4-512, v5e-256 "
                            f"(v5litepod-256), v5p-128, v6e-64")
    chip = CHIPS[gen]
    n = int(m.group(2))
    if n % chip.cores_per_chip:
        raise TopologyError(f"{name}: {chip.name}-N counts TensorCores ({chip.cores_per_chip} per chip); "
                            f"use an even N, e.g. {chip.name}-8")
    chips = n // chip.cores_per_chip
    shapes = _SHAPES_3D if chip.dims == 3 else _SHAPES_2D
    if chips not in shapes:
        valid = ", ".join(f"{chip.name}-{k * chip.cores_per_chip}" for k in shapes)
        raise TopologyError(f"no standard {chip.name} slice with {chips} chips ({name}); valid: {valid}")
    return Slice(f"{chip.name}-{n}", chip, chips, shapes[chips])


def _libtpu_env() -> None:
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def libtpu_available() -> bool:
    try:
        import libtpu  # noqa: F401
        return True
    except ImportError:
        return False


@functools.lru_cache(maxsize=None)
def slice_devices(name: str) -> tuple[Any, ...]:
    """The jax devices of a slice's topology (compile targets; nothing runs on them)."""
    if not libtpu_available():
        raise TopologyError("compiling for a TPU slice needs libtpu: pip install 'ext5[tpu]' "
                            "(or `make install`, which installs it)")
    _libtpu_env()
    from jax.experimental import topologies
    s = parse_slice(name)
    bounds = tuple(min(2, d) for d in s.shape) + (1,) * (3 - len(s.shape))
    desc = topologies.get_topology_desc(platform="tpu", topology_name=s.topology_name,
                                        chip_config_name=s.chip.chip_config, chips_per_host_bounds=bounds,
                                        num_slices=1)
    return tuple(desc.devices)


_UNITS = {"K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}


def parse_oom(message: str) -> tuple[int, int] | None:
    """(required, available) bytes from XLA's TPU out-of-memory compile error, or None."""
    m = (re.search(r"\(([\d.]+)([KMGT])\)\s*exceeds available HBM \(([\d.]+)([KMGT])\)", message)
         or re.search(r"Used ([\d.]+)([KMGT]) of ([\d.]+)([KMGT]) hbm", message))
    if not m:
        return None
    return int(float(m.group(1)) * _UNITS[m.group(2)]), int(float(m.group(3)) * _UNITS[m.group(4)])


# --------------------------------------------------------------------------------------------------
# The step's numbers
# --------------------------------------------------------------------------------------------------
def _leaf_bytes(tree: Any) -> int:
    """Per-device bytes of a tree of sharded ShapeDtypeStructs (one shard of each leaf). The step's
    jit takes the state with exactly these shardings (explicit in_shardings, donated)."""
    total = 0
    for x in jax.tree.leaves(tree):
        shape = x.sharding.shard_shape(x.shape) if getattr(x, "sharding", None) is not None else x.shape
        total += math.prod(shape) * np.dtype(x.dtype).itemsize
    return int(total)


def _global_bytes(tree: Any) -> int:
    return int(sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def largest_replicated_param(abstract_params: Any) -> tuple[str, int]:
    """(path, bytes) of the largest parameter that every device holds whole (fully replicated)."""
    best = ("", 0)
    for path, x in jax.tree_util.tree_leaves_with_path(abstract_params):
        if x.sharding.shard_shape(x.shape) == tuple(x.shape):
            b = math.prod(x.shape) * np.dtype(x.dtype).itemsize
            if b > best[1]:
                best = (jax.tree_util.keystr(path), b)
    return best


@dataclasses.dataclass
class PlanReport:
    """One compiled step on one slice: memory, FLOPs, collectives and the roofline estimate."""

    slice: str
    mesh: dict[str, int]
    num_devices: int
    num_chips: int
    device_kind: str
    num_params: int
    global_batch_size: int
    input_len: int
    target_len: int
    hbm_bytes_per_device: int
    bytes_per_device: dict[str, int | None]
    fits: bool
    headroom: float | None
    flops_per_step_xla: float | None
    flops_per_step_analytic: float
    flops_remat_analytic: float
    collectives: dict[str, dict[str, int]]
    step_time_s_estimate: float | None
    roofline: dict[str, float]
    tokens_per_sec_per_chip: float | None
    mfu_ceiling: float | None
    params_bytes_fully_sharded: int
    largest_replicated_param: dict[str, Any]
    compile_error: str | None = None
    advice: str | None = None
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def step_settings(model: T5Config, partition: partitioning.PartitionConfig, num_microbatches: int) -> dict:
    """The knobs `--search` turns, as gin names (for reports and ready-to-paste overrides)."""
    return {"num_partitions": partition.num_partitions, "fsdp": partition.fsdp,
            "remat_policy": model.remat_policy, "scan_layers": model.scan_layers,
            "num_microbatches": num_microbatches}


def report(fns: Any, *, slice_name: str, model: T5Config, global_batch_size: int, num_microbatches: int,
           partition: partitioning.PartitionConfig, usable_hbm_bytes: int | None = None,
           keep_hlo: str | None = None) -> PlanReport:
    """Compile `fns.step_jit` (built on a mesh of `slice_devices(slice_name)`) and measure it.

    A program that does not fit makes XLA's TPU compiler stop with an out-of-memory error: the report then
    carries the required bytes from that error and `fits=False`.
    """
    s = parse_slice(slice_name)
    chip = s.chip
    n_dev = fns.mesh.devices.size
    hbm = usable_hbm_bytes or chip.usable_hbm_bytes
    st = fns.abstract_state
    params_b, opt_b = _leaf_bytes(st.params), _leaf_bytes(st.opt_state)
    num_params = int(sum(math.prod(x.shape) for x in jax.tree.leaves(st.params)))
    li, lt = fns.input_len, fns.target_len
    analytic = flops_lib.train_flops_per_step(model, global_batch_size, li, lt)
    remat = flops_lib.remat_flops_per_step(model, global_batch_size, li, lt)
    path, rep_b = largest_replicated_param(st.params)
    base = dict(slice=s.name, mesh={k: int(v) for k, v in fns.mesh.shape.items()}, num_devices=n_dev,
                num_chips=s.num_chips, device_kind=fns.mesh.devices.flat[0].device_kind, num_params=num_params,
                global_batch_size=global_batch_size, input_len=li, target_len=lt, hbm_bytes_per_device=hbm,
                flops_per_step_analytic=analytic, flops_remat_analytic=remat,
                params_bytes_fully_sharded=_global_bytes(st.params) // n_dev,
                largest_replicated_param={"path": path, "bytes": rep_b},
                settings=step_settings(model, partition, num_microbatches))
    try:
        compiled = fns.lower(global_batch_size).compile()
    except Exception as e:  # noqa: BLE001 -- XLA raises a plain runtime error for out-of-memory
        oom = parse_oom(str(e))
        if oom is None:
            raise
        need = oom[0] + params_b + opt_b
        return PlanReport(**base, bytes_per_device={"params": params_b, "optimizer": opt_b,
                                                    "temp": oom[0], "total": need},
                          fits=False, headroom=1 - need / hbm, flops_per_step_xla=None, collectives={},
                          step_time_s_estimate=None, roofline={}, tokens_per_sec_per_chip=None,
                          mfu_ceiling=None, compile_error=str(e).splitlines()[0][:300])
    mem = compiled.memory_analysis()
    text = compiled.as_text()
    if keep_hlo:
        with open(keep_hlo, "w", encoding="utf-8") as f:
            f.write(text)
    stats = hlo.analyze(text, n_dev)
    total = int(mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
                + mem.temp_size_in_bytes + mem.generated_code_size_in_bytes)
    t_compute = stats.flops / chip.peak_flops
    t_hbm = stats.hbm_bytes / chip.hbm_bandwidth
    t_ici = stats.ici_bytes() / chip.ici_bandwidth
    step_time = max(t_compute, t_hbm, t_ici)
    tokens = global_batch_size * (li + lt)
    return PlanReport(
        **base,
        bytes_per_device={"params": params_b, "optimizer": opt_b, "temp": int(mem.temp_size_in_bytes),
                          "total": total},
        fits=total <= hbm, headroom=1 - total / hbm,
        flops_per_step_xla=stats.flops * n_dev,
        collectives={k: c.as_dict() for k, c in stats.collectives.items()},
        step_time_s_estimate=step_time,
        roofline={"compute_s": t_compute, "hbm_s": t_hbm, "ici_s": t_ici,
                  "hbm_bytes_per_device": stats.hbm_bytes, "ici_bytes_per_device": stats.ici_bytes()},
        tokens_per_sec_per_chip=tokens / step_time / s.num_chips if step_time else None,
        mfu_ceiling=analytic / (n_dev * chip.peak_flops * step_time) if step_time else None)


def advice(r: PlanReport) -> str | None:
    """One line naming what to change when a plan does not fit (or has under 10% headroom)."""
    if r.fits and (r.headroom or 0) >= 0.10:
        return None
    st = r.settings
    b = r.bytes_per_device
    hbm = r.hbm_bytes_per_device
    state = (b.get("params") or 0) + (b.get("optimizer") or 0)
    verdict = "does not fit" if not r.fits else "fits with under 10% HBM headroom"
    need = f"{(b.get('total') or 0) / GiB:.1f} GiB of {hbm / GiB:.2f} GiB per device"
    if state > 0.5 * hbm:
        if not st.get("fsdp"):
            fix = "set --gin.partitioning.PartitionConfig.fsdp=True (shards parameters and optimizer state over 'data')"
        else:
            fix = "use a larger slice (parameters and optimizer state alone take half the HBM even fully sharded)"
    elif st.get("remat_policy") != "full":
        fix = "set --gin.configs.get_config.remat_policy=\"'full'\" (and scan_layers=True)"
    elif st.get("num_microbatches", 1) * 2 * r.mesh.get("data", 1) <= r.global_batch_size:
        fix = f"set --gin.NUM_MICROBATCHES={st.get('num_microbatches', 1) * 2}"
    else:
        fix = "use a larger slice or a smaller BATCH_SIZE"
    return f"{verdict} on {r.slice}: {need}; {fix}, or run `ext5 plan --search`"


# --------------------------------------------------------------------------------------------------
# The step `trainer.train` builds, on a slice's devices
# --------------------------------------------------------------------------------------------------
