"""One loss normaliser (model/losses.py): every t5x mode against a hand computation, and microbatches
(weights and normaliser taken on the whole batch) summing to the full-batch loss."""
import jax.numpy as jnp
import numpy as np
import pytest

from ext5.model import losses

# Row 0: two packed sequences (2 tokens + 1 token) and a pad; row 1: one sequence of 3 tokens and a pad.
PROBS = np.array([
    [[0.7, 0.1, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25], [0.1, 0.6, 0.2, 0.1], [0.4, 0.3, 0.2, 0.1]],
    [[0.5, 0.3, 0.1, 0.1], [0.1, 0.2, 0.3, 0.4], [0.2, 0.2, 0.2, 0.4], [0.3, 0.3, 0.2, 0.2]]])
LOGITS = jnp.log(jnp.asarray(PROBS, jnp.float32))
TARGETS = jnp.array([[0, 3, 1, 0], [1, 3, 3, 0]])
WEIGHTS = jnp.array([[1, 1, 1, 0], [1, 1, 1, 0]], jnp.float32)
SEGS = jnp.array([[1, 1, 2, 0], [1, 1, 1, 0]])
CE = -np.log(np.array([[0.7, 0.25, 0.6], [0.3, 0.4, 0.4]]))  # probabilities sum to 1: log_z = 0

HAND = {
    None: CE.sum(),
    2.5: CE.sum() / 2.5,
    "NUM_REAL_TARGET_TOKENS": CE.sum() / 6,
    "NUM_TOTAL_TARGET_TOKENS": CE.sum() / 8,  # 2 rows x 4 positions, pads included
    "AVERAGE_PER_SEQUENCE": np.mean([CE[0, :2].mean(), CE[0, 2], CE[1].mean()]),
}


@pytest.mark.parametrize("mode", list(HAND), ids=str)
def test_each_mode_matches_hand_computation(mode):
    loss, aux = losses.compute_loss(LOGITS, TARGETS, WEIGHTS, z_loss=0.0, loss_normalizing_factor=mode,
                                    segment_ids=SEGS)
    np.testing.assert_allclose(float(loss), HAND[mode], rtol=1e-5)
    # Per-token metrics count real tokens whatever the loss weighting.
    assert float(aux["weight_sum"]) == 6.0
    np.testing.assert_allclose(float(aux["loss_sum"]), CE.sum(), rtol=1e-5)
    assert "num_sequences" not in aux


@pytest.mark.parametrize("mode", list(HAND), ids=str)
def test_microbatches_sum_to_the_full_batch(mode):
    full, _ = losses.compute_loss(LOGITS, TARGETS, WEIGHTS, z_loss=1e-2, loss_normalizing_factor=mode,
                                  segment_ids=SEGS)
    lw, norm = losses.loss_weights_and_normalizer(WEIGHTS, mode, segment_ids=SEGS)
    parts = [losses.loss_sums(LOGITS[i:i + 1], TARGETS[i:i + 1], lw[i:i + 1], WEIGHTS[i:i + 1], z_loss=1e-2)[0]
             for i in range(2)]
    np.testing.assert_allclose(float(sum(parts) / norm), float(full), rtol=1e-5)


def test_average_per_sequence_rows_without_segments_and_empty_batch():
    lw, norm = losses.loss_weights_and_normalizer(WEIGHTS, "AVERAGE_PER_SEQUENCE")
    assert float(norm) == 2.0  # each row is one sequence
    np.testing.assert_allclose(np.asarray(lw)[0, :3], [1 / 3] * 3, rtol=1e-6)
    # Nothing to score: loss 0, not NaN.
    zero = jnp.zeros_like(WEIGHTS)
    for mode in ("NUM_REAL_TARGET_TOKENS", "AVERAGE_PER_SEQUENCE"):
        loss, _ = losses.compute_loss(LOGITS, TARGETS, zero, loss_normalizing_factor=mode, segment_ids=SEGS)
        assert float(loss) == 0.0
    with pytest.raises(ValueError, match="unknown loss_normalizing_factor"):
        losses.loss_weights_and_normalizer(WEIGHTS, "PER_BANANA")
