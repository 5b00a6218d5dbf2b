"""Target log-likelihood scores, and rank-classification scoring with a shared encoder.

`score` is t5x's `score_batch` (summed log p of decoder_target_tokens > 0, no z-loss).
`score_choices` scores C answer choices per example: the encoder runs once per example, every
decoder layer's cross-attention keys/values are computed once from its output, and the C choices'
decoder rows use that one copy (no repeat of the encoder, the projections or the keys/values; see
`Transformer.decode(cross_kv=...)`). Both are jit-compiled once per model, shape and mesh.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from ext5.model.decoding import (LogicalRules, encode_and_cross_kv, place, resolve_rules, run_in_mesh,
                                 unwrap_params)
from ext5.model.t5 import Transformer

Array = jax.Array


def _sum_log_likelihood(logits: Array, targets: Array, length_normalize: Any) -> Array:
    """Summed (optionally per-token averaged) log p(target) over targets > 0 along the last axis.

    `length_normalize` may be traced (one compiled function serves both settings).
    """
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    tok = jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    valid = (targets > 0).astype(jnp.float32)
    total = jnp.sum(tok * valid, axis=-1)
    return jnp.where(length_normalize, total / jnp.maximum(jnp.sum(valid, axis=-1), 1.0), total)


def shift_right(targets: Array) -> Array:
    """Decoder inputs for unpacked targets: BOS (0) then targets[:-1] along the last axis."""
    pad = [(0, 0)] * (targets.ndim - 1) + [(1, 0)]
    return jnp.pad(targets, pad)[..., :-1]


def log_likelihood(model: Transformer, params: Any, encoder_input_tokens: Array,
                   decoder_input_tokens: Array, decoder_target_tokens: Array, *,
                   length_normalize: bool = False) -> Array:
    """Pure (traceable) per-row target log-likelihood with a full forward pass -> float32 [B]."""
    logits = model.apply({"params": params}, encoder_input_tokens, decoder_input_tokens,
                         decoder_target_tokens, enable_dropout=False)
    return _sum_log_likelihood(logits, decoder_target_tokens, length_normalize)


def shared_log_likelihood(model: Transformer, params: Any, encoder_input_tokens: Array,
                          decoder_target_tokens: Array, *, length_normalize: bool = False) -> Array:
    """Pure (traceable) choice scores [B, C] for targets [B, C, T], encoder and cross K/V shared."""
    b, c, t = decoder_target_tokens.shape
    encoded, cross_kv = encode_and_cross_kv(model, params, encoder_input_tokens)
    del encoded  # only its keys/values are needed by the decoder
    targets = decoder_target_tokens.reshape(b * c, t)  # example-major: rows b*C .. b*C+C-1
    logits = model.apply({"params": params}, None, encoder_input_tokens, shift_right(targets), targets,
                         enable_dropout=False, cross_kv=cross_kv, method=Transformer.decode)
    return _sum_log_likelihood(logits, targets, length_normalize).reshape(b, c)


@functools.lru_cache(maxsize=32)
def _compiled(model: Transformer, kind: str, mesh: Any, rules: tuple | None):
    del mesh, rules  # part of the key: logical constraints are resolved at trace time
    fn = log_likelihood if kind == "score" else shared_log_likelihood

    def run(params, *arrays_and_flag):
        *arrays, flag = arrays_and_flag
        return fn(model, params, *arrays, length_normalize=flag)

    return jax.jit(run)


def score(model: Transformer, params: Any, batch: Mapping[str, Any], *, length_normalize: bool = False,
          mesh: Any = None, rules: LogicalRules | None = None) -> np.ndarray:
    """Summed target log-likelihood per row -> float32 [B] (z-loss off).

    `batch` has encoder_input_tokens, decoder_input_tokens and decoder_target_tokens; positions with
    decoder_target_tokens == 0 are padding. `length_normalize` divides by the number of real target
    tokens. `params` may be boxed, unboxed or wrapped {'params': ...}; `mesh`/`rules` as `decode`.
    """
    missing = [k for k in ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens")
               if k not in batch]
    if missing:
        raise ValueError(f"score needs batch features {missing}; convert with "
                         f"seqio.EncDecFeatureConverter(pack=False)")
    rules_t = resolve_rules(mesh, rules)
    arrays = [np.asarray(batch[k], np.int32) for k in
              ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens")]
    params, arrays, rows = place(model, unwrap_params(params), arrays, mesh, rules_t)
    fn = _compiled(model, "score", mesh, rules_t)
    out = run_in_mesh(fn, mesh, rules_t, params, *arrays, np.bool_(length_normalize))
    return np.asarray(out, np.float32)[:rows]


def score_choices(model: Transformer, params: Any, encoder_input_tokens: Any, decoder_target_tokens: Any,
                  *, length_normalize: bool = False, mesh: Any = None,
                  rules: LogicalRules | None = None) -> np.ndarray:
    """Log-likelihood of each answer choice -> float32 [B, C]; all-zero (padding) choices score 0.

    encoder_input_tokens [B, L]; decoder_target_tokens [B, C, T] (0 = padding). Decoder inputs are
    the targets shifted right with BOS 0, per choice. The encoder output and the cross-attention
    keys/values are computed once per example and shared by its C choices.
    """
    enc = np.asarray(encoder_input_tokens, np.int32)
    tgt = np.asarray(decoder_target_tokens, np.int32)
    if enc.ndim != 2 or tgt.ndim != 3 or tgt.shape[0] != enc.shape[0]:
        raise ValueError(f"score_choices wants encoder_input_tokens [B, L] and decoder_target_tokens "
                         f"[B, C, T] with the same B; got {enc.shape} and {tgt.shape}")
    rules_t = resolve_rules(mesh, rules)
    params, (enc, tgt), rows = place(model, unwrap_params(params), [enc, tgt], mesh, rules_t)
    fn = _compiled(model, "choices", mesh, rules_t)
    out = run_in_mesh(fn, mesh, rules_t, params, enc, tgt, np.bool_(length_normalize))
    return np.asarray(out, np.float32)[:rows]
