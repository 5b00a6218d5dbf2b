"""Greedy decoding with the self-attention KV cache (`decode=True` path of `Transformer`).

The encoder runs once; each step feeds one token and reads/writes the flax 'cache' collection
(cached_key / cached_value / cache_index per self-attention, plus the decoder's position index). The loop
is a `lax.while_loop` inside one jitted function, stopping early once every row has emitted EOS.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from ext5.model.t5 import Transformer

Array = jax.Array


def init_cache(model: Transformer, params: Any, encoded: Array, encoder_input_tokens: Array,
               max_decode_length: int) -> Any:
    """Zeroed 'cache' collection for decoding `max_decode_length` steps (shapes via eval_shape)."""
    batch = encoder_input_tokens.shape[0]

    def make():
        _, variables = model.apply(
            {"params": params}, encoded, encoder_input_tokens,
            jnp.zeros((batch, max_decode_length), jnp.int32), enable_dropout=False, decode=True,
            max_decode_length=max_decode_length, mutable=["cache"], method=Transformer.decode)
        return variables["cache"]

    shapes = jax.eval_shape(make)
    return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def _greedy(model: Transformer, max_decode_length: int, eos_id: int, params: Any,
            encoder_input_tokens: Array) -> Array:
    batch = encoder_input_tokens.shape[0]
    encoded = model.apply({"params": params}, encoder_input_tokens, enable_dropout=False,
                          method=Transformer.encode)
    cache = init_cache(model, params, encoded, encoder_input_tokens, max_decode_length)

    def cond(state):
        step, _, _, _, done = state
        return (step < max_decode_length) & ~jnp.all(done)

    def body(state):
        step, cache, tokens, prev, done = state
        logits, variables = model.apply(
            {"params": params, "cache": cache}, encoded, encoder_input_tokens, prev[:, None],
            enable_dropout=False, decode=True, max_decode_length=max_decode_length, mutable=["cache"],
            method=Transformer.decode)
        nxt = jnp.argmax(logits[:, -1, :], axis=-1).astype(jnp.int32)
        nxt = jnp.where(done, 0, nxt)  # 0 (padding) after EOS
        tokens = jax.lax.dynamic_update_slice(tokens, nxt[:, None], (0, step))
        return step + 1, variables["cache"], tokens, nxt, done | (nxt == eos_id)

    state = (jnp.array(0, jnp.int32), cache, jnp.zeros((batch, max_decode_length), jnp.int32),
             jnp.zeros((batch,), jnp.int32), jnp.zeros((batch,), bool))
    return jax.lax.while_loop(cond, body, state)[2]


@functools.lru_cache(maxsize=32)
def _compiled(model: Transformer, max_decode_length: int, eos_id: int):
    return jax.jit(functools.partial(_greedy, model, max_decode_length, eos_id))


def greedy_decode(model: Transformer, params: Any, batch: Mapping[str, Any], *, max_decode_length: int,
                  eos_id: int = 1) -> np.ndarray:
    """Greedy decode `batch['encoder_input_tokens']` -> int32 [batch, max_decode_length], 0 after EOS.

    `params` is the 'params' collection (boxed or not; a {'params': ...} wrapper is accepted). Decoding
    starts from token 0 (T5's BOS) and keeps the EOS token itself.
    """
    if isinstance(params, Mapping) and set(params) == {"params"}:
        params = params["params"]
    params = nn.meta.unbox(params)
    tokens = jnp.asarray(batch["encoder_input_tokens"], jnp.int32)
    fn = _compiled(model, int(max_decode_length), int(eos_id))
    return np.asarray(fn(params, tokens), dtype=np.int32)
