"""Token cross entropy with z-loss, and t5x's loss normalisation: the one place both are computed.

Mirrors t5x `losses.cross_entropy_with_logits` / `compute_weighted_cross_entropy` (without label
smoothing) and `get_loss_normalizing_factor_and_weights`:
  per-token loss = logsumexp(logits) - logit[target] + z_loss * logsumexp(logits)**2
  loss = sum(weights' * per-token loss) / normaliser, where
    None                      -> weights' = weights, normaliser 1 (summed loss, the t5x default)
    float c                   -> weights' = weights, normaliser c
    "NUM_REAL_TARGET_TOKENS"  -> normaliser sum(weights)
    "NUM_TOTAL_TARGET_TOKENS" -> normaliser number of target positions (batch * length)
    "AVERAGE_PER_SEQUENCE"    -> weights' = weights / (weight total of the token's sequence), normaliser
                                 sum(weights') = number of sequences with any weight; packed rows are
                                 split into sequences by `segment_ids`, otherwise a row is a sequence.

`loss_weights_and_normalizer` runs on the *whole* batch before any microbatching (so accumulated
gradients equal the full batch's); `loss_sums` runs per (micro)batch; `compute_loss` is both at once.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

SPECIAL_NORMALIZERS = ("NUM_REAL_TARGET_TOKENS", "NUM_TOTAL_TARGET_TOKENS", "AVERAGE_PER_SEQUENCE")


def cross_entropy_with_logits(logits: Array, targets: Array, z_loss: float) -> tuple[Array, Array]:
    """Per-token (cross entropy + z-loss, z-loss) for integer targets; float32 [batch, length] each."""
    logits = logits.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    z = z_loss * jnp.square(log_z)
    return (log_z - target_logit) + z, z


def _sequence_fractions(weights: Array, segment_ids: Array | None) -> Array:
    """Weights scaled so that each sequence's sum to 1 (sequences: (row, segment id), else rows)."""
    if segment_ids is None:
        totals = jnp.sum(weights, axis=-1, keepdims=True) * jnp.ones_like(weights)
    else:
        batch, length = weights.shape
        ids = jnp.arange(batch, dtype=jnp.int32)[:, None] * (length + 1) + segment_ids.astype(jnp.int32)
        seg_totals = jax.ops.segment_sum(weights.reshape(-1), ids.reshape(-1),
                                         num_segments=batch * (length + 1))
        totals = seg_totals[ids]
    return jnp.where(totals > 0, weights / jnp.where(totals > 0, totals, 1.0), 0.0)


def loss_weights_and_normalizer(weights: Array, loss_normalizing_factor: float | str | None, *,
                                segment_ids: Array | None = None) -> tuple[Array, Array]:
    """(per-token loss weights, divisor of the weighted loss sum) for the whole batch, as t5x's
    `get_loss_normalizing_factor_and_weights`. `weights` are the batch's loss weights [batch, length];
    a zero divisor (nothing to score) becomes 1 so an empty batch gives loss 0, not NaN."""
    weights = jnp.asarray(weights, jnp.float32)

    def nonzero(x):
        return jnp.where(x > 0, x, 1.0).astype(jnp.float32)

    if loss_normalizing_factor is None:
        return weights, jnp.float32(1.0)
    if isinstance(loss_normalizing_factor, (int, float)) and not isinstance(loss_normalizing_factor, bool):
        return weights, jnp.float32(loss_normalizing_factor)
    name = loss_normalizing_factor.upper() if isinstance(loss_normalizing_factor, str) else None
    if name == "NUM_REAL_TARGET_TOKENS":
        return weights, nonzero(jnp.sum(weights))
    if name == "NUM_TOTAL_TARGET_TOKENS":
        return weights, jnp.float32(weights.size)
    if name == "AVERAGE_PER_SEQUENCE":
        frac = _sequence_fractions(weights, segment_ids)
        return frac, nonzero(jnp.sum(frac))
    raise ValueError(f"unknown loss_normalizing_factor {loss_normalizing_factor!r}; use None (sum), a number, "
                     f"or one of {SPECIAL_NORMALIZERS}")


def loss_sums(logits: Array, targets: Array, loss_weights: Array, weights: Array, *,
              z_loss: float = 1e-4) -> tuple[Array, dict[str, Array]]:
    """(sum of loss_weights * per-token loss, aux) for one (micro)batch.

    aux holds float32 sums over the real-token `weights` (for host-side per-token metrics): loss_sum
    (CE + z-loss), z_loss_sum (its z-loss part), correct_sum (argmax hits), weight_sum.
    """
    weights = jnp.asarray(weights, jnp.float32)
    token_loss, token_z = cross_entropy_with_logits(logits, targets, z_loss)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    aux = {
        "loss_sum": jnp.sum(token_loss * weights),
        "z_loss_sum": jnp.sum(token_z * weights),
        "correct_sum": jnp.sum(correct * weights),
        "weight_sum": jnp.sum(weights),
    }
    return jnp.sum(token_loss * jnp.asarray(loss_weights, jnp.float32)), aux


def compute_loss(logits: Array, targets: Array, weights: Array | None, *, z_loss: float = 1e-4,
                 loss_normalizing_factor: float | str | None = None,
                 segment_ids: Array | None = None) -> tuple[Array, dict[str, Array]]:
    """Weighted CE + z-loss of a whole batch, normalised as t5x; returns (loss, aux of `loss_sums`).

    Args:
      logits: [batch, length, vocab] (any float dtype; computed in float32).
      targets: int [batch, length].
      weights: loss weights [batch, length] (None = all ones).
      z_loss: coefficient of logsumexp**2 (t5x default 1e-4).
      loss_normalizing_factor: None (sum), a float constant, or one of SPECIAL_NORMALIZERS.
      segment_ids: decoder segment ids of packed rows (sequences for "AVERAGE_PER_SEQUENCE").
    """
    weights = jnp.ones(targets.shape, jnp.float32) if weights is None else jnp.asarray(weights, jnp.float32)
    loss_weights, normalizer = loss_weights_and_normalizer(weights, loss_normalizing_factor,
                                                           segment_ids=segment_ids)
    total, aux = loss_sums(logits, targets, loss_weights, weights, z_loss=z_loss)
    return (total / normalizer).astype(jnp.float32), aux
