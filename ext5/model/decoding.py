"""Autoregressive decoding with a KV cache: greedy, temperature / top-k sampling, t5x-style beam search.

The encoder runs once and every decoder layer's cross-attention keys/values are computed once from
its output (`Transformer.cross_attention_kv`); each step then feeds one token, reads/writes the flax
'cache' collection (self-attention keys/values) and reuses the cross keys/values. The whole loop is
one `lax.while_loop` inside one jitted function per static configuration, stopping early once every
row is done. Beam search keeps one copy of the cross keys/values per input, shared by its beams.

Beam search follows t5x's `decoding.beam_search`: each step takes the top 2k of the k*vocab
extensions (so k non-EOS candidates always remain), live beams are the top k non-EOS ones, and
sequences that end in EOS enter a separate top-k "finished" set scored by
log p / brevity_penalty(len) with t5x's `brevity_penalty` ((5 + len) / 6) ** alpha, len counting the
EOS. The search stops at max length or once no live beam can beat the worst finished one. A row
with no finished sequence returns its best live beam.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax import lax

from ext5.model.sharding import LogicalRules, mesh_rules, param_shardings, standard_logical_axis_rules
from ext5.model.t5 import Transformer

Array = jax.Array

METHODS = ("greedy", "sample", "beam")
# Large negative log-probability for dead beams (finite, so sums and comparisons stay well defined).
NEG_INF = -1.0e7
# Temperatures below this sample the argmax (t5x's MIN_TEMPERATURE): 1/T would overflow.
MIN_TEMPERATURE = 1e-4


def brevity_penalty(alpha: float, length: Array) -> Array:
    """t5x's beam-search length penalty ((5 + length) / 6) ** alpha."""
    return jnp.power((5.0 + jnp.asarray(length, jnp.float32)) / 6.0, alpha)


# ---------------------------------------------------------------------------------------------------
# Parameters, meshes and padding shared by decoding and scoring
# ---------------------------------------------------------------------------------------------------
def unwrap_params(params: Any) -> Any:
    """The plain 'params' tree from boxed/unboxed params, optionally wrapped as {'params': ...}."""
    if isinstance(params, Mapping) and set(params) == {"params"}:
        params = params["params"]
    return nn.meta.unbox(params)


def resolve_rules(mesh: Any, rules: LogicalRules | None) -> tuple | None:
    """Hashable logical axis rules for `mesh` (t5x's standard rules when none are given)."""
    if mesh is None:
        return None
    if rules is None:
        rules = standard_logical_axis_rules()
    return tuple((str(k), v) for k, v in rules)


@functools.lru_cache(maxsize=16)
def _param_shardings(model: Transformer, mesh: Any, rules: tuple) -> Any:
    return param_shardings(model.config, mesh, rules)


def place(model: Transformer, params: Any, arrays: Sequence[np.ndarray], mesh: Any,
          rules: tuple | None) -> tuple[Any, list[Any], int]:
    """Put params (sharded by their logical axes) and batch arrays (rows over 'data') on `mesh`.

    Rows are zero-padded to a multiple of the data-parallel size; returns (params, arrays, rows).
    Without a mesh everything is returned as is.
    """
    rows = int(np.shape(arrays[0])[0])
    if mesh is None:
        return params, [jnp.asarray(a) for a in arrays], rows
    from jax.sharding import NamedSharding, PartitionSpec
    try:
        params = jax.device_put(params, _param_shardings(model, mesh, rules))
    except ValueError as e:
        raise ValueError(f"params do not match model config {model.config} "
                         f"(scan_layers={model.config.scan_layers}?): {e}") from None
    dp = mesh.shape.get("data", 1)
    padded = -(-rows // dp) * dp
    out = []
    for a in arrays:
        a = np.asarray(a)
        a = np.pad(a, [(0, padded - rows)] + [(0, 0)] * (a.ndim - 1))
        out.append(jax.device_put(a, NamedSharding(mesh, PartitionSpec("data"))))
    return params, out, rows


def run_in_mesh(fn, mesh: Any, rules: tuple | None, *args):
    """Call `fn(*args)` under the mesh and logical axis rules (tracing happens there too)."""
    if mesh is None:
        return fn(*args)
    with mesh_rules(mesh, rules):
        return fn(*args)


# ---------------------------------------------------------------------------------------------------
# Model plumbing: encoder, cross keys/values, cache, one step
# ---------------------------------------------------------------------------------------------------
def encode_and_cross_kv(model: Transformer, params: Any, encoder_input_tokens: Array):
    """(encoded, cross_kv): the encoder output and every decoder layer's cross (keys, values)."""
    encoded = model.apply({"params": params}, encoder_input_tokens, enable_dropout=False,
                          method=Transformer.encode)
    cross_kv = model.apply({"params": params}, encoded, method=Transformer.cross_attention_kv)
    return encoded, cross_kv


def init_cache(model: Transformer, params: Any, encoder_input_tokens: Array, cross_kv: Any,
               num_rows: int, max_decode_length: int) -> Any:
    """Zeroed 'cache' collection for `num_rows` decoder rows and `max_decode_length` steps."""

    def make():
        _, variables = model.apply(
            {"params": params}, None, encoder_input_tokens,
            jnp.zeros((num_rows, max_decode_length), jnp.int32), enable_dropout=False, decode=True,
            max_decode_length=max_decode_length, cross_kv=cross_kv, mutable=["cache"],
            method=Transformer.decode)
        return variables["cache"]

    shapes = jax.eval_shape(make)
    return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def _step(model: Transformer, params: Any, cache: Any, cross_kv: Any, encoder_input_tokens: Array,
          tokens: Array, max_decode_length: int) -> tuple[Array, Any]:
    """Feed one token per row -> (float32 next-token logits [rows, vocab], updated cache)."""
    logits, variables = model.apply(
        {"params": params, "cache": cache}, None, encoder_input_tokens, tokens[:, None],
        enable_dropout=False, decode=True, max_decode_length=max_decode_length, cross_kv=cross_kv,
        mutable=["cache"], method=Transformer.decode)
    return logits[:, -1, :].astype(jnp.float32), variables["cache"]


# ---------------------------------------------------------------------------------------------------
# Greedy and sampling
# ---------------------------------------------------------------------------------------------------
def _choose(logits: Array, rng: Array, method: str, knobs: Array) -> Array:
    """Next tokens: argmax, or a draw from softmax(logits / T) over the top_k (0 = all) tokens.

    knobs = (temperature, top_k) are traced, so changing them does not recompile.
    """
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    if method == "greedy":
        return greedy
    temperature, top_k = knobs[0], knobs[1].astype(jnp.int32)
    scaled = logits / jnp.maximum(temperature, MIN_TEMPERATURE)
    # The k-th largest logit is the cut-off; ties at the cut-off all stay in.
    ranked = -jnp.sort(-scaled, axis=-1)
    kth = jnp.take(ranked, jnp.clip(top_k - 1, 0, logits.shape[-1] - 1), axis=-1)[:, None]
    scaled = jnp.where((top_k > 0) & (scaled < kth), -jnp.inf, scaled)
    sampled = jax.random.categorical(rng, scaled, axis=-1).astype(jnp.int32)
    return jnp.where(temperature < MIN_TEMPERATURE, greedy, sampled)


def _sample_loop(model: Transformer, cfg: tuple, params: Any, encoder_input_tokens: Array,
                 seed: Array, knobs: Array) -> Array:
    method, max_len, eos_id = cfg
    batch = encoder_input_tokens.shape[0]
    _, cross_kv = encode_and_cross_kv(model, params, encoder_input_tokens)
    cache = init_cache(model, params, encoder_input_tokens, cross_kv, batch, max_len)
    base_rng = jax.random.PRNGKey(seed)

    def cond(state):
        step, _, _, _, done = state
        return (step < max_len) & ~jnp.all(done)

    def body(state):
        step, cache, tokens, prev, done = state
        logits, cache = _step(model, params, cache, cross_kv, encoder_input_tokens, prev, max_len)
        nxt = _choose(logits, jax.random.fold_in(base_rng, step), method, knobs)
        nxt = jnp.where(done, 0, nxt)  # 0 (padding) after EOS
        tokens = lax.dynamic_update_slice(tokens, nxt[:, None], (0, step))
        return step + 1, cache, tokens, nxt, done | (nxt == eos_id)

    state = (jnp.array(0, jnp.int32), cache, jnp.zeros((batch, max_len), jnp.int32),
             jnp.zeros((batch,), jnp.int32), jnp.zeros((batch,), bool))
    return lax.while_loop(cond, body, state)[2]


# ---------------------------------------------------------------------------------------------------
# Beam search
# ---------------------------------------------------------------------------------------------------
def _gather(x: Array, idx: Array) -> Array:
    """x [batch, n, ...] -> [batch, m, ...] taking x[b, idx[b, j]]."""
    idx = idx.reshape(idx.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx, axis=1)


def _gather_cache(cache: Any, beam_idx: Array, batch: int, beams: int) -> Any:
    """Reorder the self-attention cache rows (batch*beams, example-major) to follow `beam_idx`."""

    def fn(path, x):
        names = [getattr(p, "key", "") for p in path]
        if names[-1] not in ("cached_key", "cached_value"):
            return x  # cache indices are shared by all rows
        axis = 1 if "layers" in names else 0  # scanned layers carry a leading layer axis
        x = jnp.moveaxis(x, axis, 0)
        x = x.reshape((batch, beams) + x.shape[1:])
        x = _gather(x, beam_idx).reshape((batch * beams,) + x.shape[2:])
        return jnp.moveaxis(x, 0, axis)

    return jax.tree_util.tree_map_with_path(fn, cache)


def _beam_search(model: Transformer, cfg: tuple, params: Any, encoder_input_tokens: Array,
                 seed: Array, knobs: Array) -> tuple[Array, Array]:
    del seed
    max_len, eos_id, k = cfg
    alpha = knobs[0]  # traced: a new alpha does not recompile
    batch = encoder_input_tokens.shape[0]
    # One copy of the cross keys/values per input: beams are consecutive decoder rows (grouped).
    _, cross_kv = encode_and_cross_kv(model, params, encoder_input_tokens)
    cache = init_cache(model, params, encoder_input_tokens, cross_kv, batch * k, max_len)
    # Column 0 holds the BOS token (0) fed at the first step; the result drops it.
    seqs0 = jnp.zeros((batch, k, max_len + 1), jnp.int32)
    live_lp0 = jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1), jnp.float32), (batch, 1))
    state = dict(step=jnp.array(0, jnp.int32), live=seqs0, live_lp=live_lp0, fin=seqs0,
                 fin_scores=jnp.full((batch, k), NEG_INF, jnp.float32),
                 fin_flags=jnp.zeros((batch, k), bool), cache=cache)
    best_possible_penalty = brevity_penalty(alpha, max_len)

    def cond(s):
        # Live log-probs only fall, and the penalty is largest at max length: live_lp / bp(max_len)
        # bounds every future finished score of a live beam (t5x's termination test).
        best_live = s["live_lp"][:, 0] / best_possible_penalty
        worst_fin = jnp.where(jnp.all(s["fin_flags"], axis=1), jnp.min(s["fin_scores"], axis=1), NEG_INF)
        return (s["step"] < max_len) & ~jnp.all(worst_fin > best_live)

    def body(s):
        t = s["step"]
        ids = lax.dynamic_slice_in_dim(s["live"], t, 1, axis=2).reshape(batch * k)
        logits, cache = _step(model, params, s["cache"], cross_kv, encoder_input_tokens, ids, max_len)
        vocab = logits.shape[-1]
        logp = jax.nn.log_softmax(logits).reshape(batch, k, vocab) + s["live_lp"][:, :, None]
        # Top 2k of all extensions: at most k end in EOS, so k live candidates always remain.
        top_lp, top_idx = lax.top_k(logp.reshape(batch, k * vocab), 2 * k)
        src_beam, token = top_idx // vocab, (top_idx % vocab).astype(jnp.int32)
        cand = _gather(s["live"], src_beam)
        cand = lax.dynamic_update_slice_in_dim(cand, token[:, :, None], t + 1, axis=2)
        ended = token == eos_id

        alive_lp = jnp.where(ended, NEG_INF, top_lp)
        _, keep = lax.top_k(alive_lp, k)
        live, live_lp = _gather(cand, keep), _gather(alive_lp, keep)
        cache = _gather_cache(cache, _gather(src_beam, keep), batch, k)

        # Candidates descended from the dummy start beams are not real sequences.
        real_end = ended & (top_lp > 0.5 * NEG_INF)
        new_scores = jnp.where(real_end, top_lp / brevity_penalty(alpha, t + 1), NEG_INF)
        all_seqs = jnp.concatenate([s["fin"], cand], axis=1)
        all_scores = jnp.concatenate([s["fin_scores"], new_scores], axis=1)
        all_flags = jnp.concatenate([s["fin_flags"], real_end], axis=1)
        _, best = lax.top_k(all_scores, k)
        return dict(step=t + 1, live=live, live_lp=live_lp, fin=_gather(all_seqs, best),
                    fin_scores=_gather(all_scores, best), fin_flags=_gather(all_flags, best), cache=cache)

    s = lax.while_loop(cond, body, state)
    any_finished = jnp.any(s["fin_flags"], axis=1)
    top = jnp.where(any_finished[:, None], s["fin"][:, 0], s["live"][:, 0])
    top_score = jnp.where(any_finished, s["fin_scores"][:, 0], s["live_lp"][:, 0])
    return top[:, 1:], top_score


# ---------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=64)
def _compiled(model: Transformer, method: str, cfg: tuple, mesh: Any, rules: tuple | None):
    # mesh/rules are part of the key: logical constraints are resolved when the function is traced.
    del mesh, rules
    loop = _beam_search if method == "beam" else _sample_loop
    return jax.jit(functools.partial(loop, model, cfg))


def _run(model: Transformer, params: Any, encoder_input_tokens: Any, method: str, cfg: tuple, seed: int,
         knobs: tuple[float, ...], mesh: Any, rules: LogicalRules | None):
    rules_t = resolve_rules(mesh, rules)
    params = unwrap_params(params)
    tokens = np.asarray(encoder_input_tokens, np.int32)
    params, (tokens_dev,), rows = place(model, params, [tokens], mesh, rules_t)
    fn = _compiled(model, method, cfg, mesh, rules_t)
    out = run_in_mesh(fn, mesh, rules_t, params, tokens_dev, np.uint32(seed),
                      np.asarray(knobs, np.float32))
    return jax.tree_util.tree_map(lambda x: np.asarray(x)[:rows], out)


def beam_search(model: Transformer, params: Any, encoder_input_tokens: Any, *, max_decode_length: int,
                num_beams: int = 4, alpha: float = 0.6, eos_id: int = 1, mesh: Any = None,
                rules: LogicalRules | None = None) -> tuple[np.ndarray, np.ndarray]:
    """t5x beam search -> (top sequences int32 [B, max_decode_length], their scores float32 [B]).

    A score is log p / brevity_penalty(alpha, length incl. EOS) for a finished sequence, or the raw
    log p of the best live beam for a row where nothing finished.
    """
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    if max_decode_length < 1:
        raise ValueError(f"max_decode_length must be >= 1, got {max_decode_length}")
    cfg = (int(max_decode_length), int(eos_id), int(num_beams))
    seqs, scores = _run(model, params, encoder_input_tokens, "beam", cfg, 0, (alpha,), mesh, rules)
    return seqs.astype(np.int32), scores.astype(np.float32)


def decode(model: Transformer, params: Any, batch: Mapping[str, Any], *, max_decode_length: int,
           method: str = "greedy", num_beams: int = 4, alpha: float = 0.6, temperature: float = 1.0,
           top_k: int = 0, seed: int = 0, eos_id: int = 1, mesh: Any = None,
           rules: LogicalRules | None = None) -> np.ndarray:
    """Decode `batch['encoder_input_tokens']` -> int32 [batch, max_decode_length], 0 after EOS.

    method: "greedy" (argmax), "sample" (softmax(logits / temperature) restricted to the `top_k`
      most likely tokens when top_k > 0; temperature < 1e-4 is argmax; `seed` fixes the draws) or
      "beam" (t5x beam search with `num_beams` beams and brevity penalty `alpha`; the top beam).
    params: the 'params' collection, boxed or not, optionally wrapped as {'params': ...}.
    mesh/rules: run sharded like training (rows over 'data', parameters by their logical axes);
      rules default to t5x's standard rules. Rows are padded to the data-parallel size internally.
    Decoding starts from token 0 (T5's BOS) and keeps the EOS token itself. Compiled once per
    model, method, max_decode_length, eos_id, num_beams and mesh (alpha, temperature, top_k and
    seed are traced).
    """
    if method not in METHODS:
        raise ValueError(f"unknown decoding method {method!r}; use one of {', '.join(METHODS)}")
    if "encoder_input_tokens" not in batch:
        raise ValueError("decode needs batch['encoder_input_tokens'] [batch, input_len] (int token ids)")
    if max_decode_length < 1:
        raise ValueError(f"max_decode_length must be >= 1, got {max_decode_length}")
    if method == "beam":
        return beam_search(model, params, batch["encoder_input_tokens"],
                           max_decode_length=max_decode_length, num_beams=num_beams, alpha=alpha,
                           eos_id=eos_id, mesh=mesh, rules=rules)[0]
    if method == "sample" and (temperature < 0 or top_k < 0):
        raise ValueError(f"sampling needs temperature >= 0 and top_k >= 0, got {temperature}, {top_k}")
    cfg = (method, int(max_decode_length), int(eos_id))
    out = _run(model, params, batch["encoder_input_tokens"], method, cfg, seed, (temperature, top_k),
               mesh, rules)
    return out.astype(np.int32)


def greedy_decode(model: Transformer, params: Any, batch: Mapping[str, Any], *, max_decode_length: int,
                  eos_id: int = 1) -> np.ndarray:
    """Greedy decode `batch['encoder_input_tokens']` -> int32 [batch, max_decode_length], 0 after EOS.

    `params` is the 'params' collection (boxed or not; a {'params': ...} wrapper is accepted). Decoding
    starts from token 0 (T5's BOS) and keeps the EOS token itself.
    """
    return decode(model, params, batch, max_decode_length=max_decode_length, method="greedy",
                  eos_id=eos_id)
