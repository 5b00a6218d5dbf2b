"""Matmul FLOP counts for T5.1.1 and peak bf16 FLOP/s per accelerator kind (for MFU)."""

from __future__ import annotations

from ext5.model.configs import T5Config


def forward_flops(cfg: T5Config, batch_size: int, input_len: int, target_len: int) -> float:
    """Exact matmul FLOPs (2*m*n*k per product) of one forward pass over a padded/packed batch.

    Counts q/k/v/o projections, QK^T and AV, every MLP matmul, cross-attention (k/v over the encoder
    length) and the logits projection. Embedding gathers, norms, softmax and activations are not
    matmuls and are left out (they are a few percent at real sizes).
    """
    b, li, lt = float(batch_size), float(input_len), float(target_len)
    e, hd, f = float(cfg.emb_dim), float(cfg.num_heads * cfg.head_dim), float(cfg.mlp_dim)
    n_wi = len(cfg.mlp_activations)

    def mlp(length: float) -> float:
        return 2 * b * length * e * f * (n_wi + 1)

    def attention(q_len: float, kv_len: float) -> float:
        proj = 2 * b * e * hd * (2 * q_len + 2 * kv_len)  # q and o on queries, k and v on keys
        scores = 2 * 2 * b * q_len * kv_len * hd  # QK^T and AV
        return proj + scores

    encoder = cfg.num_encoder_layers * (attention(li, li) + mlp(li))
    decoder = cfg.num_decoder_layers * (attention(lt, lt) + attention(lt, li) + mlp(lt))
    logits = 2 * b * lt * e * cfg.vocab_size
    return float(encoder + decoder + logits)


def train_flops_per_step(cfg: T5Config, batch_size: int, input_len: int, target_len: int) -> float:
    """Forward matmul FLOPs x 3 (backward = 2x forward), excluding remat recomputation."""
    return 3.0 * forward_flops(cfg, batch_size, input_len, target_len)


# Dense bf16 peak FLOP/s per chip/GPU, matched by substring of `jax.Device.device_kind` (lower-cased).
# Order matters: more specific names first ("v5 lite" before "v5").
_PEAK_BF16: tuple[tuple[str, float], ...] = (
    ("v6 lite", 918e12), ("v6e", 918e12),
    ("v5 lite", 197e12), ("v5lite", 197e12), ("v5e", 197e12),
    ("v5p", 459e12), ("tpu v5", 459e12),
    ("tpu v4", 275e12), ("tpu v3", 123e12), ("tpu v2", 45e12),
    ("b200", 2250e12), ("h200", 989e12), ("h100", 989e12), ("a100", 312e12),
)


def peak_flops_per_device(device_kind: str) -> float | None:
    """Peak dense bf16 FLOP/s for a jax `device_kind` string; None when unknown (e.g. CPU)."""
    kind = device_kind.lower()
    for key, peak in _PEAK_BF16:
        if key in kind:
            return peak
    return None


def remat_flops_per_step(cfg: T5Config, batch_size: int, input_len: int, target_len: int) -> float:
    """Matmul FLOPs that `cfg.remat_policy` recomputes in the backward pass (0 for 'none').

    'full' saves nothing inside a layer, so every layer's forward runs again (the logits projection is
    outside the layers and is not recomputed). 'minimal' saves the dense projections' outputs and
    recomputes only the attention einsums (QK^T and AV, the dots with batch dimensions).
    """
    if cfg.remat_policy == "none":
        return 0.0
    b, li, lt = float(batch_size), float(input_len), float(target_len)
    if cfg.remat_policy == "full":
        return forward_flops(cfg, batch_size, input_len, target_len) - 2 * b * lt * cfg.emb_dim * cfg.vocab_size
    hd = float(cfg.num_heads * cfg.head_dim)
    scores = 2 * 2 * b * hd * (cfg.num_encoder_layers * li * li + cfg.num_decoder_layers * (lt * lt + lt * li))
    return float(scores)
