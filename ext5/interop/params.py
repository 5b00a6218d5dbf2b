"""Parameter trees shared by the importers and exporters: the error type, flattening, shape checks,
float32 host copies, and a one-line description of a model config."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ext5.model.configs import SIZES, T5Config


class ConversionError(ValueError):
    """Bad conversion input; the message is one line naming the problem and the fix."""


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a/b/c': leaf} of a nested dict."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def set_path(tree: dict, path: str, value: Any) -> None:
    """tree['a']['b']['c'] = value for path 'a/b/c', creating the inner dicts."""
    *parents, leaf = path.split("/")
    for k in parents:
        tree = tree.setdefault(k, {})
    tree[leaf] = value


def param_shapes(params: Mapping[str, Any]) -> dict[str, list[int]]:
    """{'a/b/c': shape} of a nested parameter dict (the form ext5's checkpoint meta stores)."""
    return {k: list(getattr(v, "shape", None) or np.shape(v)) for k, v in flatten(params).items()}


def check_shapes(params: Mapping[str, Any], expected: Mapping[str, list[int]], *, what: str,
                 fix: str = "drop --gin_file to use the checkpoint's own shapes, or fix the config") -> None:
    """One-line ConversionError when the parameter names/shapes differ from the configured model's."""
    got = param_shapes(params)
    if got == dict(expected):
        return
    for k in sorted(set(got) | set(expected)):
        if got.get(k) != (list(expected[k]) if k in expected else None):
            there = tuple(got[k]) if k in got else "absent"
            want = tuple(expected[k]) if k in expected else "absent"
            raise ConversionError(f"{what}: {k} is {there} there but {want} in the configured model; {fix}")


def to_float32(tree: Mapping[str, Any]) -> dict:
    """A nested dict of host float32 numpy arrays."""
    return {k: to_float32(v) if isinstance(v, Mapping) else np.asarray(v, dtype=np.float32)
            for k, v in tree.items()}


def abstract_params(cfg: T5Config) -> dict:
    """Unscanned parameter shapes of `cfg` (no compute)."""
    import jax
    from flax import linen as nn

    from ext5.model.t5 import init_params
    return jax.eval_shape(lambda: nn.meta.unbox(init_params(cfg.replace(scan_layers=False), jax.random.PRNGKey(0))))


def size_name(cfg: T5Config) -> str | None:
    """The named size (tiny..xxl) whose shapes `cfg` has, if any."""
    keys = ("emb_dim", "num_heads", "head_dim", "mlp_dim", "num_encoder_layers", "num_decoder_layers")
    for name, ref in SIZES.items():
        if all(getattr(ref, k) == getattr(cfg, k) for k in keys):
            return name
    return None


def describe(cfg: T5Config) -> str:
    """One line: size, layers, widths and head type."""
    act = "gated-gelu" if len(cfg.mlp_activations) == 2 else "/".join(cfg.mlp_activations)
    named = size_name(cfg)
    head = "tied head, outputs scaled by d_model**-0.5" if cfg.logits_via_embedding else "untied head"
    return (f"{'T5.1.1-' + named if named else 'T5'} d_model {cfg.emb_dim}, {cfg.num_heads} heads x {cfg.head_dim}, "
            f"d_ff {cfg.mlp_dim} ({act}), layers {cfg.num_encoder_layers}+{cfg.num_decoder_layers}, "
            f"vocab {cfg.vocab_size}, {head}")
