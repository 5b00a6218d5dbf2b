"""t5x checkpoints: read their parameters (legacy msgpack + zarr, or orbax) and infer the model config.

ext5's parameter tree *is* t5x's (`ext5.model.t5`), so an import is a read plus a shape check. Nothing
here unpickles: the t5x `checkpoint` file is msgpack (flax.serialization), zarr arrays are raw, orbax
reads its own tensorstore layout. Only params and step are read, never the optimizer slots.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping

import numpy as np

from ext5.interop.params import ConversionError, to_float32
from ext5.model.configs import T5Config
from ext5.train import checkpoints


def config_from_params(params: Mapping[str, Any], *, base: T5Config | None = None) -> T5Config:
    """Infer the T5Config of an unscanned t5x/ext5 parameter tree from its shapes.

    Shapes cannot tell gelu from another gated activation nor the relative-position max distance: those
    keep T5.1.1's values (or `base`'s)."""
    for stack in ("encoder", "decoder"):
        if isinstance(params.get(stack), Mapping):
            _count_layers(params[stack])  # refuses scanned trees with the reason
    try:
        vocab, emb = params["token_embedder"]["embedding"].shape
        heads, buckets = params["encoder"]["relpos_bias"]["rel_embedding"].shape
        enc, dec = params["encoder"], params["decoder"]
        layer0 = enc["layers_0"]
        joined = layer0["attention"]["query"]["kernel"].shape[1]
        mlp = layer0["mlp"]
    except (KeyError, TypeError, ValueError) as e:
        raise ConversionError(f"not a T5.1.x parameter tree (missing or malformed {e}); expected t5x names such "
                              f"as encoder/layers_0/attention/query/kernel") from None
    gated = "wi_0" in mlp
    base = base or T5Config()
    if gated:  # T5.1.1's gated GELU unless `base` names another gated pair
        activations = base.mlp_activations if len(base.mlp_activations) == 2 else ("gelu", "linear")
    else:
        activations = base.mlp_activations if len(base.mlp_activations) == 1 else ("relu",)
    return base.replace(
        vocab_size=int(vocab), emb_dim=int(emb), num_heads=int(heads), head_dim=int(joined) // int(heads),
        mlp_dim=int((mlp["wi_0"] if gated else mlp["wi"])["kernel"].shape[1]),
        num_encoder_layers=_count_layers(enc), num_decoder_layers=_count_layers(dec),
        mlp_activations=tuple(activations), relative_attention_num_buckets=int(buckets),
        logits_via_embedding="logits_dense" not in dec)


def _count_layers(stack: Mapping[str, Any]) -> int:
    n = sum(1 for k in stack if re.fullmatch(r"layers_\d+", k))
    if n == 0 and "layers" in stack:
        raise ConversionError("scanned (stacked-layer) checkpoints are not supported: t5x's scanned networks "
                              "(scalable_t5) keep one relative-position table per layer, which T5.1.1 and ext5 "
                              "share per stack; convert an unscanned checkpoint")
    return n




def find_t5x_checkpoint(path: str) -> tuple[str, str]:
    """(checkpoint_<step> dir, layout) for a t5x checkpoint dir or a t5x MODEL_DIR (latest step).

    layout is 'msgpack' (legacy: a `checkpoint` msgpack file + zarr dirs) or 'orbax' (a `state/` PyTree)."""
    if path.startswith("gs://") or "://" in path:
        raise ConversionError(f"{path}: copy the checkpoint to a local directory first (e.g. `gsutil -m cp -r "
                              f"{path} .`); ext5 convert reads local files")
    if not os.path.isdir(path):
        raise ConversionError(f"{path} is not a directory; pass a t5x checkpoint_<step> directory")
    if os.path.isfile(os.path.join(path, "checkpoint")):
        return path, "msgpack"
    if os.path.isdir(os.path.join(path, "state")):
        if os.path.isdir(os.path.join(path, "meta")):
            raise ConversionError(f"{path} is already an ext5 checkpoint; use it as INITIAL_CHECKPOINT_PATH directly")
        return path, "orbax"
    steps = checkpoints.checkpoint_steps(path)
    if steps:
        return find_t5x_checkpoint(os.path.join(path, checkpoints.step_dirname(max(steps))))
    raise ConversionError(f"{path} holds no t5x checkpoint (no `checkpoint` msgpack file, no `state/` orbax "
                          f"directory, no checkpoint_<step> subdirectory)")


def _is_ts_spec(x: Any) -> bool:
    return isinstance(x, Mapping) and "driver" in x and ("kvstore" in x or "path" in x)


def _read_ts(spec: Mapping[str, Any], ckpt_dir: str) -> np.ndarray:
    """Read one zarr array written by t5x's legacy checkpointer (path relative to the checkpoint dir)."""
    import tensorstore as ts
    spec = json.loads(json.dumps(spec))  # a deep, plain copy
    if spec.get("dtype") == "uint16" or spec.get("metadata", {}).get("dtype") == "<u2":
        raise ConversionError(f"{ckpt_dir}: a version-2 t5x checkpoint (bfloat16 stored as uint16); load and "
                              f"re-save it with t5x >= 2021-06 (checkpoint version 3) first")
    meta = spec.get("metadata", {})
    for k in ("chunks", "compressor"):  # as t5x does: open whatever chunking/compression is on disk
        meta.pop(k, None)
    kv = spec.get("kvstore")
    if isinstance(kv, Mapping) and "path" in kv:
        rel = kv["path"]
        spec["kvstore"] = {"driver": "file", "path": os.path.join(ckpt_dir, rel)}
    elif "path" in spec:  # tensorstore < 0.1.14 spec format
        rel = spec.pop("path")
        spec["kvstore"] = {"driver": "file", "path": os.path.join(ckpt_dir, rel)}
    else:
        raise ConversionError(f"{ckpt_dir}/checkpoint: a tensorstore spec without a path ({spec})")
    try:
        return np.asarray(ts.open(spec, open=True).result().read().result())
    except ValueError as e:
        raise ConversionError(f"{ckpt_dir}: cannot read array {rel!r} ({' '.join(str(e).split())[:200]}); "
                              f"is the checkpoint directory complete?") from None


def _read_msgpack(ckpt_dir: str) -> tuple[dict, int | None]:
    from flax import serialization  # msgpack with numpy ext types; no pickle
    with open(os.path.join(ckpt_dir, "checkpoint"), "rb") as f:
        raw = f.read()
    try:
        contents = serialization.msgpack_restore(raw)
    except Exception as e:  # noqa: BLE001 (msgpack raises several unrelated types)
        raise ConversionError(f"{ckpt_dir}/checkpoint is not a t5x msgpack checkpoint ({type(e).__name__})") from None
    version = contents.get("version", 0) if isinstance(contents, Mapping) else 0
    state = contents["optimizer"] if version else contents
    if not isinstance(state, Mapping) or "target" not in state:
        raise ConversionError(f"{ckpt_dir}/checkpoint has no 'target' parameters; is it a t5x checkpoint?")

    def load(tree: Any) -> Any:
        if _is_ts_spec(tree):
            return _read_ts(tree, ckpt_dir)
        if isinstance(tree, Mapping):
            return {k: load(v) for k, v in tree.items()}
        return np.asarray(tree)

    step = state.get("state", {}).get("step")
    return load(state["target"]), (None if step is None else int(np.asarray(step)))


def _read_orbax(ckpt_dir: str) -> tuple[dict, int | None]:
    import jax
    import orbax.checkpoint as ocp
    directory = os.path.join(ckpt_dir, "state")
    ck = ocp.Checkpointer(ocp.PyTreeCheckpointHandler())
    try:
        meta = ck.metadata(directory)
        tree = getattr(getattr(meta, "item_metadata", meta), "tree", None) or meta
    except Exception:  # noqa: BLE001 (checkpoints of early orbax versions lack _METADATA): read everything
        out = ck.restore(directory)
        step = out.get("state", {}).get("step") if isinstance(out, Mapping) else None
        if not isinstance(out, Mapping) or "target" not in out:
            raise ConversionError(f"{directory} has no 'target' parameters; is it a t5x checkpoint?") from None
        return jax.device_get(dict(out["target"])), (None if step is None else int(np.asarray(step)))
    if not isinstance(tree, Mapping) or "target" not in tree:
        raise ConversionError(f"{directory} has no 'target' parameters; is it a t5x checkpoint?")
    want = {"target": tree["target"]}
    if isinstance(tree.get("state"), Mapping) and "step" in tree["state"]:
        want["state"] = {"step": tree["state"]["step"]}
    # Restore only params and step, as host numpy arrays (the optimizer slots are not needed).
    item = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), want)
    rargs = jax.tree.map(lambda m: ocp.RestoreArgs(restore_type=np.ndarray), want)
    try:
        out = ck.restore(directory, args=ocp.args.PyTreeRestore(item=item, restore_args=rargs, partial_restore=True))
    except TypeError:  # orbax without partial_restore: restore everything
        out = ck.restore(directory)
    step = out.get("state", {}).get("step")
    return dict(out["target"]), (None if step is None else int(np.asarray(step)))


def load_t5x(path: str, *, base: T5Config | None = None) -> tuple[T5Config, dict, int, str]:
    """(config inferred from shapes, ext5 unscanned float32 params, step, layout) of a t5x checkpoint."""
    ckpt_dir, layout = find_t5x_checkpoint(path)
    target, step = (_read_msgpack if layout == "msgpack" else _read_orbax)(ckpt_dir)
    params = to_float32(target)
    cfg = config_from_params(params, base=base)
    step = step if step is not None else checkpoints.find_checkpoint_step(ckpt_dir)[1]
    return cfg, params, int(step or 0), layout
