"""Checkpoint interop: Hugging Face and t5x imports, Hugging Face export, `ext5 convert`, and the acceptance
check (a model trained on the embedded default exports to HF and greedy-decodes identically)."""
from __future__ import annotations

import functools
import json
import os
import time

import jax
import numpy as np
import pytest
from _util import hf_greedy, padded_batch

from ext5 import cli
from ext5.interop import checkpoint, hf_files, t5x
from ext5.interop import params as iparams
from ext5.model.configs import get_config
from ext5.model.t5 import Transformer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
torch.set_num_threads(1)  # tiny models: spare the shared CPU torch's thread pool

# Unequal layer counts, heads*head_dim != emb_dim, a vocab that is no power of two: mix-ups cannot cancel out.
CFG = get_config("tiny", vocab_size=300, emb_dim=64, num_heads=3, head_dim=16, mlp_dim=96,
                 num_encoder_layers=2, num_decoder_layers=3, dtype="float32")
T5X_STEP = 1234


@pytest.fixture(scope="module")
def params():
    """Random float32 weights of CFG's shapes (numpy: no init compile), norm scales away from 1 so that a
    mix-up between layers or norms shows."""
    rng = np.random.default_rng(11)
    shapes = iparams.flatten(jax.tree.map(lambda s: s.shape, iparams.abstract_params(CFG)))
    flat = {k: (1.0 + 0.2 * rng.standard_normal(s) if len(s) == 1 else rng.standard_normal(s) / np.sqrt(s[0]))
            for k, s in shapes.items()}
    tree: dict = {}
    for k, v in flat.items():
        _set(tree, k, v.astype(np.float32))
    return tree


@pytest.fixture(scope="module")
def hf_dir(params, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("hf"))
    hf_files.export_hf(params, CFG, out)
    return out


@pytest.fixture(scope="module")
def batch():
    return padded_batch(CFG.vocab_size)


@functools.lru_cache(maxsize=None)
def _apply(cfg):
    return jax.jit(lambda p, e, d, t: Transformer(cfg).apply({"params": p}, e, d, t, enable_dropout=False))


def _ext5_logits(p, batch, cfg=CFG):
    return np.asarray(_apply(cfg)(p, *batch))


def _hf_logits(model, batch):
    enc, dec, _ = batch
    with torch.no_grad():
        return model(input_ids=torch.tensor(enc, dtype=torch.long),
                     attention_mask=torch.tensor(enc > 0, dtype=torch.long),
                     decoder_input_ids=torch.tensor(dec, dtype=torch.long)).logits.numpy()


def _assert_same_tree(a, b):
    fa, fb = iparams.flatten(a), iparams.flatten(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=k)


def _one_line_error(capsys, argv) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ext5: error: ") and "\n" not in err, err
    return err


# ------------------------------------------------------------------------------------------------ Hugging Face

def test_hf_to_ext5_to_hf_round_trip_is_identical(params, hf_dir, tmp_path):
    cfg, imported = hf_files.load_hf(hf_dir, base=CFG)
    assert cfg == CFG
    _assert_same_tree(imported, params)
    again = tmp_path / "again"
    hf_files.export_hf(imported, cfg, str(again))
    first = hf_files.read_safetensors(os.path.join(hf_dir, "model.safetensors"))
    second = hf_files.read_safetensors(str(again / "model.safetensors"))
    assert first.keys() == second.keys() and "lm_head.weight" in first
    for k in first:
        np.testing.assert_array_equal(first[k], second[k], err_msg=k)
    assert json.loads((again / "config.json").read_text()) == json.loads(open(f"{hf_dir}/config.json").read())


def test_hf_sharded_bfloat16_import(params, hf_dir, tmp_path):
    """Sharded safetensors (model.safetensors.index.json) in bfloat16, as large Hub checkpoints come."""
    from safetensors.torch import save_file
    state = hf_files.read_safetensors(os.path.join(hf_dir, "model.safetensors"))
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for fname, keys in shards.items():
        save_file({k: torch.from_numpy(np.array(state[k])).to(torch.bfloat16) for k in keys}, str(tmp_path / fname))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: f for f, ks in shards.items() for k in ks}}))
    (tmp_path / "config.json").write_text(open(f"{hf_dir}/config.json").read())
    cfg, imported = hf_files.load_hf(str(tmp_path))
    assert cfg.replace(dtype="float32") == CFG
    expected = jax.tree.map(lambda x: np.asarray(torch.from_numpy(x).to(torch.bfloat16).float()), params)
    _assert_same_tree(imported, expected)
    os.remove(tmp_path / "model-00002-of-00002.safetensors")
    with pytest.raises(iparams.ConversionError, match="model-00002-of-00002.safetensors, which is missing"):
        hf_files.load_hf(str(tmp_path))


def _hf_flax_tree(p) -> dict:
    """HF's FlaxT5ForConditionalGeneration parameter layout, built by hand from ext5 (= t5x) names."""
    def attention(src):
        return {hf: {"kernel": src[ours]["kernel"]} for hf, ours in
                (("q", "query"), ("k", "key"), ("v", "value"), ("o", "out"))}

    def mlp(layer, norm):
        return {"DenseReluDense": {k: {"kernel": layer["mlp"][k]["kernel"]} for k in ("wi_0", "wi_1", "wo")},
                "layer_norm": {"weight": layer[norm]["scale"]}}

    tree = {"shared": {"embedding": p["token_embedder"]["embedding"]},
            "lm_head": {"kernel": p["decoder"]["logits_dense"]["kernel"]}}
    for stack, n in (("encoder", CFG.num_encoder_layers), ("decoder", CFG.num_decoder_layers)):
        blocks = {}
        for i in range(n):
            layer = p[stack][f"layers_{i}"]
            if stack == "encoder":
                sub = [{"SelfAttention": attention(layer["attention"]),
                        "layer_norm": {"weight": layer["pre_attention_layer_norm"]["scale"]}},
                       mlp(layer, "pre_mlp_layer_norm")]
            else:
                sub = [{"SelfAttention": attention(layer["self_attention"]),
                        "layer_norm": {"weight": layer["pre_self_attention_layer_norm"]["scale"]}},
                       {"EncDecAttention": attention(layer["encoder_decoder_attention"]),
                        "layer_norm": {"weight": layer["pre_cross_attention_layer_norm"]["scale"]}},
                       mlp(layer, "pre_mlp_layer_norm")]
            blocks[str(i)] = {"layer": {str(j): x for j, x in enumerate(sub)}}
        blocks["0"]["layer"]["0"]["SelfAttention"]["relative_attention_bias"] = {
            "embedding": p[stack]["relpos_bias"]["rel_embedding"].T}  # [buckets, heads]
        norm = "encoder_norm" if stack == "encoder" else "decoder_norm"
        tree[stack] = {"block": blocks, "final_layer_norm": {"weight": p[stack][norm]["scale"]}}
    return tree


def test_hf_flax_msgpack_import(params, hf_dir, tmp_path):
    """Hub T5 repos without safetensors still ship flax_model.msgpack (msgpack, not pickle): it is preferred
    over a pytorch_model.bin next to it."""
    from flax import serialization
    (tmp_path / "config.json").write_text(open(f"{hf_dir}/config.json").read())
    (tmp_path / "flax_model.msgpack").write_bytes(serialization.msgpack_serialize(_hf_flax_tree(params)))
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04not a pickle")
    _, imported = hf_files.load_hf(str(tmp_path))
    _assert_same_tree(imported, params)


def test_pickled_bin_is_refused_without_unpickling(hf_dir, tmp_path, capsys):
    (tmp_path / "config.json").write_text(open(f"{hf_dir}/config.json").read())
    # Not a valid pickle at all: any attempt to unpickle would raise something other than our error.
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04not a pickle")
    with pytest.raises(iparams.ConversionError) as e:
        hf_files.load_hf(str(tmp_path))
    msg = str(e.value)
    assert "\n" not in msg and "pytorch_model.bin" in msg and "never unpickles" in msg and "safetensors" in msg
    err = _one_line_error(capsys, ["convert", "--from=hf", str(tmp_path), f"--to={tmp_path / 'm'}"])
    assert "pytorch_model.bin" in err and "safetensors" in err
    assert not (tmp_path / "m").exists()
    err = _one_line_error(capsys, ["convert", "--from=hf", str(tmp_path / "pytorch_model.bin"),
                                   f"--to={tmp_path / 'm'}"])
    assert "never unpickles" in err


def test_export_loads_in_transformers_with_same_logits(params, hf_dir, batch):
    model = transformers.T5ForConditionalGeneration.from_pretrained(hf_dir).eval()
    assert model.lm_head.weight.data_ptr() != model.shared.weight.data_ptr()  # untied T5.1.1 head
    ours, theirs = _ext5_logits(params, batch), _hf_logits(model, batch)
    valid = batch[2] > 0  # HF computes padded query rows differently (never used)
    diff = float(np.abs(ours - theirs)[valid].max())
    print(f"\n[convert] export: max |ext5 - transformers| logit diff {diff:.2e} "
          f"(logit scale {np.abs(ours).max():.1f})")
    assert np.abs(ours).max() > 1.0 and diff <= 1e-4

    # Greedy generation agrees too, on weights whose argmax wanders over the vocabulary.
    from ext5.model import decoding
    enc = batch[0]
    mine = decoding.greedy_decode(Transformer(CFG), params, {"encoder_input_tokens": enc}, max_decode_length=12)
    theirs = hf_greedy(model, enc, 12)
    assert len(np.unique(mine)) > 6
    np.testing.assert_array_equal(mine, theirs)


# ------------------------------------------------------------------------------------------------ t5x

def _set(tree: dict, path: str, value) -> None:
    *parents, leaf = path.split("/")
    for k in parents:
        tree = tree.setdefault(k, {})
    tree[leaf] = value


def _optimizer_slots(params) -> dict:
    """Stand-ins for t5x's Adafactor `state.param_states` (ignored on import)."""
    return {k: {"v_row": np.ones(2, np.float32), "v_col": np.ones(3, np.float32), "v": np.zeros(1, np.float32)}
            for k in ("token_embedder", "encoder", "decoder")}


def write_t5x_orbax(root, params, step, *, ocdbt: bool) -> str:
    """t5x's OrbaxCheckpointManagerInterface layout: checkpoint_<step>/state = PyTree {target, state}."""
    import orbax.checkpoint as ocp
    tree = {"target": params, "state": {"step": np.int32(step), "param_states": _optimizer_slots(params)}}
    path = os.path.join(root, f"checkpoint_{step}")
    ocp.Checkpointer(ocp.PyTreeCheckpointHandler(use_ocdbt=ocdbt)).save(
        os.path.join(path, "state"), args=ocp.args.PyTreeSave(tree))
    return path


def write_t5x_msgpack(root, params, step) -> str:
    """t5x's legacy Checkpointer layout: a msgpack `checkpoint` file ({'version': 3, 'optimizer': state dict})
    whose large leaves are tensorstore specs of zarr arrays in `target.encoder...` dirs (paths relative)."""
    import tensorstore as ts
    from flax import serialization
    path = os.path.join(root, f"checkpoint_{step}")
    os.makedirs(path)
    target: dict = {}
    for name, arr in iparams.flatten(params).items():
        if arr.ndim == 1:  # unpartitioned arrays go into the msgpack itself
            _set(target, name, arr)
            continue
        rel = "target." + name.replace("/", ".")
        spec = {"driver": "zarr", "dtype": "float32", "kvstore": {"driver": "file", "path": rel},
                "metadata": {"compressor": {"id": "gzip"}, "shape": list(arr.shape),
                             "chunks": [max(1, arr.shape[0] // 2), arr.shape[1]]}}
        absolute = dict(spec, kvstore={"driver": "file", "path": os.path.join(path, rel)})
        ts.open(absolute, create=True).result().write(arr).result()
        _set(target, name, spec)
    state = {"target": target, "state": {"step": np.int32(step), "param_states": _optimizer_slots(params)}}
    with open(os.path.join(path, "checkpoint"), "wb") as f:
        f.write(serialization.msgpack_serialize({"version": 3, "optimizer": state}))
    return path


@pytest.mark.parametrize("layout", ["msgpack", "orbax", "orbax_ocdbt"])
def test_t5x_checkpoint_imports_with_same_logits_as_hf_path(layout, params, hf_dir, batch, tmp_path):
    if layout == "msgpack":
        write_t5x_msgpack(str(tmp_path), params, T5X_STEP)
    else:
        write_t5x_orbax(str(tmp_path), params, T5X_STEP, ocdbt=layout == "orbax_ocdbt")
    # A t5x MODEL_DIR: the latest checkpoint_<step> is picked.
    cfg, imported, step, found = t5x.load_t5x(str(tmp_path), base=CFG)
    assert step == T5X_STEP and found == layout.split("_")[0]
    assert cfg == CFG
    _, via_hf = hf_files.load_hf(hf_dir, base=CFG)
    t5x_logits, hf_path_logits = _ext5_logits(imported, batch), _ext5_logits(via_hf, batch)
    torch_logits = _hf_logits(transformers.T5ForConditionalGeneration.from_pretrained(hf_dir).eval(), batch)
    valid = batch[2] > 0
    d_hf_path = float(np.abs(t5x_logits - hf_path_logits).max())
    d_torch = float(np.abs(t5x_logits - torch_logits)[valid].max())
    print(f"\n[convert] t5x {layout}: max logit diff vs HF path (ext5) {d_hf_path:.1e}, vs transformers {d_torch:.2e}")
    assert d_hf_path == 0.0 and d_torch <= 1e-4


def test_t5x_bad_inputs_are_one_line_errors(params, tmp_path, capsys):
    err = _one_line_error(capsys, ["convert", "--from=t5x", str(tmp_path), f"--to={tmp_path / 'm'}"])
    assert "holds no t5x checkpoint" in err
    scanned = {"token_embedder": params["token_embedder"],
               "encoder": {"layers": {}, "relpos_bias": params["encoder"]["relpos_bias"]},
               "decoder": params["decoder"]}
    with pytest.raises(iparams.ConversionError, match="scanned"):
        t5x.config_from_params(scanned)
    assert "--from" in _one_line_error(capsys, ["convert", f"--to={tmp_path}"])
    t5x_dir = write_t5x_msgpack(str(tmp_path / "t5x"), params, T5X_STEP)
    err = _one_line_error(capsys, ["convert", f"--export-hf={t5x_dir}", f"--to={tmp_path / 'hf'}"])
    assert "not an ext5 checkpoint" in err and "--from=t5x" in err
    with open(os.path.join(t5x_dir, "checkpoint"), "wb") as f:
        f.write(b"\xc1 not msgpack")
    assert "not a t5x msgpack checkpoint" in _one_line_error(
        capsys, ["convert", "--from=t5x", t5x_dir, f"--to={tmp_path / 'm'}"])


# ------------------------------------------------------------------------------------------------ CLI

def test_cli_import_finetune_and_export_round_trip(params, hf_dir, batch, tmp_path, capsys):
    from ext5.train import checkpoints, optimizer, partitioning, step as step_lib
    model_dir = tmp_path / "m"
    assert cli.main(["convert", "--from=hf", hf_dir, f"--to={model_dir}", "--step=7"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {model_dir}/checkpoint_7" in out and "INITIAL_CHECKPOINT_PATH" in out
    # A MODEL_DIR that already holds checkpoints: an error, not an overwrite nor a checkpoint next to them.
    assert "already holds checkpoint_7" in _one_line_error(
        capsys, ["convert", "--from=hf", hf_dir, f"--to={model_dir}", "--step=0"])

    # What the trainer's INITIAL_CHECKPOINT_PATH restore does (t5x semantics: step and optimizer state), here
    # into another mesh (8-way data parallel) than the single device the converter wrote from.
    fns = step_lib.build(CFG, partitioning.make_mesh(1), partitioning.standard_logical_axis_rules(),
                         optimizer.adafactor(optimizer.create_learning_rate_scheduler("constant", 1e-3)),
                         input_len=8, target_len=8)
    ck = checkpoints.Checkpointer(str(model_dir), use_async=False)
    restored, _ = ck.restore(7, fns.abstract_state.as_dict(), fns.param_shapes(), with_data=False)
    ck.close()
    assert int(restored["step"]) == 7
    _assert_same_tree(jax.device_get(restored["params"]), params)
    kernel = restored["params"]["decoder"]["logits_dense"]["kernel"]
    assert kernel.sharding == fns.state_shardings.params["decoder"]["logits_dense"]["kernel"]
    assert len(kernel.sharding.device_set) == 8
    fresh = jax.eval_shape(fns.init, jax.random.PRNGKey(0)).opt_state
    assert jax.tree.structure(restored["opt_state"]) == jax.tree.structure(fresh)

    # Export the imported checkpoint (config from its meta): the tensors come back bit-identical.
    hf_out = tmp_path / "hf_out"
    assert cli.main(["convert", f"--export-hf={model_dir / 'checkpoint_7'}", f"--to={hf_out}"]) == 0
    assert "model.safetensors" in capsys.readouterr().out
    a = hf_files.read_safetensors(os.path.join(hf_dir, "model.safetensors"))
    b = hf_files.read_safetensors(str(hf_out / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)

    # t5x import through the CLI keeps the t5x step.
    write_t5x_msgpack(str(tmp_path / "t5x"), params, T5X_STEP)
    assert cli.main(["convert", "--from=t5x", str(tmp_path / "t5x" / f"checkpoint_{T5X_STEP}"),
                     f"--to={tmp_path / 'm2'}"]) == 0
    assert (tmp_path / "m2" / f"checkpoint_{T5X_STEP}").is_dir()
    cfg, step = checkpoint.checkpoint_config(str(tmp_path / "m2"))
    assert step == T5X_STEP and cfg.replace(dtype="float32") == CFG

    # ext5's own model gin (here: scanned layers) describing the same network: stacked on import, unstacked on
    # export, config from the checkpoint meta.
    shape_flags = [f"--gin.configs.get_config.{k}={getattr(CFG, k)}" for k in
                   ("vocab_size", "emb_dim", "num_heads", "head_dim", "mlp_dim", "num_encoder_layers",
                    "num_decoder_layers")]
    assert cli.main(["convert", "--from=hf", hf_dir, f"--to={tmp_path / 'scan'}", "--gin_file=t5_1_1_tiny.gin",
                     "--gin.configs.get_config.scan_layers=True"] + shape_flags) == 0
    cfg, _ = checkpoint.checkpoint_config(str(tmp_path / "scan"))
    assert cfg.scan_layers and cfg.replace(scan_layers=False, dtype="float32") == CFG
    assert cli.main(["convert", f"--export-hf={tmp_path / 'scan'}", f"--to={tmp_path / 'scan_hf'}"]) == 0
    c = hf_files.read_safetensors(str(tmp_path / "scan_hf" / "model.safetensors"))
    for k in a:
        np.testing.assert_array_equal(a[k], c[k], err_msg=k)

    # A gin model of other shapes than the source: a one-line error naming the field.
    err = _one_line_error(capsys, ["convert", "--from=hf", hf_dir, f"--to={tmp_path / 'm3'}",
                                   "--gin_file=t5_1_1_small.gin"])
    assert "vocab_size" in err or "emb_dim" in err


# ------------------------------------------------------------------------------------------------ acceptance

def test_trained_demo_model_exports_and_generates_identically(tmp_path, capsys):
    """Acceptance: a model trained on the embedded default (local_tiny.gin, as `make demo`) exports to HF, and
    greedy generation from ext5 and from transformers gives identical tokens on 5 held-out inputs."""
    import seqio

    from ext5.eval.run import load_params
    from ext5.model import decoding
    model_dir, hf_out = tmp_path / "demo", tmp_path / "demo_hf"
    t0 = time.time()
    assert cli.main(["train", "--gin_file=local_tiny.gin", f"--gin.MODEL_DIR='{model_dir}'",
                     "--gin.TRAIN_STEPS=20", "--gin.BATCH_SIZE=8", "--gin.EVAL_PERIOD=None",
                     "--gin.trainer.train.evaluator=None", "--gin.CHECKPOINT_PERIOD=20"]) == 0
    t_train = time.time() - t0
    assert cli.main(["convert", f"--export-hf={model_dir}", f"--to={hf_out}"]) == 0
    capsys.readouterr()

    lengths = {"inputs": 128, "targets": 32}
    ds = seqio.get_mixture_or_task("local_default").get_dataset(lengths, split="validation", shuffle=False,
                                                                seed=0)
    ds = seqio.EncDecFeatureConverter(pack=False)(ds, lengths)
    enc = np.stack([ex["encoder_input_tokens"] for ex in ds.take(5).as_numpy_iterator()]).astype(np.int32)

    cfg, _ = checkpoint.checkpoint_config(str(model_dir))
    p, step = load_params(str(model_dir), cfg)
    assert step == 20
    ours = decoding.greedy_decode(Transformer(cfg), p, {"encoder_input_tokens": enc}, max_decode_length=32)

    theirs = hf_greedy(transformers.T5ForConditionalGeneration.from_pretrained(str(hf_out)).eval(), enc, 32)
    print(f"\n[convert] acceptance: trained 20 steps in {t_train:.1f}s; ext5 greedy tokens:\n{ours[:, :12]}")
    assert (ours > 1).sum() >= 10  # real generations, not just EOS
    np.testing.assert_array_equal(ours, theirs)


# ------------------------------------------------------------------------------------------------ params only

def test_eval_and_export_restore_parameters_only(params, tmp_path, monkeypatch):
    """load_params (eval, infer) and the exporter read the params subtree alone: no optimizer is built, and a
    checkpoint whose optimizer state has any other layout (here not even an optax state) still loads."""
    from ext5.eval.run import load_params
    from ext5.train import checkpoints, step as step_lib
    ck = checkpoints.Checkpointer(str(tmp_path), use_async=False)
    state = {"step": np.int32(5), "params": params, "opt_state": {"not_adafactor": np.arange(7, dtype=np.float32)}}
    ck.save(5, state, {}, checkpoints.model_meta(CFG, iparams.param_shapes(params)), force=True)
    ck.close()

    def no_build(*a, **k):
        raise AssertionError("step.build (optimizer init) on a parameters-only path")
    monkeypatch.setattr(step_lib, "build", no_build)

    restored, step = load_params(str(tmp_path), CFG)
    assert step == 5
    _assert_same_tree(jax.device_get(restored), params)
    assert len(restored["decoder"]["logits_dense"]["kernel"].sharding.device_set) == len(jax.devices())
    exported, step = checkpoint.load_checkpoint_params(str(tmp_path / "checkpoint_5"), CFG)
    assert step == 5
    _assert_same_tree(exported, params)
    with pytest.raises(checkpoints.IncompatibleCheckpointError, match="holds a different model"):
        load_params(str(tmp_path), CFG.replace(mlp_dim=32))


def test_one_checkpoint_name_parser(tmp_path):
    from ext5.train import checkpoints
    assert checkpoints.step_of("checkpoint_12") == 12 and checkpoints.step_of("/runs/m/checkpoint_7/") == 7
    for name in ("checkpoint_x", "corrupt-checkpoint_3-1700000000", "checkpoint_3.orbax-checkpoint-tmp-9", "ckpt_3"):
        assert checkpoints.step_of(name) is None, name
    for name in ("checkpoint_3", "checkpoint_20", "checkpoint_4.orbax-checkpoint-tmp-1", "data_state"):
        (tmp_path / name).mkdir()
    (tmp_path / "checkpoint_9").write_text("a file, not a checkpoint")
    assert checkpoints.checkpoint_steps(str(tmp_path)) == [3, 20]
    assert checkpoints.find_checkpoint_step(str(tmp_path / "checkpoint_20")) == (str(tmp_path), 20)
    assert checkpoints.find_checkpoint_step(str(tmp_path)) == (str(tmp_path), None)
    with pytest.raises(iparams.ConversionError, match="already holds checkpoint_20"):
        checkpoint.ensure_fresh_model_dir(str(tmp_path))
