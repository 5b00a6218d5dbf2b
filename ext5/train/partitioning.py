"""Device mesh, t5x's logical-axis rules, and host <-> global batch plumbing.

Sharding is data: every parameter and activation carries logical axis names (t5x's), and one small rules
table maps them onto a ('data', 'model') mesh. Nothing here imports TensorFlow.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ext5.model.sharding import LogicalRules, standard_logical_axis_rules  # noqa: F401 (the rules are the model's)


class PartitioningError(ValueError):
    """The batch or model does not fit the device mesh; the message names the fix."""


@dataclasses.dataclass(frozen=True)
class PartitionConfig:
    """How to lay the model over devices (t5x's PjitPartitioner knobs).

    num_partitions: model-parallel size (devices per model replica), t5x's `num_partitions`.
    fsdp: also shard parameters and optimizer state over the 'data' axis.
    logical_axis_rules: override the standard rules entirely.
    """

    num_partitions: int = 1
    fsdp: bool = False
    logical_axis_rules: tuple[tuple[str, str | None], ...] | None = None

    def rules(self) -> list[tuple[str, str | None]]:
        if self.logical_axis_rules is not None:
            return [tuple(r) for r in self.logical_axis_rules]  # type: ignore[misc]
        return standard_logical_axis_rules(self.fsdp)


def make_mesh(num_partitions: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ('data', 'model') mesh over all devices with `num_partitions` devices along 'model'.

    On TPU the layout follows the torus (ICI): jax's `create_device_mesh` when it can map each mesh axis
    onto whole physical axes, else `torus_device_grid` (the model axis on a contiguous sub-block of the
    torus). A layout that ignores the torus is used only as a last resort, with a warning.
    """
    devices = list(devices if devices is not None else jax.devices())
    n = len(devices)
    if num_partitions < 1 or n % num_partitions:
        raise PartitioningError(
            f"num_partitions={num_partitions} does not divide the {n} devices; "
            f"set --gin.partitioning.PartitionConfig.num_partitions to a divisor of {n}")
    shape = (n // num_partitions, num_partitions)
    on_torus = all(getattr(d, "coords", None) is not None for d in devices)
    try:
        from jax.experimental import mesh_utils
        grid = mesh_utils.create_device_mesh(shape, devices)
    except Exception as e:  # noqa: BLE001 -- jax raises NotImplementedError/ValueError for unmappable shapes
        grid = torus_device_grid(devices, num_partitions) if on_torus else None
        if grid is None:
            if on_torus:
                logging.warning("make_mesh: no torus-aware layout for mesh %s on these %d devices (%s); falling "
                                "back to device order, collectives may cross more ICI hops than needed",
                                shape, n, str(e).splitlines()[0][:160])
            grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, ("data", "model"))


def _block_shape(dims: tuple[int, ...], size: int) -> tuple[int, ...] | None:
    """The sub-block of a torus with `dims` holding `size` devices that is best for the model axis: it
    splits as few physical axes as possible (a whole axis keeps its wraparound ring), then is as compact
    as possible (more links per device), then prefers the earlier axes."""
    best, best_key = None, None

    def rec(k: int, left: int, acc: tuple[int, ...]):
        nonlocal best, best_key
        if k == len(dims):
            if left == 1:
                partial = sum(1 < b < d for b, d in zip(acc, dims))
                key = (partial, max(acc), tuple(-b for b in acc))
                if best_key is None or key < best_key:
                    best, best_key = acc, key
            return
        for b in range(1, dims[k] + 1):
            if dims[k] % b == 0 and left % b == 0:
                rec(k + 1, left // b, acc + (b,))

    rec(0, size, ())
    return best


def torus_device_grid(devices: Sequence[Any], num_partitions: int) -> np.ndarray | None:
    """A (data, model) device grid whose model groups are contiguous sub-blocks of the TPU torus.

    jax's `create_device_mesh` needs each mesh axis to be a product of whole physical axes, so e.g. 16-way
    model parallelism on v4-512 (a 4x8x8 torus) has no layout there. Here the model axis takes a 4x4x1
    block (x whole, y split), and the data axis walks the blocks. None when devices carry no coordinates.
    """
    try:
        coords = [tuple(d.coords) + (int(getattr(d, "core_on_chip", 0)),) for d in devices]
    except (AttributeError, TypeError):
        return None
    # Physical axes (core on chip, x, y, z): a grid indexed by each device's coordinates.
    coords = [(c[-1],) + c[:-1] for c in coords]
    phys = tuple(max(c[i] for c in coords) + 1 for i in range(len(coords[0])))
    if int(np.prod(phys)) != len(devices) or len(set(coords)) != len(devices):
        return None
    grid = np.empty(phys, dtype=object)
    for d, c in zip(devices, coords):
        grid[c] = d
    block = _block_shape(phys, num_partitions)
    if block is None:
        return None
    split = grid.reshape([x for p, b in zip(phys, block) for x in (p // b, b)])
    k = len(phys)
    split = split.transpose([2 * i for i in range(k)] + [2 * i + 1 for i in range(k)])
    return split.reshape(len(devices) // num_partitions, num_partitions)


def data_parallel_size(mesh: Mesh) -> int:
    return mesh.shape["data"]


def check_batch_size(global_batch_size: int, mesh: Mesh, num_microbatches: int = 1) -> None:
    """Fail early, in one line, when the batch cannot be split over data-parallel replicas and hosts."""
    dp = data_parallel_size(mesh)
    per_mb = global_batch_size // max(num_microbatches, 1)
    if global_batch_size % max(num_microbatches, 1):
        raise PartitioningError(f"BATCH_SIZE={global_batch_size} is not divisible by num_microbatches="
                         f"{num_microbatches}; choose a batch size that is a multiple of it")
    if per_mb % dp:
        raise PartitioningError(
            f"BATCH_SIZE={global_batch_size} (per microbatch {per_mb}) is not divisible by the data-parallel "
            f"size {dp} (= {mesh.devices.size} devices / num_partitions {mesh.shape['model']}); "
            f"use a multiple of {dp * max(num_microbatches, 1)}")
    if global_batch_size % jax.process_count():
        raise PartitioningError(f"BATCH_SIZE={global_batch_size} is not divisible by the {jax.process_count()} hosts")


def logical_to_sharding(logical_specs: Any, mesh: Mesh, rules: LogicalRules) -> Any:
    """Map a tree of logical PartitionSpecs to NamedShardings on `mesh`."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, list(rules))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P("data"))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def host_shard_info() -> tuple[int, int]:
    """(index, num_shards) of this host's slice of the data, as seqio.ShardInfo wants it."""
    return jax.process_index(), jax.process_count()


def host_batch_size(global_batch_size: int) -> int:
    return global_batch_size // jax.process_count()


def make_global_batch(host_batch: Mapping[str, np.ndarray], mesh: Mesh,
                      global_batch_size: int) -> dict[str, jax.Array]:
    """Assemble a global, 'data'-sharded jax.Array batch from this host's rows."""
    sharding = batch_sharding(mesh)
    out = {}
    for k, v in host_batch.items():
        v = np.asarray(v)
        out[k] = jax.make_array_from_process_local_data(sharding, v, (global_batch_size,) + v.shape[1:])
    return out


def assert_params_sufficiently_sharded(shardings: Any, mesh: Mesh, params_shapes: Any,
                                       min_fraction_sharded: float = 0.5) -> None:
    """MaxText-style guard: with model parallelism, most parameter bytes must really be split.

    Catches a rules table that silently leaves big matrices replicated on every device.
    """
    if mesh.devices.size == 1 or mesh.shape["model"] == 1:
        return
    total = sharded = 0
    for sh, shape in zip(jax.tree.leaves(shardings), jax.tree.leaves(params_shapes)):
        size = int(np.prod(shape.shape))
        total += size
        if any(ax is not None for ax in sh.spec):
            sharded += size
    if total and sharded / total < min_fraction_sharded:
        raise PartitioningError(f"only {sharded / total:.0%} of parameter elements are sharded over the mesh "
                         f"{dict(mesh.shape)}; check the logical axis rules")


def maybe_initialize_distributed(*, multiprocess_gpu: bool = False, coordinator_address: str | None = None,
                                 process_count: int | None = None, process_index: int | None = None) -> None:
    """Initialise `jax.distributed` from t5x's flags, or automatically on a multi-worker Cloud TPU VM."""
    if coordinator_address or multiprocess_gpu:
        # CPU collectives across processes need gloo (tests run two local processes this way); the flag
        # only touches the CPU backend, and must be set before any backend initialises.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        logging.info("jax.distributed.initialize(%s, %s, %s)", coordinator_address, process_count, process_index)
        jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=process_count,
                                   process_id=process_index)
    elif len(os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1:
        jax.distributed.initialize()


def fit_partitions(preferred: int = 2, devices: Sequence[jax.Device] | None = None) -> int:
    """The largest divisor of the device count that is <= `preferred`: model parallelism where the devices
    allow it, and 1 on a single device. The local gins bind num_partitions to it so they run anywhere; an
    explicit num_partitions is never adjusted (make_mesh rejects one that does not divide the devices)."""
    n = len(devices if devices is not None else jax.devices())
    return max(d for d in range(1, max(1, min(preferred, n)) + 1) if n % d == 0)
