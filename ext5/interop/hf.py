"""ext5 (t5x-layout) parameters <-> Hugging Face `T5ForConditionalGeneration`: config and tensors.

The weights map 1:1 (kernels transposed): HF's T5 neither rescales attention logits nor the query, and
t5x folds 1/sqrt(head_dim) into the query kernel's init, so a checkpoint converted either way computes
the same function.

The output head is where transformers versions disagree. Original T5 (T5.1.0) ties the head to the
embedding and scales decoder outputs by d_model**-0.5 first (ext5: `logits_via_embedding`); T5.1.1 has
an untied, unscaled `lm_head`. transformers 4.x reads both facts from one flag, `tie_word_embeddings`
(default true). transformers >= 5.24 always sets `tie_word_embeddings: true`, keeps the scaling in its own
field `scale_decoder_outputs`, and unties a head whose `lm_head.weight` is stored with other values than
the embedding. So `resolve_head` reads the scaling from `scale_decoder_outputs` when present, else from
`tie_word_embeddings`, and the tying from the weights; `to_hf_config` writes both flags so that either
version loads the same model.

No torch import at module level: the converters work on numpy arrays. `to_hf_model` (torch needed)
builds a ready-to-use HF model and takes care of transformers-5 tying the lm_head to the embedding.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ext5.interop.params import ConversionError, set_path
from ext5.model.configs import T5Config

HF_MODEL_TYPES = ("t5", "mt5")  # same network; umt5 has per-layer position biases, which ext5 lacks
EMBEDDING, HEAD = "shared.weight", "lm_head.weight"


def scales_decoder_outputs(hf_config: Mapping[str, Any]) -> bool:
    """Whether Hugging Face multiplies decoder outputs by d_model**-0.5 before the head: transformers
    >= 5.24's `scale_decoder_outputs` when the config has it, else (4.x) `tie_word_embeddings`, whose
    default is true."""
    if "scale_decoder_outputs" in hf_config:
        return bool(hf_config["scale_decoder_outputs"])
    return bool(hf_config.get("tie_word_embeddings", True))


def has_separate_head(state: Mapping[str, Any]) -> bool:
    """Whether the weights carry an `lm_head.weight` with other values than the embedding (an untied head)."""
    if HEAD not in state:
        return False
    if EMBEDDING not in state or tuple(np.shape(state[HEAD])) != tuple(np.shape(state[EMBEDDING])):
        return True
    return not np.array_equal(_np(state[HEAD]), _np(state[EMBEDDING]))


def resolve_head(hf_config: Mapping[str, Any], state: Mapping[str, Any]) -> tuple[bool, dict[str, Any]]:
    """(ext5 `logits_via_embedding`, state dict for `from_hf_state_dict`) of an HF config and its weights.

    scaled + no separate head -> ext5's tied, scaled head (original T5);
    unscaled                  -> an untied head: the stored lm_head, or a copy of the embedding;
    scaled + separate head    -> an untied head whose kernel carries the d_model**-0.5 factor (the same
                                 function: (s*y) @ W = y @ (s*W)).
    """
    scaled, separate = scales_decoder_outputs(hf_config), has_separate_head(state)
    if scaled and not separate:
        return True, {k: v for k, v in state.items() if k != HEAD}
    state = dict(state)
    if EMBEDDING not in state:
        return False, state  # from_hf_state_dict names what is missing
    head = _np(state[HEAD] if separate else state[EMBEDDING])
    if scaled:
        head = head * np.float32(float(hf_config["d_model"]) ** -0.5)
    state[HEAD] = head
    return False, state


def config_from_hf(hf_config: Mapping[str, Any], *, base: T5Config | None = None,
                   logits_via_embedding: bool | None = None) -> T5Config:
    """ext5 T5Config from a Hugging Face T5 `config.json` dict (T5.1.1/lm-adapt/T0: gated-gelu, untied head;
    T5.1.0: relu, tied head). Fields HF does not describe (dtype, remat, scan) come from `base`.

    `logits_via_embedding` is `resolve_head`'s answer (it needs the weights); without it, the config's own
    scaling flag decides, as transformers 4.x does."""
    model_type = hf_config.get("model_type", "t5")
    if model_type not in HF_MODEL_TYPES:
        raise ConversionError(f"config.json has model_type {model_type!r}; ext5 imports {', '.join(HF_MODEL_TYPES)} "
                              f"encoder-decoders only")
    proj = hf_config.get("feed_forward_proj", "relu")
    activations = {"gated-gelu": ("gelu", "linear"), "relu": ("relu",)}.get(proj)
    if activations is None:
        raise ConversionError(f"config.json has feed_forward_proj {proj!r}; ext5 supports 'gated-gelu' (T5.1.1) "
                              f"and 'relu' (T5.1.0)")
    eps = float(hf_config.get("layer_norm_epsilon", 1e-6))
    if abs(eps - 1e-6) > 1e-12:
        raise ConversionError(f"config.json has layer_norm_epsilon {eps}; ext5's RMSNorm uses 1e-6")
    missing = [k for k in ("vocab_size", "d_model", "num_heads", "d_kv", "d_ff", "num_layers") if k not in hf_config]
    if missing:
        raise ConversionError(f"config.json lacks {', '.join(missing)}; is it a Hugging Face T5 config?")
    num_layers = int(hf_config["num_layers"])
    if logits_via_embedding is None:
        logits_via_embedding = scales_decoder_outputs(hf_config)
    return (base or T5Config()).replace(
        vocab_size=int(hf_config["vocab_size"]),
        emb_dim=int(hf_config["d_model"]),
        num_heads=int(hf_config["num_heads"]),
        head_dim=int(hf_config["d_kv"]),
        mlp_dim=int(hf_config["d_ff"]),
        num_encoder_layers=num_layers,
        num_decoder_layers=int(hf_config.get("num_decoder_layers") or num_layers),
        mlp_activations=activations,
        relative_attention_num_buckets=int(hf_config.get("relative_attention_num_buckets", 32)),
        relative_attention_max_distance=int(hf_config.get("relative_attention_max_distance", 128)),
        logits_via_embedding=bool(logits_via_embedding),
    )


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
        # Both flags, so that transformers 4.x (which reads tying and scaling from tie_word_embeddings) and
        # >= 5.24 (scale_decoder_outputs; ties unless lm_head.weight is stored apart) build the same model.
        tie_word_embeddings=bool(cfg.logits_via_embedding),
        scale_decoder_outputs=bool(cfg.logits_via_embedding),
        is_encoder_decoder=True,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )


def hf_config_dict(cfg: T5Config) -> dict:
    """config.json for `T5ForConditionalGeneration` (written without importing transformers)."""
    out = to_hf_config(cfg)
    out.update(architectures=["T5ForConditionalGeneration"], model_type="t5", torch_dtype="float32",
               initializer_factor=1.0, use_cache=True)
    return out


def _np(x: Any) -> np.ndarray:
    """float32 numpy array of a numpy array or torch tensor."""
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().to("cpu").float().numpy()
    return np.asarray(x, dtype=np.float32)


def _plain(params: Any) -> dict:
    """Unboxed, unscanned, numpy float32 nested dict (accepts a {'params': ...} wrapper)."""
    from flax import linen as nn  # local: keeps `import ext5.interop.hf` light

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
    missing = [name for _, name, _ in _layer_map(cfg) if name not in state]
    if EMBEDDING not in state:
        missing.append(EMBEDDING)
    if missing:
        raise KeyError(f"HF state dict lacks {len(missing)} expected tensors, e.g. {missing[:3]}")
    tree: dict = {}
    set_path(tree, "token_embedder/embedding", _np(state[EMBEDDING]))
    for ours, theirs, transpose in _layer_map(cfg):
        value = _np(state[theirs])
        set_path(tree, ours, np.ascontiguousarray(value.T if transpose else value))
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
