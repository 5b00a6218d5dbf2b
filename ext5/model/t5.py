"""T5.1.1 encoder-decoder in Flax linen, parameter-compatible with t5x's `examples/t5/network.py`.

Parameter tree (unscanned), exactly t5x's names and layouts:
  token_embedder/embedding                          [vocab, embed]        ('vocab', 'embed')
  encoder/relpos_bias/rel_embedding                 [heads, buckets]      ('heads', 'relpos_buckets')
  encoder/layers_{i}/pre_attention_layer_norm/scale [embed]               ('embed',)
  encoder/layers_{i}/attention/{query,key,value}/kernel [embed, heads*kv] ('embed', 'joined_kv')
  encoder/layers_{i}/attention/out/kernel           [heads*kv, embed]     ('joined_kv', 'embed')
  encoder/layers_{i}/pre_mlp_layer_norm/scale, mlp/wi_0, mlp/wi_1 [embed, mlp], mlp/wo [mlp, embed]
  encoder/encoder_norm/scale
  decoder/layers_{i}/{pre_self_attention_layer_norm, self_attention, pre_cross_attention_layer_norm,
                      encoder_decoder_attention, pre_mlp_layer_norm, mlp}
  decoder/relpos_bias/rel_embedding, decoder/decoder_norm/scale, decoder/logits_dense/kernel [embed, vocab]
With `scan_layers=True` the per-layer subtrees are stacked under `{encoder,decoder}/layers` with a leading
'layers' axis; `scan_to_unscanned` / `unscanned_to_scan` convert between the two layouts.

For inference, `Transformer.cross_attention_kv` computes every decoder layer's cross-attention keys and
values once from the encoder output; `Transformer.decode(cross_kv=...)` reuses them (per decoding step,
and shared by the answer choices or beams of one input; see MultiHeadDotProductAttention).

Like t5x, attention kernels are stored 2-D (joined heads*kv, the layout of t5x and T5 checkpoints) and
reshaped to [embed, heads, kv] at use; the query kernel's init carries the 1/sqrt(head_dim) factor, so
attention logits are not rescaled.

Differences from t5x that do not change the function on real data: the relative position bias is
computed once per stack from *positions* (key_pos - query_pos; identical to t5x's arange inside every
packed segment, and what keeps a packed row equal to its examples run alone), masks are folded into that
bias once per stack instead of once per layer, and the token embedding is a gather, not a one-hot matmul.
"""

from __future__ import annotations

import functools
import operator
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax import lax

from ext5.model.configs import T5Config

Array = jax.Array
# Large negative additive bias for masked attention logits (t5x uses the same constant).
NEG_INF = -1e10

_default_kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
# t5x's MultiHeadDotProductAttention default (non-truncated normal).
_attention_kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
_relpos_init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")


def _constrain(x: Array, axes: tuple[str, ...]) -> Array:
    """Logical sharding constraint; a no-op without an active mesh / axis rules."""
    return nn.with_logical_constraint(x, axes)


# Logical axes that FSDP shards over the data axis (`partitioning.standard_logical_axis_rules(fsdp=True)`).
_FSDP_AXES = ("embed",)


def _weight_in_use(weight: Array, axes: tuple[str, ...], *, scatter_grad: bool = True) -> Array:
    """A (cast) weight in its layout without FSDP, for use in this layer's compute.

    Under FSDP rules XLA then all-gathers the *weight* per layer instead of gathering activations over
    the global batch; the custom gradient pins the weight's cotangent back to the parameter's own
    (FSDP) layout, so the batch-summed gradient is reduce-scattered rather than all-reduced in full.
    `scatter_grad=False` keeps the plain transpose (the embedding: its gradient is a scatter-add of token
    rows, which GSPMD would otherwise serve by gathering the token ids over the global batch).
    A no-op without FSDP axes in `axes`, rules or a mesh.
    """
    gathered = tuple(None if a in _FSDP_AXES else a for a in axes)
    if gathered == tuple(axes):
        return weight
    if not scatter_grad:
        return _constrain(weight, gathered)
    return _gather_weight(weight, tuple(axes), gathered)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _gather_weight(weight: Array, axes: tuple, gathered: tuple) -> Array:
    return _constrain(weight, gathered)


def _gather_weight_fwd(weight, axes, gathered):
    return _constrain(weight, gathered), None


def _gather_weight_bwd(axes, gathered, _, cotangent):
    return (_constrain(cotangent, axes),)


_gather_weight.defvjp(_gather_weight_fwd, _gather_weight_bwd)


def _remat_policy(name: str):
    if name == "full":
        return jax.checkpoint_policies.nothing_saveable
    if name == "minimal":
        # Save the outputs of the dense projections (dots without batch dims); recompute attention
        # einsums and elementwise work in the backward pass.
        return jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims
    return None


# ---------------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------------
class DenseGeneral(nn.Module):
    """Bias-free dense layer over `axis` with a 2-D float32 kernel [prod(in), prod(features)] (t5x)."""

    features: int | tuple[int, ...]
    axis: int | tuple[int, ...] = -1
    dtype: Any = jnp.float32
    kernel_init: Callable = _default_kernel_init
    kernel_axes: tuple[str, ...] = ()

    @nn.compact
    def __call__(self, inputs: Array) -> Array:
        features = tuple(self.features) if isinstance(self.features, tuple) else (self.features,)
        axis = tuple(self.axis) if isinstance(self.axis, tuple) else (self.axis,)
        axis = tuple(a % inputs.ndim for a in axis)
        in_shape = tuple(inputs.shape[a] for a in axis)
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(self.kernel_init, self.kernel_axes),
            (int(np.prod(in_shape)), int(np.prod(features))),
            jnp.float32,
        )
        kernel = _weight_in_use(jnp.asarray(kernel, self.dtype), self.kernel_axes)
        kernel = kernel.reshape(in_shape + features)
        inputs = jnp.asarray(inputs, self.dtype)
        return lax.dot_general(inputs, kernel, ((axis, tuple(range(len(axis)))), ((), ())))


class LayerNorm(nn.Module):
    """T5 RMS layer norm: no mean subtraction, no bias; statistics in float32."""

    dtype: Any = jnp.float32
    epsilon: float = 1e-6

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = jnp.asarray(x, jnp.float32)
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                           (x.shape[-1],), jnp.float32)
        mean2 = jnp.mean(lax.square(x), axis=-1, keepdims=True)
        y = jnp.asarray(x * lax.rsqrt(mean2 + self.epsilon), self.dtype)
        return y * _weight_in_use(jnp.asarray(scale, self.dtype), ("embed",))


class Embed(nn.Module):
    """Token embedding table [vocab, embed], shared by encoder and decoder."""

    num_embeddings: int
    features: int
    dtype: Any = jnp.float32

    def setup(self) -> None:
        self.embedding = self.param(
            "embedding",
            nn.with_logical_partitioning(nn.initializers.normal(stddev=1.0), ("vocab", "embed")),
            (self.num_embeddings, self.features),
            jnp.float32,
        )

    def __call__(self, tokens: Array) -> Array:
        # Cast before the gather (same values) so FSDP gathers the table in the compute dtype.
        table = _weight_in_use(jnp.asarray(self.embedding, self.dtype), ("vocab", "embed"),
                               scatter_grad=False)
        out = jnp.take(table, tokens.astype(jnp.int32), axis=0)
        return _constrain(out, ("batch", "length", "embed"))

    def attend(self, query: Array) -> Array:
        """Logits against the embedding table (float32), for `logits_via_embedding`."""
        table = _weight_in_use(self.embedding, ("vocab", "embed"), scatter_grad=False)
        return jnp.dot(query.astype(jnp.float32), table.T)


def relative_position_bucket(relative_position: Array, *, bidirectional: bool = True,
                             num_buckets: int = 32, max_distance: int = 128) -> Array:
    """T5's bucketing of `relative_position` (= key_pos - query_pos) into [0, num_buckets) (t5x formula)."""
    ret = 0
    n = -relative_position
    if bidirectional:
        num_buckets //= 2
        ret += (n < 0).astype(jnp.int32) * num_buckets
        n = jnp.abs(n)
    else:
        n = jnp.maximum(n, 0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    # eps as in t5x: keeps exact powers (e.g. n = 2*max_exact) from flooring one bucket low.
    val_if_large = max_exact + (
        jnp.log(n.astype(jnp.float32) / max_exact + np.finfo(np.float32).eps)
        / np.log(max_distance / max_exact) * (num_buckets - max_exact)).astype(jnp.int32)
    val_if_large = jnp.minimum(val_if_large, num_buckets - 1)
    return ret + jnp.where(is_small, n, val_if_large)


class RelativePositionBiases(nn.Module):
    """Per-head bias [b, heads, q, k] (float32) from query/key positions; one table per stack."""

    num_buckets: int
    max_distance: int
    num_heads: int

    @nn.compact
    def __call__(self, q_pos: Array, k_pos: Array, bidirectional: bool) -> Array:
        table = self.param("rel_embedding",
                           nn.with_logical_partitioning(_relpos_init, ("heads", "relpos_buckets")),
                           (self.num_heads, self.num_buckets), jnp.float32)
        rel = k_pos[:, None, :].astype(jnp.int32) - q_pos[:, :, None].astype(jnp.int32)
        buckets = relative_position_bucket(rel, bidirectional=bidirectional,
                                           num_buckets=self.num_buckets, max_distance=self.max_distance)
        values = jnp.take(table.T, buckets, axis=0)  # [b, q, k, heads]
        return jnp.transpose(values, (0, 3, 1, 2))


def _mask_to_bias(mask: Array) -> Array:
    return jnp.where(mask, 0.0, NEG_INF).astype(jnp.float32)


class MultiHeadDotProductAttention(nn.Module):
    """Multi-head attention with an additive float32 bias (relative positions + mask folded in).

    With `decode=True` the first call (no cache yet) creates zeroed `cached_key`/`cached_value`
    [batch, max_len, heads, kv] and `cache_index`; later calls take one query position, write its
    key/value at `cache_index` and attend over the cache (the caller's bias masks future slots).

    `kv_only=True` returns just the (key, value) projections of `inputs_kv`; passing them back as
    `kv=` skips the projections (cross-attention keys/values computed once per encoder output).
    Precomputed keys/values may have a batch `kb` that divides the query batch `qb`: query rows
    are then grouped example-major (row r uses key row r // (qb // kb)), which lets the answer
    choices of one example, or the beams of one input, share one copy without repeating it. In
    that grouped form `bias` must not depend on the query row ([kb or 1, h or 1, 1, k]).
    """

    num_heads: int
    head_dim: int
    dtype: Any = jnp.float32
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, inputs_q: Array | None, inputs_kv: Array | None, bias: Array | None, *,
                 deterministic: bool, decode: bool = False, kv: tuple[Array, Array] | None = None,
                 kv_only: bool = False):
        projection = functools.partial(DenseGeneral, features=(self.num_heads, self.head_dim),
                                       kernel_axes=("embed", "joined_kv"), dtype=self.dtype)
        depth_scaling = jnp.sqrt(self.head_dim).astype(jnp.float32)

        def query_init(*args):  # 1/sqrt(d) folded into the init (t5x); no logit scaling below.
            return _attention_kernel_init(*args) / depth_scaling

        if kv is None:
            key = projection(kernel_init=_attention_kernel_init, name="key")(inputs_kv)
            value = projection(kernel_init=_attention_kernel_init, name="value")(inputs_kv)
            key = _constrain(key, ("batch", "length", "heads", "kv"))
            value = _constrain(value, ("batch", "length", "heads", "kv"))
            if kv_only:
                return key, value
        else:
            if decode:
                raise ValueError("precomputed keys/values are for cross-attention; decode=True caches "
                                 "self-attention keys/values instead")
            key, value = (jnp.asarray(t, self.dtype) for t in kv)
        query = projection(kernel_init=query_init, name="query")(inputs_q)
        query = _constrain(query, ("batch", "length", "heads", "kv"))

        if decode:
            is_initialized = self.has_variable("cache", "cached_key")
            cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
            cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape, value.dtype)
            cache_index = self.variable("cache", "cache_index", lambda: jnp.array(0, dtype=jnp.int32))
            if is_initialized:
                if query.shape[1] != 1:
                    raise ValueError(f"cached decoding feeds one position at a time, got {query.shape}")
                idx = cache_index.value
                key = lax.dynamic_update_slice(cached_key.value, key.astype(cached_key.value.dtype),
                                               (0, idx, 0, 0))
                value = lax.dynamic_update_slice(cached_value.value,
                                                 value.astype(cached_value.value.dtype), (0, idx, 0, 0))
                cached_key.value, cached_value.value = key, value
                cache_index.value = idx + 1

        q_batch, q_len = query.shape[:2]
        group = q_batch // key.shape[0]
        if group * key.shape[0] != q_batch:
            raise ValueError(f"key/value batch {key.shape[0]} does not divide the query batch {q_batch}")
        if group > 1:
            # The `group` query rows of one key row become one longer query: same math as repeating
            # the keys/values per row, without materialising the copies.
            query = query.reshape((key.shape[0], group * q_len) + query.shape[2:])
            if bias is not None and bias.shape[-2] != 1:
                raise ValueError("grouped attention needs a bias that is constant over queries")
        # Logits and softmax in float32 (bf16 inputs, f32 accumulation and output).
        logits = jnp.einsum("bqhd,bkhd->bhqk", query, key, preferred_element_type=jnp.float32)
        if bias is not None:
            logits = logits + bias
        weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        if not deterministic and self.dropout_rate > 0.0:
            keep_prob = 1.0 - self.dropout_rate
            shape = list(weights.shape)
            shape[-2] = 1  # broadcast along the query length, as t5x
            keep = jax.random.bernoulli(self.make_rng("dropout"), keep_prob, shape)
            weights = weights * (keep.astype(self.dtype) / jnp.asarray(keep_prob, self.dtype))
        x = jnp.einsum("bhqk,bkhd->bqhd", weights, value)
        if group > 1:
            x = x.reshape((q_batch, q_len) + x.shape[2:])
        x = _constrain(x, ("batch", "length", "heads", "kv"))
        out = DenseGeneral(features=inputs_q.shape[-1], axis=(-2, -1), dtype=self.dtype,
                           kernel_init=_attention_kernel_init, kernel_axes=("joined_kv", "embed"),
                           name="out")(x)
        return out


class MlpBlock(nn.Module):
    """Gated MLP: prod_i act_i(x @ wi_i) @ wo (T5.1.1: gelu * linear)."""

    intermediate_dim: int
    activations: tuple[str, ...] = ("gelu", "linear")
    dtype: Any = jnp.float32
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, inputs: Array, *, deterministic: bool) -> Array:
        hidden = []
        for idx, act in enumerate(self.activations):
            name = "wi" if len(self.activations) == 1 else f"wi_{idx}"
            x = DenseGeneral(self.intermediate_dim, dtype=self.dtype, kernel_axes=("embed", "mlp"),
                             name=name)(inputs)
            # 'gelu' is flax's nn.gelu (tanh approximation), like t5x and HF's gelu_new.
            hidden.append(x if act == "linear" else getattr(nn, act)(x))
        x = functools.reduce(operator.mul, hidden)
        x = nn.Dropout(rate=self.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)
        x = _constrain(x, ("batch", "length", "mlp"))
        return DenseGeneral(inputs.shape[-1], dtype=self.dtype, kernel_axes=("mlp", "embed"),
                            name="wo")(x)


# ---------------------------------------------------------------------------------------------------
# Layers and stacks
# ---------------------------------------------------------------------------------------------------
class EncoderLayer(nn.Module):
    """Pre-norm self-attention + MLP block. Returns (x, None) when `scan` (nn.scan carry form)."""

    config: T5Config
    deterministic: bool = True
    scan: bool = False

    @nn.compact
    def __call__(self, inputs: Array, bias: Array):
        cfg, det = self.config, self.deterministic
        dtype = jnp.dtype(cfg.dtype)
        inputs = _constrain(inputs, ("batch", "length", "embed"))
        x = LayerNorm(dtype=dtype, name="pre_attention_layer_norm")(inputs)
        x = MultiHeadDotProductAttention(cfg.num_heads, cfg.head_dim, dtype, cfg.dropout_rate,
                                         name="attention")(x, x, bias, deterministic=det)
        x = nn.Dropout(rate=cfg.dropout_rate, broadcast_dims=(-2,))(x, deterministic=det)
        x = x + inputs
        y = LayerNorm(dtype=dtype, name="pre_mlp_layer_norm")(x)
        y = MlpBlock(cfg.mlp_dim, cfg.mlp_activations, dtype, cfg.dropout_rate, name="mlp")(
            y, deterministic=det)
        y = nn.Dropout(rate=cfg.dropout_rate, broadcast_dims=(-2,))(y, deterministic=det)
        y = _constrain(y + x, ("batch", "length", "embed"))
        return (y, None) if self.scan else y


class DecoderLayer(nn.Module):
    """Pre-norm causal self-attention + cross-attention + MLP block.

    `cross_kv` = this layer's precomputed cross-attention (key, value) replaces the projections of
    `encoded`. With `kv_only` the layer computes just those from `inputs` (= the encoder output) and
    returns (inputs, (key, value)), the carry/output form `_apply_layers(collect=True)` expects.
    """

    config: T5Config
    deterministic: bool = True
    decode: bool = False
    scan: bool = False
    kv_only: bool = False

    @nn.compact
    def __call__(self, inputs: Array, encoded: Array | None = None, self_bias: Array | None = None,
                 cross_bias: Array | None = None, cross_kv: tuple[Array, Array] | None = None):
        cfg, det = self.config, self.deterministic
        dtype = jnp.dtype(cfg.dtype)
        cross_attention = MultiHeadDotProductAttention(cfg.num_heads, cfg.head_dim, dtype,
                                                       cfg.dropout_rate, name="encoder_decoder_attention")
        if self.kv_only:
            return inputs, cross_attention(None, inputs, None, deterministic=True, kv_only=True)
        inputs = _constrain(inputs, ("batch", "length", "embed"))
        x = LayerNorm(dtype=dtype, name="pre_self_attention_layer_norm")(inputs)
        x = MultiHeadDotProductAttention(cfg.num_heads, cfg.head_dim, dtype, cfg.dropout_rate,
                                         name="self_attention")(
            x, x, self_bias, deterministic=det, decode=self.decode)
        x = nn.Dropout(rate=cfg.dropout_rate, broadcast_dims=(-2,))(x, deterministic=det)
        x = x + inputs
        y = LayerNorm(dtype=dtype, name="pre_cross_attention_layer_norm")(x)
        y = cross_attention(y, encoded, cross_bias, deterministic=det, kv=cross_kv)
        y = nn.Dropout(rate=cfg.dropout_rate, broadcast_dims=(-2,))(y, deterministic=det)
        y = y + x
        z = LayerNorm(dtype=dtype, name="pre_mlp_layer_norm")(y)
        z = MlpBlock(cfg.mlp_dim, cfg.mlp_activations, dtype, cfg.dropout_rate, name="mlp")(
            z, deterministic=det)
        z = nn.Dropout(rate=cfg.dropout_rate, broadcast_dims=(-2,))(z, deterministic=det)
        z = _constrain(z + y, ("batch", "length", "embed"))
        return (z, None) if self.scan else z


def _apply_layers(parent: nn.Module, layer_cls: type, num_layers: int, cfg: T5Config, carry: Array,
                  broadcast_args: tuple, per_layer_args: tuple = (), collect: bool = False, **layer_kw):
    """Run `num_layers` layers (optionally remat'ed and/or scanned); names layers_{i} or layers.

    `broadcast_args` go to every layer; each of `per_layer_args` is a pytree with a leading layer
    axis, sliced per layer. With `collect` the layers return (carry, out) and this returns the outs
    stacked along a leading layer axis instead of the carry.
    """
    policy = _remat_policy(cfg.remat_policy)
    if cfg.remat_policy != "none" and not collect:
        # prevent_cse is unnecessary (and slower) inside scan, whose loop already blocks CSE.
        layer_cls = nn.remat(layer_cls, policy=policy, prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers:
        stack = nn.scan(
            layer_cls,
            variable_axes={"params": 0, "cache": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=(nn.broadcast,) * len(broadcast_args) + (0,) * len(per_layer_args),
            length=num_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        carry, outs = stack(config=cfg, scan=True, name="layers", parent=parent, **layer_kw)(
            carry, *broadcast_args, *per_layer_args)
        return outs if collect else carry
    outs = []
    for i in range(num_layers):
        sliced = jax.tree_util.tree_map(lambda x, i=i: x[i], per_layer_args)
        carry = layer_cls(config=cfg, name=f"layers_{i}", parent=parent, **layer_kw)(
            carry, *broadcast_args, *sliced)
        if collect:
            carry, out = carry
            outs.append(out)
    if collect:
        return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *outs)
    return carry


class Encoder(nn.Module):
    """Embedding -> dropout -> layers -> final norm -> dropout."""

    config: T5Config
    shared_embedding: nn.Module

    @nn.compact
    def __call__(self, tokens: Array, segment_ids: Array | None = None, positions: Array | None = None,
                 *, deterministic: bool = True) -> Array:
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        length = tokens.shape[1]
        valid = tokens > 0
        mask = valid[:, :, None] & valid[:, None, :]
        if segment_ids is not None:
            mask &= segment_ids[:, :, None] == segment_ids[:, None, :]
        pos = positions if positions is not None else jnp.arange(length, dtype=jnp.int32)[None]
        rel = RelativePositionBiases(cfg.relative_attention_num_buckets,
                                     cfg.relative_attention_max_distance, cfg.num_heads,
                                     name="relpos_bias")(pos, pos, True)
        bias = rel + _mask_to_bias(mask)[:, None]

        x = self.shared_embedding(tokens)
        x = nn.Dropout(rate=cfg.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)
        x = x.astype(dtype)
        x = _apply_layers(self, EncoderLayer, cfg.num_encoder_layers, cfg, x, (bias,),
                          deterministic=deterministic)
        x = LayerNorm(dtype=dtype, name="encoder_norm")(x)
        x = nn.Dropout(rate=cfg.dropout_rate)(x, deterministic=deterministic)
        return _constrain(x, ("batch", "length", "embed"))


class Decoder(nn.Module):
    """Embedding -> dropout -> layers (self, cross, mlp) -> final norm -> dropout -> float32 logits."""

    config: T5Config
    shared_embedding: nn.Module

    @nn.compact
    def __call__(self, encoded: Array, encoder_input_tokens: Array | None,
                 decoder_input_tokens: Array | None, decoder_target_tokens: Array | None = None,
                 encoder_segment_ids: Array | None = None, decoder_segment_ids: Array | None = None,
                 decoder_positions: Array | None = None, *, deterministic: bool = True,
                 decode: bool = False, max_decode_length: int | None = None,
                 cross_kv: tuple[Array, Array] | None = None, kv_only: bool = False):
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        if kv_only:
            keys, values = _apply_layers(self, DecoderLayer, cfg.num_decoder_layers, cfg,
                                         encoded.astype(dtype), (), collect=True, kv_only=True)
            axes = ("layers", "batch", "length", "heads", "kv")
            return _constrain(keys, axes), _constrain(values, axes)
        batch, length = decoder_input_tokens.shape
        enc_valid = encoder_input_tokens > 0
        # Precomputed cross keys/values with fewer rows than the decoder batch are shared by groups
        # of consecutive decoder rows (answer choices, beams); see MultiHeadDotProductAttention.
        grouped = cross_kv is not None and cross_kv[0].shape[1] != batch
        if cross_kv is not None and cross_kv[0].shape[1] != encoder_input_tokens.shape[0]:
            raise ValueError(f"cross_kv batch {cross_kv[0].shape[1]} != encoder_input_tokens batch "
                             f"{encoder_input_tokens.shape[0]}")
        if grouped and (encoder_segment_ids is not None or decoder_segment_ids is not None):
            raise ValueError("shared cross-attention keys/values do not support packed inputs")
        relpos = RelativePositionBiases(cfg.relative_attention_num_buckets,
                                        cfg.relative_attention_max_distance, cfg.num_heads,
                                        name="relpos_bias")

        stepping = False
        if decode:
            if encoder_segment_ids is not None or decoder_segment_ids is not None:
                raise ValueError("packed inputs (segment ids) are not supported with decode=True")
            stepping = self.has_variable("cache", "cache_index")
            index = self.variable("cache", "cache_index", lambda: jnp.array(0, dtype=jnp.int32))
        if stepping:
            # One new position per call: its position is the cache index; keys span the whole cache.
            if max_decode_length is None:
                raise ValueError("max_decode_length is required for cached decoding steps")
            idx = index.value
            k_pos = jnp.arange(max_decode_length, dtype=jnp.int32)[None]
            q_pos = jnp.reshape(idx, (1, 1)) + jnp.arange(length, dtype=jnp.int32)[None]
            self_bias = relpos(q_pos, k_pos, False) + _mask_to_bias(k_pos <= idx)[:, None, None, :]
            index.value = idx + length
            cross_bias = _mask_to_bias(enc_valid)[:, None, None, :]
        else:
            # Padding from the targets (as t5x); without targets every position is treated as real.
            if decoder_target_tokens is not None and not decode:
                dec_valid = decoder_target_tokens > 0
            elif decoder_segment_ids is not None:
                dec_valid = decoder_segment_ids > 0
            else:
                dec_valid = jnp.ones((batch, length), dtype=bool)
            ar = jnp.arange(length, dtype=jnp.int32)
            mask = (ar[:, None] >= ar[None, :])[None] & dec_valid[:, :, None] & dec_valid[:, None, :]
            if decoder_segment_ids is not None:
                mask &= decoder_segment_ids[:, :, None] == decoder_segment_ids[:, None, :]
            pos = decoder_positions if decoder_positions is not None else ar[None]
            self_bias = relpos(pos, pos, False) + _mask_to_bias(mask)[:, None]
            if grouped:
                # Padded query rows then attend to the real inputs instead of nothing: they are
                # never read by real positions (causal mask) nor scored, so outputs are unchanged.
                cross_bias = _mask_to_bias(enc_valid)[:, None, None, :]
            else:
                cross = dec_valid[:, :, None] & enc_valid[:, None, :]
                if encoder_segment_ids is not None and decoder_segment_ids is not None:
                    cross &= decoder_segment_ids[:, :, None] == encoder_segment_ids[:, None, :]
                cross_bias = _mask_to_bias(cross)[:, None]

        y = self.shared_embedding(decoder_input_tokens)
        y = nn.Dropout(rate=cfg.dropout_rate, broadcast_dims=(-2,))(y, deterministic=deterministic)
        y = y.astype(dtype)
        if cross_kv is None:
            y = _apply_layers(self, DecoderLayer, cfg.num_decoder_layers, cfg, y,
                              (encoded.astype(dtype), self_bias, cross_bias),
                              deterministic=deterministic, decode=decode)
        else:
            y = _apply_layers(self, DecoderLayer, cfg.num_decoder_layers, cfg, y,
                              (None, self_bias, cross_bias), (tuple(cross_kv),),
                              deterministic=deterministic, decode=decode)
        y = LayerNorm(dtype=dtype, name="decoder_norm")(y)
        y = nn.Dropout(rate=cfg.dropout_rate, broadcast_dims=(-2,))(y, deterministic=deterministic)
        if cfg.logits_via_embedding:
            logits = self.shared_embedding.attend(y) / jnp.sqrt(jnp.float32(y.shape[-1]))
        else:
            logits = DenseGeneral(cfg.vocab_size, dtype=jnp.float32, kernel_axes=("embed", "vocab"),
                                  name="logits_dense")(y)
        return _constrain(logits, ("batch", "length", "vocab"))


class Transformer(nn.Module):
    """T5.1.1 encoder-decoder. Returns float32 logits [batch, target_len, vocab]."""

    config: T5Config

    def setup(self) -> None:
        cfg = self.config
        self.shared_embedding = Embed(cfg.vocab_size, cfg.emb_dim, dtype=jnp.dtype(cfg.dtype),
                                      name="token_embedder")
        self.encoder = Encoder(cfg, shared_embedding=self.shared_embedding)
        self.decoder = Decoder(cfg, shared_embedding=self.shared_embedding)

    def encode(self, encoder_input_tokens: Array, encoder_segment_ids: Array | None = None,
               encoder_positions: Array | None = None, *, enable_dropout: bool = True) -> Array:
        """Run the encoder stack: [batch, input_len] tokens -> [batch, input_len, emb_dim]."""
        return self.encoder(encoder_input_tokens, encoder_segment_ids, encoder_positions,
                            deterministic=not enable_dropout)

    def decode(self, encoded: Array | None, encoder_input_tokens: Array, decoder_input_tokens: Array,
               decoder_target_tokens: Array | None = None, *, encoder_segment_ids: Array | None = None,
               decoder_segment_ids: Array | None = None, decoder_positions: Array | None = None,
               enable_dropout: bool = True, decode: bool = False,
               max_decode_length: int | None = None,
               cross_kv: tuple[Array, Array] | None = None) -> Array:
        """Run the decoder stack on `encoded` (encoder tokens are only used for masks).

        `cross_kv` (from `cross_attention_kv`) replaces `encoded` (which may then be None); its batch
        may divide the decoder batch, each encoder row serving that many consecutive decoder rows.
        """
        return self.decoder(encoded, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens,
                            encoder_segment_ids, decoder_segment_ids, decoder_positions,
                            deterministic=not enable_dropout, decode=decode,
                            max_decode_length=max_decode_length, cross_kv=cross_kv)

    def cross_attention_kv(self, encoded: Array) -> tuple[Array, Array]:
        """Every decoder layer's cross-attention (keys, values), each [layers, batch, input_len,
        heads, head_dim], computed once from the encoder output for reuse by `decode(cross_kv=...)`."""
        return self.decoder(encoded, None, None, kv_only=True)

    def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array,
                 decoder_target_tokens: Array | None = None, *, encoder_segment_ids: Array | None = None,
                 decoder_segment_ids: Array | None = None, encoder_positions: Array | None = None,
                 decoder_positions: Array | None = None, enable_dropout: bool = True,
                 decode: bool = False, max_decode_length: int | None = None) -> Array:
        """Full forward pass (teacher forcing) -> float32 logits."""
        encoded = self.encode(encoder_input_tokens, encoder_segment_ids, encoder_positions,
                              enable_dropout=enable_dropout)
        return self.decode(encoded, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens,
                           encoder_segment_ids=encoder_segment_ids,
                           decoder_segment_ids=decoder_segment_ids, decoder_positions=decoder_positions,
                           enable_dropout=enable_dropout, decode=decode,
                           max_decode_length=max_decode_length)


def init_params(config: T5Config, rng: Array, *, input_len: int = 8, target_len: int = 8) -> dict:
    """Initial `params` collection (boxed with logical axis names; `nn.meta.unbox` to strip)."""
    enc = jnp.ones((1, input_len), jnp.int32)
    dec = jnp.ones((1, target_len), jnp.int32)

    # Jitted: an eager init dispatches op by op (slow), and under jit XLA can shard the outputs.
    @jax.jit
    def init(key):
        return Transformer(config).init({"params": key}, enc, dec, dec, enable_dropout=False)["params"]

    return init(rng)


# ---------------------------------------------------------------------------------------------------
# Scanned <-> unscanned parameter layouts
# ---------------------------------------------------------------------------------------------------
_STACKS = ("encoder", "decoder")


def _is_box(x: Any) -> bool:
    return isinstance(x, nn.Partitioned)


def _index_leaf(leaf: Any, i: int) -> Any:
    if _is_box(leaf):
        return leaf.replace(value=leaf.value[i], names=tuple(leaf.names[1:]))
    return leaf[i]


def _stack_leaves(*leaves: Any) -> Any:
    if _is_box(leaves[0]):
        value = jnp.stack([lf.value for lf in leaves])
        return leaves[0].replace(value=value, names=("layers",) + tuple(leaves[0].names))
    xp = np if all(isinstance(lf, np.ndarray) for lf in leaves) else jnp
    return xp.stack(leaves)


def _wrap(params: dict) -> tuple[dict, bool]:
    wrapped = set(params) == {"params"}
    return (dict(params["params"]) if wrapped else dict(params)), wrapped


def scan_to_unscanned(params: dict) -> dict:
    """Split `{encoder,decoder}/layers` (leading 'layers' axis) into `layers_{i}`; no-op if unscanned."""
    tree, wrapped = _wrap(params)
    for stack in _STACKS:
        if stack not in tree or "layers" not in tree[stack]:
            continue
        sub = dict(tree[stack])
        stacked = sub.pop("layers")
        n = jax.tree_util.tree_leaves(stacked, is_leaf=_is_box)[0]
        n = (n.value if _is_box(n) else n).shape[0]
        for i in range(n):
            sub[f"layers_{i}"] = jax.tree_util.tree_map(lambda x, i=i: _index_leaf(x, i), stacked,
                                                        is_leaf=_is_box)
        tree[stack] = sub
    return {"params": tree} if wrapped else tree


def unscanned_to_scan(params: dict) -> dict:
    """Stack `{encoder,decoder}/layers_{i}` into `layers` with a leading axis; no-op if scanned."""
    tree, wrapped = _wrap(params)
    for stack in _STACKS:
        if stack not in tree:
            continue
        sub = dict(tree[stack])
        names = sorted((k for k in sub if k.startswith("layers_")), key=lambda k: int(k.split("_")[1]))
        if not names:
            continue
        layers = [sub.pop(k) for k in names]
        sub["layers"] = jax.tree_util.tree_map(_stack_leaves, *layers, is_leaf=_is_box)
        tree[stack] = sub
    return {"params": tree} if wrapped else tree
