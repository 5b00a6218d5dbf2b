"""Cheap analytic estimates that rank layouts before `ext5 plan --search` compiles the best few.

Each candidate is a setting of the knobs a gin file turns: num_partitions x fsdp x remat policy x
microbatches x scan. Memory and time here are rough (parameters, gradients, Adafactor state, saved
activations, logits; matmul FLOPs and the main collectives over ICI); the compiler has the last word.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Iterator

from ext5.model import flops as flops_lib
from ext5.model.configs import T5Config


@dataclasses.dataclass(frozen=True)
class Candidate:
    num_partitions: int
    fsdp: bool
    remat_policy: str
    num_microbatches: int
    scan_layers: bool

    def gin_overrides(self) -> list[str]:
        """Ready-to-paste `--gin.` flags for `ext5 train` / `ext5 plan`."""
        return [f"--gin.partitioning.PartitionConfig.num_partitions={self.num_partitions}",
                f"--gin.partitioning.PartitionConfig.fsdp={self.fsdp}",
                f"--gin.configs.get_config.remat_policy=\"'{self.remat_policy}'\"",
                f"--gin.configs.get_config.scan_layers={self.scan_layers}",
                f"--gin.NUM_MICROBATCHES={self.num_microbatches}"]


def num_params(cfg: T5Config) -> int:
    """T5.1.1 parameter count (untied logits, shared relative-position bias per stack)."""
    d, hd, f, n_wi = cfg.emb_dim, cfg.num_heads * cfg.head_dim, cfg.mlp_dim, len(cfg.mlp_activations)
    attn = 4 * d * hd
    mlp = (n_wi + 1) * d * f
    enc = cfg.num_encoder_layers * (attn + mlp + 2 * d) + d
    dec = cfg.num_decoder_layers * (2 * attn + mlp + 3 * d) + d
    rel = 2 * cfg.relative_attention_num_buckets * cfg.num_heads
    return int(2 * cfg.vocab_size * d + enc + dec + rel)


def candidates(cfg: T5Config, num_devices: int, batch_size: int) -> Iterator[Candidate]:
    """Layouts that can be built: model-parallel sizes dividing heads, MLP and vocab; batches that split."""
    parts = [p for p in (1, 2, 4, 8, 16, 32, 64) if p <= num_devices and num_devices % p == 0
             and cfg.num_heads % p == 0 and cfg.mlp_dim % p == 0 and cfg.vocab_size % p == 0]
    for p, fsdp, remat, mb, scan in itertools.product(parts, (False, True), ("none", "minimal", "full"),
                                                       (1, 2, 4, 8, 16), (True, False)):
        dp = num_devices // p
        if batch_size % (dp * mb) or (fsdp and cfg.emb_dim % dp):
            continue
        yield Candidate(p, fsdp, remat, mb, scan)


def estimate(cfg: T5Config, c: Candidate, num_devices: int, batch_size: int, input_len: int, target_len: int,
             peak_flops: float, ici_bandwidth: float) -> tuple[float, float]:
    """(bytes per device, seconds per step), both rough."""
    cfg = cfg.replace(remat_policy=c.remat_policy, scan_layers=c.scan_layers)
    mp, dp = c.num_partitions, num_devices // c.num_partitions
    p_bytes = 4.0 * num_params(cfg)
    shard = mp * (dp if c.fsdp else 1)
    state = 2 * p_bytes / shard + 0.05 * p_bytes / shard  # params + gradients + factored Adafactor rows/cols
    b = batch_size / (dp * c.num_microbatches)
    d, hd, f = cfg.emb_dim, cfg.num_heads * cfg.head_dim, cfg.mlp_dim
    n_wi = len(cfg.mlp_activations)

    def per_layer(length: float, kv_len: float, attns: int) -> float:
        tokens = b * length
        if c.remat_policy == "full":
            return 2.0 * tokens * d
        dense = 2.0 * tokens * (4 * d + attns * 4 * hd / mp + (n_wi + 1) * f / mp)
        scores = 10.0 * b * cfg.num_heads / mp * length * kv_len * attns
        return dense + (scores if c.remat_policy == "none" else 0.0)

    acts = (cfg.num_encoder_layers * per_layer(input_len, input_len, 1)
            + cfg.num_decoder_layers * per_layer(target_len, (target_len + input_len) / 2, 2))
    logits = 12.0 * b * target_len * cfg.vocab_size / mp
    working = 2 * per_layer(input_len, input_len, 1) if c.remat_policy == "full" else 0.0
    mem = state + acts + logits + working
    flops = flops_lib.train_flops_per_step(cfg, batch_size, input_len, target_len)
    flops += flops_lib.remat_flops_per_step(cfg, batch_size, input_len, target_len)
    t_compute = flops / num_devices / peak_flops
    comm = 0.0
    if c.fsdp and dp > 1:  # weights gathered forward and backward per microbatch, gradients reduce-scattered
        comm += 3 * p_bytes / mp * (dp - 1) / dp * c.num_microbatches
    elif dp > 1:
        comm += 2 * p_bytes / mp * (dp - 1) / dp
    if mp > 1:  # activations all-reduced across the model axis: ~2 per layer forward, 2 backward
        layers = cfg.num_encoder_layers * input_len + cfg.num_decoder_layers * target_len * 1.5
        comm += 4 * 2 * (2.0 * b * layers * d) * (mp - 1) / mp * c.num_microbatches
    t = max(t_compute, comm / ici_bandwidth)
    return mem, t
