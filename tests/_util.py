"""Helpers shared by test modules (pytest puts tests/ on sys.path)."""
import jax
import numpy as np
from flax import linen as nn

from ext5.model.t5 import init_params


def random_params(cfg, seed: int, norm_noise: float):
    """Init params with non-trivial (not all-ones) norm scales, so a mix-up between layers or norms shows."""
    p = nn.meta.unbox(init_params(cfg, jax.random.PRNGKey(0)))
    leaves, tree = jax.tree_util.tree_flatten(p)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    leaves = [x + norm_noise * jax.random.normal(k, x.shape) if x.ndim == 1 else x for x, k in zip(leaves, keys)]
    return jax.tree_util.tree_unflatten(tree, leaves)


def padded_batch(vocab_size: int):
    """(encoder_input, decoder_input, decoder_target) int32 [3, 40] / [3, 20] with ragged padding; > 16 positions
    so the logarithmic relative-position buckets are exercised."""
    rng = np.random.RandomState(0)
    b, in_len, tgt_len = 3, 40, 20
    enc = rng.randint(2, vocab_size, (b, in_len))
    enc[1, 25:] = 0
    enc[2, 6:] = 0
    tgt = rng.randint(2, vocab_size, (b, tgt_len))
    tgt[0, 15:] = 0
    tgt[2, 4:] = 0
    dec = np.concatenate([np.zeros((b, 1), tgt.dtype), tgt[:, :-1]], axis=1)
    return enc.astype(np.int32), dec.astype(np.int32), tgt.astype(np.int32)
