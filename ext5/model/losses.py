"""Token cross entropy with z-loss and t5x's loss normalisation options.

Mirrors t5x `losses.cross_entropy_with_logits` / `compute_weighted_cross_entropy` (without label
smoothing) and `get_loss_normalizing_factor_and_weights`:
  per-token loss = logsumexp(logits) - logit[target] + z_loss * logsumexp(logits)**2
  loss = sum(weights' * per-token loss) / normaliser, where
    None                      -> weights' = weights, normaliser 1 (summed loss, the t5x default)
    float c                   -> weights' = weights, normaliser c
    "NUM_REAL_TARGET_TOKENS"  -> normaliser sum(weights)
    "NUM_TOTAL_TARGET_TOKENS" -> normaliser number of target positions
    "AVERAGE_PER_SEQUENCE"    -> weights' = weights / (weight total of the token's sequence), normaliser
                                 sum(weights') = number of sequences with any weight; packed rows are
                                 split into sequences by `segment_ids`.
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


def _sequence_weights(weights: Array, segment_ids: Array | None) -> tuple[Array, Array]:
    """(weights scaled so each sequence's sum to 1, exact number of sequences with any weight).

    Sequences are (row, segment id) pairs when `segment_ids` is given, else whole rows.
    """
    if segment_ids is None:
        row_totals = jnp.sum(weights, axis=-1, keepdims=True)
        totals, count = row_totals * jnp.ones_like(weights), jnp.sum(row_totals > 0)
    else:
        batch, length = weights.shape
        ids = jnp.arange(batch, dtype=jnp.int32)[:, None] * (length + 1) + segment_ids.astype(jnp.int32)
        seg_totals = jax.ops.segment_sum(weights.reshape(-1), ids.reshape(-1),
                                         num_segments=batch * (length + 1))
        totals, count = seg_totals[ids], jnp.sum(seg_totals > 0)
    frac = jnp.where(totals > 0, weights / jnp.where(totals > 0, totals, 1.0), 0.0)
    return frac, count.astype(jnp.float32)


def compute_loss(logits: Array, targets: Array, weights: Array | None, *, z_loss: float = 1e-4,
                 loss_normalizing_factor: float | str | None = None,
                 segment_ids: Array | None = None) -> tuple[Array, dict[str, Array]]:
    """Weighted CE + z-loss, normalised as t5x; returns (loss, aux sums for host-side normalisation).

    Args:
      logits: [batch, length, vocab] (any float dtype; computed in float32).
      targets: int [batch, length].
      weights: loss weights [batch, length] (None = all ones).
      z_loss: coefficient of logsumexp**2 (t5x default 1e-4).
      loss_normalizing_factor: None (sum), a float constant, or one of SPECIAL_NORMALIZERS.
      segment_ids: decoder segment ids of packed rows; used by "AVERAGE_PER_SEQUENCE" and to count
        sequences.

    Returns:
      (loss, aux) with aux float32 scalars: loss_sum (weighted CE + z-loss, unnormalised),
      z_loss_sum (weighted z-loss part of loss_sum), correct_sum (weighted argmax hits),
      weight_sum (sum of weights), num_sequences (sequences with any weight).
    """
    weights = (jnp.ones(targets.shape, jnp.float32) if weights is None
               else weights.astype(jnp.float32))
    token_loss, token_z = cross_entropy_with_logits(logits, targets, z_loss)
    weight_sum = jnp.sum(weights)
    frac, num_sequences = _sequence_weights(weights, segment_ids)

    if loss_normalizing_factor is None:
        loss = jnp.sum(token_loss * weights)
    elif isinstance(loss_normalizing_factor, str):
        name = loss_normalizing_factor.upper()
        if name == "NUM_REAL_TARGET_TOKENS":
            loss = jnp.sum(token_loss * weights) / weight_sum
        elif name == "NUM_TOTAL_TARGET_TOKENS":
            loss = jnp.sum(token_loss * weights) / float(targets.size)
        elif name == "AVERAGE_PER_SEQUENCE":
            loss = jnp.sum(token_loss * frac) / num_sequences
        else:
            raise ValueError(f"unknown loss_normalizing_factor {loss_normalizing_factor!r}; use None, a "
                             f"number, or one of {SPECIAL_NORMALIZERS}")
    else:
        loss = jnp.sum(token_loss * weights) / jnp.float32(loss_normalizing_factor)

    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    aux = {
        "loss_sum": jnp.sum(token_loss * weights),
        "z_loss_sum": jnp.sum(token_z * weights),
        "correct_sum": jnp.sum(correct * weights),
        "weight_sum": weight_sum,
        "num_sequences": num_sequences,
    }
    return loss.astype(jnp.float32), {k: v.astype(jnp.float32) for k, v in aux.items()}
