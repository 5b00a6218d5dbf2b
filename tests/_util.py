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


def hf_greedy(model, enc, max_len: int):
    """transformers' greedy generate (decoder start 0) in ext5's layout: [B, max_len], 0 after EOS.

    Without transformers' KV cache: an independent check of ext5's cached decoding, and transformers 5's
    cache is sized by the encoder's layer count (fails when the decoder has more layers)."""
    import torch
    with torch.no_grad():
        gen = model.generate(input_ids=torch.tensor(enc, dtype=torch.long),
                             attention_mask=torch.tensor(enc > 0, dtype=torch.long), do_sample=False,
                             num_beams=1, max_new_tokens=max_len, decoder_start_token_id=0, eos_token_id=1,
                             pad_token_id=0, use_cache=False).numpy()
    assert (gen[:, 0] == 0).all()  # decoder start
    out = np.zeros((len(enc), max_len), np.int32)
    out[:, : gen.shape[1] - 1] = gen[:, 1:]
    return out
