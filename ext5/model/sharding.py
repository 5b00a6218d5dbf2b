"""Sharding rules as data: t5x's logical-axis rules table and the parameter shardings it gives a model.

Every parameter and activation of `ext5.model.t5` carries logical axis names (t5x's); one small rules table
maps them onto a ('data', 'model') mesh. The rules live here, beside the network that names the axes, so
decoding, scoring and the trainer (`ext5.train.partitioning`) read the same table without the model
importing the trainer.
"""
from __future__ import annotations

import contextlib
from typing import Any, Sequence

import jax
from flax import linen as nn

from ext5.model.configs import T5Config

LogicalRules = Sequence[tuple[str, str | None]]


def standard_logical_axis_rules(fsdp: bool = False) -> list[tuple[str, str | None]]:
    """t5x's `standard_logical_axis_rules` for 1-D model parallelism; `fsdp` also shards params over 'data'.

    With fsdp, 'embed' maps to 'data' after 'batch' claims it; flax resolves each mesh axis once per
    tensor, so activations (which carry 'batch') keep 'embed' replicated while parameters shard it.
    """
    rules: list[tuple[str, str | None]] = [
        ("batch", "data"),
        ("vocab", "model"),
        ("mlp", "model"),
        ("heads", "model"),
        ("kv", None),
        ("joined_kv", "model"),
        ("relpos_buckets", None),
        ("abspos_buckets", None),
        ("length", None),
        ("layers", None),
        ("stack", None),
        ("mlp_activations", None),
    ]
    rules.append(("embed", "data") if fsdp else ("embed", None))
    return rules


def param_shardings(cfg: T5Config, mesh: Any, rules: LogicalRules) -> Any:
    """NamedShardings of `cfg`'s parameter tree on `mesh` (from the parameters' logical axes; no compute)."""
    from ext5.model.t5 import init_params  # local: keeps `import ext5.model.sharding` light
    boxed = jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0)))
    return nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, list(rules))


def abstract_params(cfg: T5Config, mesh: Any, rules: LogicalRules) -> Any:
    """`cfg`'s parameters as ShapeDtypeStructs carrying their shardings on `mesh`: a restore target that
    needs no optimizer (eval, inference, export)."""
    from ext5.model.t5 import init_params
    shapes = nn.meta.unbox(jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0))))
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        shapes, param_shardings(cfg, mesh, rules))


@contextlib.contextmanager
def mesh_rules(mesh: Any, rules: Sequence):
    """Trace under `mesh` and the logical-axis `rules`.

    `jax.set_mesh` (not the legacy `with mesh:`) is what makes flax's activation constraints real: without
    an abstract mesh in context `nn.with_logical_constraint` is silently a no-op, and FSDP's parameter
    sharding then leaks into the activations (XLA gathers them over the global batch).
    """
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(jax.set_mesh(mesh))
        except ValueError:  # already inside a trace (e.g. jax.eval_shape(fns.init)): the caller's mesh holds
            stack.enter_context(mesh)
        stack.enter_context(nn.logical_axis_rules(list(rules)))
        yield
