"""Checkpoint interop: import Hugging Face / t5x T5 checkpoints into ext5, export ext5 to Hugging Face.

    Hugging Face dir (config.json + safetensors | flax_model.msgpack) ──┐
    t5x checkpoint_<step> (orbax, or msgpack + zarr) ──────────────────┴─► ext5 params (t5x names)
                                                                           ─► MODEL_DIR/checkpoint_<step>
    ext5 checkpoint ─► config.json + model.safetensors (T5ForConditionalGeneration.from_pretrained)

ext5's parameter tree *is* t5x's (`ext5.model.t5`), so a t5x import is a read plus a shape check, and the
HF mapping lives in `ext5.model.hf`. Nothing here unpickles: safetensors and zarr are raw arrays, the t5x
`checkpoint` file and HF's flax_model.msgpack are msgpack (flax.serialization), orbax reads its own
tensorstore layout; pickled PyTorch files (`*.bin`, `*.pt`) are refused. No TensorFlow and no torch are
imported.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
from typing import Any, Mapping

import numpy as np

from ext5.model import hf
from ext5.model.configs import SIZES, T5Config

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
HF_MODEL_TYPES = ("t5", "mt5")  # same network; umt5 has per-layer position biases, which ext5 lacks


class ConversionError(ValueError):
    """Bad conversion input; the message is one line naming the problem and the fix."""


# ---------------------------------------------------------------------------------------------------------
# Model configs
# ---------------------------------------------------------------------------------------------------------

def config_from_hf(hf_config: Mapping[str, Any], *, base: T5Config | None = None) -> T5Config:
    """ext5 T5Config from a Hugging Face T5 `config.json` dict (T5.1.1/lm-adapt/T0: gated-gelu, untied head;
    T5.1.0: relu, tied head). Fields HF does not describe (dtype, remat, scan) come from `base`."""
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
    fields = dict(
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
        # HF's historical default is a tied head (T5.1.0); T5.1.1 configs say tie_word_embeddings: false.
        logits_via_embedding=bool(hf_config.get("tie_word_embeddings", True)),
    )
    return (base or T5Config()).replace(**fields)


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
    return (f"{'T5.1.1-' + named if named else 'T5'} d_model {cfg.emb_dim}, {cfg.num_heads} heads x {cfg.head_dim}, "
            f"d_ff {cfg.mlp_dim} ({act}), layers {cfg.num_encoder_layers}+{cfg.num_decoder_layers}, "
            f"vocab {cfg.vocab_size}, {'tied' if cfg.logits_via_embedding else 'untied'} head")


def param_shapes(params: Mapping[str, Any]) -> dict[str, list[int]]:
    """{'a/b/c': shape} of a nested parameter dict (the form ext5's checkpoint meta stores)."""
    return {k: list(getattr(v, "shape", None) or np.shape(v)) for k, v in _flatten(params).items()}


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


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


# ---------------------------------------------------------------------------------------------------------
# Hugging Face import
# ---------------------------------------------------------------------------------------------------------

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
    for name, arr in _flatten(tree).items():
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
        cfg = config_from_hf(json.load(f), base=base)
    state: dict[str, np.ndarray] = {}
    for path in _hf_weight_files(directory):
        state.update(read_hf_flax(path) if path.endswith(".msgpack") else read_safetensors(path))
    try:
        params = hf.from_hf_state_dict(state, cfg)
    except KeyError as e:
        raise ConversionError(f"{directory}: the weights do not match config.json ({e.args[0]})") from None
    expected = param_shapes(_abstract_params(cfg))
    check_shapes(params, expected, what=f"{directory} (weights vs config.json)",
                 fix="config.json does not describe these weights; re-download both from the same revision")
    return cfg, params


def _abstract_params(cfg: T5Config) -> dict:
    """Unscanned parameter shapes of `cfg` (no compute)."""
    import jax
    from flax import linen as nn

    from ext5.model.t5 import init_params
    return jax.eval_shape(lambda: nn.meta.unbox(init_params(cfg.replace(scan_layers=False), jax.random.PRNGKey(0))))


# ---------------------------------------------------------------------------------------------------------
# t5x import
# ---------------------------------------------------------------------------------------------------------

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
    steps = [int(m.group(1)) for d in os.listdir(path) if (m := re.fullmatch(r"checkpoint_(\d+)", d))]
    if steps:
        return find_t5x_checkpoint(os.path.join(path, f"checkpoint_{max(steps)}"))
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
    params = _to_float32(target)
    cfg = config_from_params(params, base=base)
    step = step if step is not None else _step_from_dirname(ckpt_dir)
    return cfg, params, int(step or 0), layout


def _step_from_dirname(path: str) -> int | None:
    m = re.fullmatch(r"checkpoint_(\d+)", os.path.basename(os.path.normpath(path)))
    return int(m.group(1)) if m else None


def _to_float32(tree: Mapping[str, Any]) -> dict:
    return {k: _to_float32(v) if isinstance(v, Mapping) else np.asarray(v, dtype=np.float32)
            for k, v in tree.items()}


# ---------------------------------------------------------------------------------------------------------
# ext5 checkpoints
# ---------------------------------------------------------------------------------------------------------

def ensure_fresh_model_dir(model_dir: str) -> None:
    """Refuse (one line) a local MODEL_DIR that already holds checkpoints: a run would resume from them."""
    if "://" in model_dir or not os.path.isdir(model_dir):
        return
    steps = [int(m.group(1)) for d in os.listdir(model_dir) if (m := re.fullmatch(r"checkpoint_(\d+)", d))]
    if steps:
        raise ConversionError(f"{model_dir} already holds checkpoint_{max(steps)}; pass a fresh --to directory")


def write_checkpoint(params: Mapping[str, Any], cfg: T5Config, model_dir: str, *, step: int = 0,
                     **meta_extra: Any) -> str:
    """Write MODEL_DIR/checkpoint_<step> (params, step and a fresh ext5 Adafactor state) for fine-tuning
    with INITIAL_CHECKPOINT_PATH (t5x semantics: training continues from `step`). `params` are unscanned;
    they are stacked when `cfg.scan_layers`. Returns the checkpoint directory."""
    import jax
    import jax.numpy as jnp

    from ext5.model.t5 import unscanned_to_scan
    from ext5.train import checkpoints, optimizer, partitioning, step as step_lib

    if cfg.scan_layers:
        params = unscanned_to_scan(dict(params))
    # One device suffices: orbax restores into whatever mesh the fine-tuning run uses.
    mesh = partitioning.make_mesh(1, jax.devices()[:1])
    # The trainer always hands adafactor a schedule (a callable), which decides the state's structure.
    tx = optimizer.adafactor(optimizer.create_learning_rate_scheduler())
    fns = step_lib.build(cfg, mesh, partitioning.standard_logical_axis_rules(), tx, input_len=8, target_len=8)
    shapes = fns.param_shapes()
    check_shapes(params, shapes, what="imported weights")
    sh = fns.state_shardings
    device_params = jax.device_put(jax.tree.map(lambda x: np.asarray(x, np.float32), dict(params)), sh.params)
    with mesh:
        opt_state = jax.jit(tx.init, out_shardings=sh.opt_state)(device_params)
    state = {"step": jax.device_put(jnp.asarray(step, jnp.int32), sh.step), "params": device_params,
             "opt_state": opt_state}
    ck = checkpoints.Checkpointer(model_dir, use_async=False)
    existing = ck.all_steps()
    if existing:  # a run would resume from (or mix with) those: refuse rather than add a checkpoint next to them
        ck.close()
        raise ConversionError(f"{model_dir} already holds checkpoint_{max(existing)}; pass a fresh --to directory")
    ck.save(step, state, {}, checkpoints.model_meta(cfg, shapes, **meta_extra), force=True)
    ck.close()
    return os.path.join(ck.directory, f"{checkpoints.STEP_PREFIX}_{step}")


def checkpoint_config(checkpoint_path: str) -> tuple[T5Config, int]:
    """The model config stored in an ext5 checkpoint's meta, and the step (latest if a MODEL_DIR is given)."""
    from ext5.train import checkpoints
    directory, step = checkpoints.find_checkpoint_step(checkpoint_path)
    if not os.path.isdir(directory):
        raise ConversionError(f"{checkpoint_path} does not exist; pass an ext5 MODEL_DIR or its checkpoint_<step>")
    ck = checkpoints.Checkpointer(directory, use_async=False)
    try:
        step = step if step is not None else ck.latest_step()
        if step is None or step not in ck.all_steps():
            raise ConversionError(f"{checkpoint_path} holds no ext5 checkpoint_<step>; pass a MODEL_DIR of a "
                                  f"training run or one of its checkpoint_<step> directories")
        if not os.path.isdir(os.path.join(directory, f"{checkpoints.STEP_PREFIX}_{step}", checkpoints.META)):
            raise ConversionError(f"{directory}/{checkpoints.STEP_PREFIX}_{step} is not an ext5 checkpoint (no "
                                  f"'{checkpoints.META}' item); import t5x checkpoints with --from=t5x")
        meta = ck.read_meta(step)
    finally:
        ck.close()
    stored = meta.get("model_config")
    if not isinstance(stored, Mapping):
        raise ConversionError(f"{checkpoint_path} stores no model config; pass the run's --gin_file")
    known = {f.name for f in dataclasses.fields(T5Config)}
    return T5Config(**{k: v for k, v in stored.items() if k in known}), int(step)


def load_checkpoint_params(checkpoint_path: str, cfg: T5Config) -> tuple[dict, int]:
    """Unscanned host float32 params and step of an ext5 checkpoint (MODEL_DIR = latest step)."""
    import jax

    from ext5.eval.run import load_params
    from ext5.model.t5 import scan_to_unscanned
    params, step = load_params(checkpoint_path, cfg)
    params = scan_to_unscanned(jax.device_get(params))
    return _to_float32(params), int(step)


# ---------------------------------------------------------------------------------------------------------
# Hugging Face export
# ---------------------------------------------------------------------------------------------------------

def hf_config_dict(cfg: T5Config) -> dict:
    """config.json for `T5ForConditionalGeneration` (written without importing transformers)."""
    out = hf.to_hf_config(cfg)
    out.update(architectures=["T5ForConditionalGeneration"], model_type="t5", torch_dtype="float32",
               initializer_factor=1.0, use_cache=True)
    return out


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
        json.dump(hf_config_dict(cfg), f, indent=2, sort_keys=True)
    with open(paths[1], "w", encoding="utf-8") as f:
        # T5 decodes from the pad id; greedy by default, as ext5's greedy_decode.
        json.dump({"decoder_start_token_id": 0, "eos_token_id": 1, "pad_token_id": 0}, f, indent=2)
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in state.items()}, paths[2],
              metadata={"format": "pt"})
    return paths
