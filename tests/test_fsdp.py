"""FSDP on 8 CPU devices, read from the compiled HLO: parameters and optimizer state sharded over 'data',
weights (not activations) gathered, and less memory per device than plain data parallelism."""
import re

import jax
import numpy as np
import pytest

from ext5.model import configs
from ext5.train import optimizer, partitioning, step as step_lib

CFG = configs.get_config("tiny", vocab_size=256, dtype="bfloat16", emb_dim=128, mlp_dim=256, num_heads=2,
                         head_dim=64)
B = 16  # global batch: 2 rows per device on the 8 x 1 mesh
_COLLECTIVE = re.compile(r"\s*(?:ROOT )?%\S+ = (.*?) (all-gather|reduce-scatter|all-reduce|all-to-all)(?:-start)?\(")


def collectives(hlo: str) -> list[tuple[str, list[list[int]]]]:
    """(kind, result shapes) of every collective in compiled HLO text."""
    out = []
    for line in hlo.splitlines():
        m = _COLLECTIVE.match(line)
        if m:
            shapes = [[int(d) for d in dims.split(",") if d] for _, dims in re.findall(r"(\w+)\[([\d,]*)\]", m.group(1))]
            out.append((m.group(2), shapes))
    return out


@pytest.fixture(scope="module")
def compiled():
    mesh = partitioning.make_mesh(1)
    out = {}
    for fsdp in (False, True):
        fns = step_lib.build(CFG, mesh, partitioning.standard_logical_axis_rules(fsdp), optimizer.adafactor(0.01),
                             input_len=32, target_len=16)
        out[fsdp] = fns, fns.lower(B).compile()
    return out


def _bytes(c):
    m = c.memory_analysis()
    return m.argument_size_in_bytes + m.temp_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes


def test_fsdp_gathers_weights_not_activations(compiled):
    fns, c = compiled[True]
    colls = collectives(c.as_text())
    gathers = [s for kind, shapes in colls if kind == "all-gather" for s in shapes]
    assert gathers, "FSDP must all-gather weights"
    # No activation is gathered to the global batch (it was: MLP outputs, logits, attention projections).
    assert not [s for s in gathers if s and s[0] == B], [s for s in gathers if s and s[0] == B]
    # Weights are gathered to their full size, e.g. the MLP kernels [embed, mlp].
    assert [CFG.emb_dim, CFG.mlp_dim] in gathers
    # Without FSDP nothing is gathered at all.
    assert not [k for k, _ in collectives(compiled[False][1].as_text()) if k == "all-gather"]


def test_fsdp_shards_params_and_optimizer_state_and_saves_memory(compiled):
    fns, c = compiled[True]
    dp = fns.mesh.shape["data"]
    params = fns.abstract_state.params
    wi = params["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
    assert wi.sharding.spec[0] == "data"
    # Every matrix (all have an 'embed' dim, but the tiny relative-position tables) is split over 'data'.
    for path, x in jax.tree_util.tree_leaves_with_path(params):
        if x.ndim == 2 and "relpos_bias" not in jax.tree_util.keystr(path):
            assert "data" in tuple(x.sharding.spec), jax.tree_util.keystr(path)
    # Adafactor's factored slots keep the parameter's mesh axes on the dims they keep.
    opt = fns.abstract_state.opt_state
    v_row = opt.v_row["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]  # [embed]: the mlp dim averaged out
    assert v_row.shape == (CFG.emb_dim,) and v_row.sharding.spec[0] == "data"
    per_device_params = sum(np.prod(x.sharding.shard_shape(x.shape)) for x in jax.tree.leaves(params))
    total_params = sum(np.prod(x.shape) for x in jax.tree.leaves(params))
    assert per_device_params < 1.5 * total_params / dp
    assert _bytes(c) < _bytes(compiled[False][1])
