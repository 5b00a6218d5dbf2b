"""Hugging Face T5 directories: read config.json plus weights into ext5 params, write an HF export.

Weights come as model.safetensors, sharded safetensors (model.safetensors.index.json) or
flax_model.msgpack; pickled PyTorch files (`*.bin`, `*.pt`) are refused, never unpickled. The tensor
mapping and the config (tying and output scaling across transformers versions) are `ext5.interop.hf`'s.
"""
from __future__ import annotations

import glob
import json
import os
from typing import Any, Mapping

import numpy as np

from ext5.interop import hf
from ext5.interop.params import ConversionError, abstract_params, check_shapes, flatten, param_shapes
from ext5.model.configs import T5Config

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def _safetensors_dtypes() -> dict[str, Any]:
    import ml_dtypes  # ships with jax; numpy itself has no bfloat16
    return {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "F64": np.float64}


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """Memory-mapped arrays of a .safetensors file (8-byte header length, JSON header, raw little-endian data).

    Read directly rather than through `safetensors.numpy`, which cannot represent bfloat16 (T0's dtype)."""
    dtypes = _safetensors_dtypes()
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        try:
            header = json.loads(f.read(n))
        except (ValueError, MemoryError, OverflowError):
            raise ConversionError(f"{path} is not a safetensors file (bad header); re-download it") from None
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n) if os.path.getsize(path) > 8 + n else \
        np.zeros(0, np.uint8)
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in dtypes:
            raise ConversionError(f"{path}: tensor {name} has dtype {info['dtype']}; ext5 imports "
                                  f"{'/'.join(dtypes)} weights")
        start, end = info["data_offsets"]
        out[name] = data[start:end].view(dtypes[info["dtype"]]).reshape(info["shape"])
    return out


def read_hf_flax(path: str) -> dict[str, np.ndarray]:
    """A Hugging Face `flax_model.msgpack` as a PyTorch-named state dict.

    Flax names are the module path (`encoder/block/0/layer/0/SelfAttention/q/kernel`); Dense kernels are
    [in, out] (PyTorch's Linear weight transposed) and embeddings `embedding` (PyTorch's `weight`)."""
    from flax import serialization  # msgpack with numpy ext types; no pickle
    with open(path, "rb") as f:
        try:
            tree = serialization.msgpack_restore(f.read())
        except Exception as e:  # noqa: BLE001 (msgpack raises several unrelated types)
            raise ConversionError(f"{path} is not a flax msgpack file ({type(e).__name__})") from None
    if isinstance(tree, Mapping) and set(tree) == {"params"}:
        tree = tree["params"]
    out = {}
    for name, arr in flatten(tree).items():
        *parents, leaf = name.split("/")
        arr = np.asarray(arr)
        if leaf == "kernel":
            arr, leaf = arr.T, "weight"
        elif leaf == "embedding":
            leaf = "weight"
        out[".".join(parents + [leaf])] = arr
    return out


def _hf_weight_files(directory: str) -> list[str]:
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index, encoding="utf-8") as f:
            names = sorted(set(json.load(f)["weight_map"].values()))
        missing = [n for n in names if not os.path.exists(os.path.join(directory, n))]
        if missing:
            raise ConversionError(f"{index} lists {missing[0]}, which is missing; download every shard it names")
        return [os.path.join(directory, n) for n in names]
    single = os.path.join(directory, "model.safetensors")
    if os.path.exists(single):
        return [single]
    files = sorted(glob.glob(os.path.join(directory, "*.safetensors")))
    if files:
        return files
    flax_file = os.path.join(directory, "flax_model.msgpack")
    if os.path.exists(flax_file):  # Hub T5 repos often ship this (msgpack, no pickle) next to pytorch_model.bin
        return [flax_file]
    pickled = sorted(os.path.basename(p) for p in glob.glob(os.path.join(directory, "*"))
                     if p.endswith(PICKLE_SUFFIXES))
    if pickled:
        raise ConversionError(
            f"{directory} holds only pickled PyTorch weights ({pickled[0]}), which ext5 never unpickles; get the "
            f"repo's model.safetensors or flax_model.msgpack (e.g. `huggingface-cli download REPO config.json "
            f"flax_model.msgpack`) or convert once in a trusted environment: `python -c \"import transformers as t; "
            f"t.AutoModelForSeq2SeqLM.from_pretrained('{directory}').save_pretrained('OUT')\"`")
    raise ConversionError(f"{directory} has no model.safetensors (nor sharded *.safetensors with "
                          f"model.safetensors.index.json, nor flax_model.msgpack); download a Hugging Face T5 "
                          f"model directory")


def load_hf(directory: str, *, base: T5Config | None = None) -> tuple[T5Config, dict]:
    """(config, ext5 unscanned float32 params) of a Hugging Face T5 directory: config.json plus
    model.safetensors, sharded safetensors (model.safetensors.index.json) or flax_model.msgpack."""
    if directory.endswith(PICKLE_SUFFIXES) and not os.path.isdir(directory):
        raise ConversionError(f"{directory} is a pickled PyTorch file, which ext5 never unpickles; pass a "
                              f"directory with config.json and model.safetensors (or flax_model.msgpack) instead")
    if not os.path.isdir(directory):
        raise ConversionError(f"{directory} is not a directory; pass a Hugging Face model directory "
                              f"(config.json + model.safetensors)")
    cfg_path = os.path.join(directory, "config.json")
    if not os.path.exists(cfg_path):
        raise ConversionError(f"{directory} has no config.json; pass a Hugging Face model directory")
    with open(cfg_path, encoding="utf-8") as f:
        hf_config = json.load(f)
    state: dict[str, np.ndarray] = {}
    for path in _hf_weight_files(directory):
        state.update(read_hf_flax(path) if path.endswith(".msgpack") else read_safetensors(path))
    # Tying and output scaling: from the config's flags (either transformers version) and the weights.
    tied, state = hf.resolve_head(hf_config, state)
    cfg = hf.config_from_hf(hf_config, base=base, logits_via_embedding=tied)
    try:
        params = hf.from_hf_state_dict(state, cfg)
    except KeyError as e:
        raise ConversionError(f"{directory}: the weights do not match config.json ({e.args[0]})") from None
    expected = param_shapes(abstract_params(cfg))
    check_shapes(params, expected, what=f"{directory} (weights vs config.json)",
                 fix="config.json does not describe these weights; re-download both from the same revision")
    return cfg, params


def export_hf(params: Mapping[str, Any], cfg: T5Config, out_dir: str) -> list[str]:
    """Write config.json, generation_config.json and model.safetensors (float32) to `out_dir`.

    The encoder/decoder token embeddings are `shared.weight` in HF (tied on load), so they are written
    once, as `save_pretrained` does. Returns the written paths."""
    from safetensors.numpy import save_file
    os.makedirs(out_dir, exist_ok=True)
    state = hf.to_hf_state_dict(params, cfg)
    for tied in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
        state.pop(tied, None)
    if cfg.logits_via_embedding:
        state.pop("lm_head.weight", None)
    paths = [os.path.join(out_dir, n) for n in ("config.json", "generation_config.json", "model.safetensors")]
    with open(paths[0], "w", encoding="utf-8") as f:
        json.dump(hf.hf_config_dict(cfg), f, indent=2, sort_keys=True)
    with open(paths[1], "w", encoding="utf-8") as f:
        # T5 decodes from the pad id; greedy by default, as ext5's greedy_decode.
        json.dump({"decoder_start_token_id": 0, "eos_token_id": 1, "pad_token_id": 0}, f, indent=2)
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in state.items()}, paths[2],
              metadata={"format": "pt"})
    return paths
