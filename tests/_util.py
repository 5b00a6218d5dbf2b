"""Helpers shared by test modules (pytest puts tests/ on sys.path)."""
import jax
from flax import linen as nn

from ext5.model.t5 import init_params


def random_params(cfg, seed: int, norm_noise: float):
    """Init params with non-trivial (not all-ones) norm scales, so a mix-up between layers or norms shows."""
    p = nn.meta.unbox(init_params(cfg, jax.random.PRNGKey(0)))
    leaves, tree = jax.tree_util.tree_flatten(p)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    leaves = [x + norm_noise * jax.random.normal(k, x.shape) if x.ndim == 1 else x for x, k in zip(leaves, keys)]
    return jax.tree_util.tree_unflatten(tree, leaves)
