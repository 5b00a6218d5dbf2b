"""T5.1.1 model configurations (tiny..xxl) in t5x's vocabulary.

Only plain data lives here: the hyperparameters of the network and the named sizes. The numbers for
small..xxl are the published T5.1.1 ones; `tiny` is a CPU demo size.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

# Rematerialisation of each layer in the backward pass (T5Config.remat_policy), roughly from most memory
# to least (`ext5 plan` measures a config; which is best depends on the shapes):
#   none                 keep every activation (no recompute)
#   dots                 save every matmul output, attention einsums included; recompute elementwise work
#   minimal              save the dense projections' outputs (dots without batch dims); recompute the
#                        attention einsums/softmax and elementwise work
#   save_dot_except_mlp  save only the attention projections (q, k, v, out); recompute the MLP and attention
#   full                 save nothing but the layer inputs; recompute the whole layer
REMAT_POLICIES = ("none", "dots", "minimal", "save_dot_except_mlp", "full")


@dataclass(frozen=True)
class T5Config:
    """Hyperparameters of an encoder-decoder T5.1.1 network (names follow t5x's `T5Config`)."""

    vocab_size: int = 32128
    emb_dim: int = 768
    num_heads: int = 12
    num_encoder_layers: int = 12
    num_decoder_layers: int = 12
    head_dim: int = 64
    mlp_dim: int = 2048
    mlp_activations: tuple = ("gelu", "linear")
    dropout_rate: float = 0.0
    dtype: str = "bfloat16"  # activation dtype; params are always float32
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    logits_via_embedding: bool = False
    remat_policy: str = "none"  # one of REMAT_POLICIES
    scan_layers: bool = False

    def __post_init__(self) -> None:
        # Tuples keep the config hashable (it is a static argument of jitted functions); gin and JSON
        # hand us lists, so normalise here instead of failing later with an unhashable-type error.
        if not isinstance(self.mlp_activations, tuple):
            object.__setattr__(self, "mlp_activations", tuple(self.mlp_activations))
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"remat_policy must be one of {REMAT_POLICIES}, got {self.remat_policy!r}")
        if self.dtype not in ("bfloat16", "float32", "float16"):
            raise ValueError(f"dtype must be 'bfloat16', 'float32' or 'float16', got {self.dtype!r}")

    def replace(self, **kw) -> "T5Config":
        """Return a copy with the given fields changed."""
        return dataclasses.replace(self, **kw)


_T5_1_1 = T5Config()

SIZES: dict[str, T5Config] = {
    "tiny": _T5_1_1.replace(emb_dim=128, num_heads=4, head_dim=32, num_encoder_layers=2,
                            num_decoder_layers=2, mlp_dim=256),
    "small": _T5_1_1.replace(emb_dim=512, num_heads=6, num_encoder_layers=8, num_decoder_layers=8,
                             mlp_dim=1024),
    "base": _T5_1_1.replace(emb_dim=768, num_heads=12, num_encoder_layers=12, num_decoder_layers=12,
                            mlp_dim=2048),
    "large": _T5_1_1.replace(emb_dim=1024, num_heads=16, num_encoder_layers=24, num_decoder_layers=24,
                             mlp_dim=2816),
    "xl": _T5_1_1.replace(emb_dim=2048, num_heads=32, num_encoder_layers=24, num_decoder_layers=24,
                          mlp_dim=5120),
    "xxl": _T5_1_1.replace(emb_dim=4096, num_heads=64, num_encoder_layers=24, num_decoder_layers=24,
                           mlp_dim=10240),
}


def get_config(size: str, **overrides) -> T5Config:
    """The named T5.1.1 size with `overrides` applied; unknown size -> ValueError listing valid ones."""
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; valid sizes: {', '.join(SIZES)}")
    return SIZES[size].replace(**overrides) if overrides else SIZES[size]
