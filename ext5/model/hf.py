"""ext5 (t5x-layout) parameters <-> Hugging Face `T5ForConditionalGeneration` state dicts.

The weights map 1:1 (kernels transposed): HF's T5 neither rescales attention logits nor the query, and
t5x folds 1/sqrt(head_dim) into the query kernel's init, so a checkpoint converted either way computes
the same function. T5.1.1 uses an untied `lm_head`; HF only rescales decoder outputs by d_model**-0.5
for the tied (T5.1.0-style) head, which matches t5x's `logits_via_embedding` scaling.

No torch import at module level: the converters work on numpy arrays. `to_hf_model` (torch needed)
builds a ready-to-use HF model and takes care of transformers-5 tying the lm_head to the embedding.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ext5.model.configs import T5Config


def to_hf_config(cfg: T5Config) -> dict:
    """transformers.T5Config kwargs for `cfg` (gated-gelu T5.1.1; untied head unless logits_via_embedding)."""
    if tuple(cfg.mlp_activations) == ("gelu", "linear"):
        ff = "gated-gelu"
    elif tuple(cfg.mlp_activations) == ("relu",):
        ff = "relu"
    else:
        raise ValueError(f"no HF T5 equivalent for mlp_activations={cfg.mlp_activations}")
    return dict(
        vocab_size=cfg.vocab_size,
        d_model=cfg.emb_dim,
        d_kv=cfg.head_dim,
        d_ff=cfg.mlp_dim,
        num_layers=cfg.num_encoder_layers,
        num_decoder_layers=cfg.num_decoder_layers,
        num_heads=cfg.num_heads,
        relative_attention_num_buckets=cfg.relative_attention_num_buckets,
        relative_attention_max_distance=cfg.relative_attention_max_distance,
        dropout_rate=cfg.dropout_rate,
        layer_norm_epsilon=1e-6,
        feed_forward_proj=ff,
        tie_word_embeddings=bool(cfg.logits_via_embedding),
        is_encoder_decoder=True,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )


def _plain(params: Any) -> dict:
    """Unboxed, unscanned, numpy float32 nested dict (accepts a {'params': ...} wrapper)."""
    from flax import linen as nn  # local: keeps `import ext5.model.hf` light

    from ext5.model.t5 import scan_to_unscanned

    if isinstance(params, Mapping) and set(params) == {"params"}:
        params = params["params"]
    params = scan_to_unscanned(nn.meta.unbox(params))

    def to_np(tree):
        if isinstance(tree, Mapping):
            return {k: to_np(v) for k, v in tree.items()}
        return np.array(tree, dtype=np.float32)  # a writable copy

    return to_np(params)


def _layer_map(cfg: T5Config) -> list[tuple[str, str, bool]]:
    """(ext5 path, HF name, transpose) for every per-layer and stack-level tensor except embeddings."""
    rows: list[tuple[str, str, bool]] = []

    def attn(ours: str, theirs: str) -> None:
        for a, b in (("query", "q"), ("key", "k"), ("value", "v"), ("out", "o")):
            rows.append((f"{ours}/{a}/kernel", f"{theirs}.{b}.weight", True))

    def mlp(ours: str, theirs: str) -> None:
        if len(cfg.mlp_activations) == 1:
            rows.append((f"{ours}/wi/kernel", f"{theirs}.wi.weight", True))
        else:
            for j in range(len(cfg.mlp_activations)):
                rows.append((f"{ours}/wi_{j}/kernel", f"{theirs}.wi_{j}.weight", True))
        rows.append((f"{ours}/wo/kernel", f"{theirs}.wo.weight", True))

    for i in range(cfg.num_encoder_layers):
        o, h = f"encoder/layers_{i}", f"encoder.block.{i}.layer"
        rows.append((f"{o}/pre_attention_layer_norm/scale", f"{h}.0.layer_norm.weight", False))
        attn(f"{o}/attention", f"{h}.0.SelfAttention")
        rows.append((f"{o}/pre_mlp_layer_norm/scale", f"{h}.1.layer_norm.weight", False))
        mlp(f"{o}/mlp", f"{h}.1.DenseReluDense")
    for i in range(cfg.num_decoder_layers):
        o, h = f"decoder/layers_{i}", f"decoder.block.{i}.layer"
        rows.append((f"{o}/pre_self_attention_layer_norm/scale", f"{h}.0.layer_norm.weight", False))
        attn(f"{o}/self_attention", f"{h}.0.SelfAttention")
        rows.append((f"{o}/pre_cross_attention_layer_norm/scale", f"{h}.1.layer_norm.weight", False))
        attn(f"{o}/encoder_decoder_attention", f"{h}.1.EncDecAttention")
        rows.append((f"{o}/pre_mlp_layer_norm/scale", f"{h}.2.layer_norm.weight", False))
        mlp(f"{o}/mlp", f"{h}.2.DenseReluDense")
    # One relative-position table per stack; HF keeps it in block 0 only. [heads, buckets] vs [buckets, heads].
    rows.append(("encoder/relpos_bias/rel_embedding",
                 "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", True))
    rows.append(("decoder/relpos_bias/rel_embedding",
                 "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", True))
    rows.append(("encoder/encoder_norm/scale", "encoder.final_layer_norm.weight", False))
    rows.append(("decoder/decoder_norm/scale", "decoder.final_layer_norm.weight", False))
    if not cfg.logits_via_embedding:
        rows.append(("decoder/logits_dense/kernel", "lm_head.weight", True))
    return rows


def _get(tree: dict, path: str) -> np.ndarray:
    for k in path.split("/"):
        tree = tree[k]
    return tree


def _set(tree: dict, path: str, value: np.ndarray) -> None:
    *parents, leaf = path.split("/")
    for k in parents:
        tree = tree.setdefault(k, {})
    tree[leaf] = value


def to_hf_state_dict(params: Any, cfg: T5Config) -> dict[str, np.ndarray]:
    """HF `T5ForConditionalGeneration` state dict (numpy float32) from ext5 params (scanned or not)."""
    tree = _plain(params)
    emb = tree["token_embedder"]["embedding"]
    out = {"shared.weight": emb, "encoder.embed_tokens.weight": emb, "decoder.embed_tokens.weight": emb}
    if cfg.logits_via_embedding:
        out["lm_head.weight"] = emb  # tied head (HF then scales decoder outputs by d_model**-0.5)
    for ours, theirs, transpose in _layer_map(cfg):
        value = _get(tree, ours)
        out[theirs] = np.ascontiguousarray(value.T if transpose else value)
    return out


def from_hf_state_dict(state: Mapping[str, Any], cfg: T5Config) -> dict:
    """ext5 (unscanned, unboxed) params as a nested dict of np.float32 from an HF T5 state dict.

    Accepts numpy arrays or torch tensors. Use `unscanned_to_scan` for a `scan_layers` model.
    """

    def arr(x: Any) -> np.ndarray:
        if hasattr(x, "detach"):  # torch tensor
            x = x.detach().to("cpu").float().numpy()
        return np.asarray(x, dtype=np.float32)

    missing = [name for _, name, _ in _layer_map(cfg) if name not in state]
    if "shared.weight" not in state:
        missing.append("shared.weight")
    if missing:
        raise KeyError(f"HF state dict lacks {len(missing)} expected tensors, e.g. {missing[:3]}")
    tree: dict = {}
    _set(tree, "token_embedder/embedding", arr(state["shared.weight"]))
    for ours, theirs, transpose in _layer_map(cfg):
        value = arr(state[theirs])
        _set(tree, ours, np.ascontiguousarray(value.T if transpose else value))
    return tree


def to_hf_model(params: Any, cfg: T5Config):
    """A torch `T5ForConditionalGeneration` (eval mode) carrying `params`.

    transformers 5 forces `tie_word_embeddings=True` in T5Config and ties `lm_head` to `shared` at
    construction; for the untied T5.1.1 head we give lm_head its own Parameter and drop it from the tied
    keys so `save_pretrained` writes it.
    """
    import torch
    import transformers

    model = transformers.T5ForConditionalGeneration(transformers.T5Config(**to_hf_config(cfg)))
    if not cfg.logits_via_embedding:
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
        tied = getattr(model, "all_tied_weights_keys", None)
        if isinstance(tied, dict):
            tied.pop("lm_head.weight", None)
    state = {k: torch.from_numpy(np.array(v)) for k, v in to_hf_state_dict(params, cfg).items()}
    model.load_state_dict(state, strict=True)
    return model.eval()
