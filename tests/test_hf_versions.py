"""Hugging Face import and export across transformers versions (issue 13, item 3).

transformers 4.x reads an original-T5 head (tied to the embedding, decoder outputs scaled by d_model**-0.5)
from `tie_word_embeddings: true` and a T5.1.1 head (untied, unscaled) from `false`. transformers >= 5.24
always writes `tie_word_embeddings: true`, keeps the scaling in `scale_decoder_outputs`, and stores a
T5.1.1 `lm_head.weight` apart from the embedding. Three checkpoints built here -- a Hub-style T5.1.1, the
same model re-saved by the installed transformers, and an original-T5-style tied and scaled model --
must import into the model Hugging Face runs (same greedy decodes, same logits), and ext5's export must
reload to that same model.
"""
from __future__ import annotations

import functools
import json
import logging
import os

import jax
import numpy as np
import pytest
from _util import hf_greedy, padded_batch

from ext5 import cli
from ext5.interop import checkpoint, hf, hf_files
from ext5.interop.params import abstract_params, flatten, set_path
from ext5.model import decoding
from ext5.model.configs import get_config
from ext5.model.t5 import Transformer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
torch.set_num_threads(1)

# Unequal layer counts and heads*head_dim != emb_dim, so a mix-up cannot cancel out.
T5_1_1 = get_config("tiny", vocab_size=200, emb_dim=48, num_heads=3, head_dim=16, mlp_dim=64,
                    num_encoder_layers=2, num_decoder_layers=3, dtype="float32")
T5_1_0 = T5_1_1.replace(mlp_activations=("relu",), logits_via_embedding=True)
NUM_INPUTS, DECODE_LEN = 4, 10
NOT_TIED_NOTICE = "will NOT tie them"  # transformers >= 5 on every untied T5 (its T5Config forces tying on)


def _random_params(cfg, seed: int) -> dict:
    """Random float32 weights (numpy, no init compile) whose greedy argmax wanders over the vocabulary."""
    rng = np.random.default_rng(seed)
    tree: dict = {}
    for k, s in flatten(jax.tree.map(lambda x: x.shape, abstract_params(cfg))).items():
        v = 1.0 + 0.2 * rng.standard_normal(s) if len(s) == 1 else rng.standard_normal(s) / np.sqrt(s[0])
        if k == "token_embedder/embedding":
            v = rng.standard_normal(s)  # T5's embedding scale: the tied head's logits are not all near 0
        set_path(tree, k, v.astype(np.float32))
    return tree


def _write_hf(directory, config: dict, state: dict) -> str:
    from safetensors.numpy import save_file
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f)
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, os.path.join(directory, "model.safetensors"),
              metadata={"format": "pt"})
    return str(directory)


def _hub_style(cfg, params, directory, **config_overrides) -> str:
    """A directory as the Hub ships T5 (transformers 4.x era): no `scale_decoder_outputs`, one `shared.weight`,
    `lm_head.weight` only when untied; original T5's config.json has no `tie_word_embeddings` (default true)."""
    config = hf.hf_config_dict(cfg)
    config.pop("scale_decoder_outputs")
    if cfg.logits_via_embedding:
        config.pop("tie_word_embeddings")
    config.update(config_overrides)
    state = {k: v for k, v in hf.to_hf_state_dict(params, cfg).items()
             if k not in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
             and not (cfg.logits_via_embedding and k == "lm_head.weight")}
    return _write_hf(directory, config, state)


class _Messages(logging.Handler):
    """transformers' log records at WARNING and above."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.records: list[str] = []

    def emit(self, record):
        self.records.append(record.getMessage())


def _load_hf(directory) -> tuple[object, list[str]]:
    """(T5ForConditionalGeneration in eval mode, warnings transformers logged while loading it)."""
    import warnings
    handler, logger = _Messages(), logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = transformers.T5ForConditionalGeneration.from_pretrained(str(directory)).eval()
    finally:
        logger.removeHandler(handler)
    return model, handler.records + [str(w.message) for w in caught]


def _hf_logits(model, batch) -> np.ndarray:
    enc, dec, _ = batch
    with torch.no_grad():
        return model(input_ids=torch.tensor(enc, dtype=torch.long),
                     attention_mask=torch.tensor(enc > 0, dtype=torch.long),
                     decoder_input_ids=torch.tensor(dec, dtype=torch.long)).logits.numpy()


@functools.lru_cache(maxsize=None)
def _forward(cfg):
    return jax.jit(lambda p, e, d, t: Transformer(cfg).apply({"params": p}, e, d, t, enable_dropout=False))


@pytest.fixture(scope="module")
def batch():
    return padded_batch(T5_1_1.vocab_size)


@pytest.fixture(scope="module")
def inputs():
    """NUM_INPUTS encoder inputs of ragged lengths."""
    rng = np.random.default_rng(5)
    enc = rng.integers(2, T5_1_1.vocab_size, (NUM_INPUTS, 24)).astype(np.int32)
    for row, length in enumerate((24, 17, 9, 4)):
        enc[row, length:] = 0
    return enc


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """{name: (directory, ext5 logits_via_embedding it must import as)} for the three checkpoints."""
    root = tmp_path_factory.mktemp("hf_versions")
    hub = _hub_style(T5_1_1, _random_params(T5_1_1, 1), root / "hub_t5_1_1", tie_word_embeddings=False)
    # Loaded and re-saved by the installed transformers (>= 5.24: tie_word_embeddings true, scale_decoder_outputs
    # false, lm_head.weight stored).
    model, _ = _load_hf(hub)
    model.save_pretrained(str(root / "resaved_t5_1_1"))
    original = _hub_style(T5_1_0, _random_params(T5_1_0, 2), root / "original_t5")
    return {"hub_t5_1_1": (hub, False), "resaved_t5_1_1": (str(root / "resaved_t5_1_1"), False),
            "original_t5": (original, True)}


def test_installed_transformers_resaves_t5_1_1_with_the_new_fields(hf_dirs):
    """The premise of the resaved case: with transformers >= 5.24 the re-saved config says tied, and only the
    new field and the stored head tell T5.1.1 apart."""
    directory, _ = hf_dirs["resaved_t5_1_1"]
    config = json.load(open(os.path.join(directory, "config.json")))
    state = hf_files.read_safetensors(os.path.join(directory, "model.safetensors"))
    assert "lm_head.weight" in state and hf.has_separate_head(state)
    if "scale_decoder_outputs" not in config:
        pytest.skip(f"transformers {transformers.__version__} writes the 4.x fields only")
    assert config["tie_word_embeddings"] is True and config["scale_decoder_outputs"] is False


@pytest.mark.parametrize("name", ["hub_t5_1_1", "resaved_t5_1_1", "original_t5"])
def test_import_decodes_as_transformers_and_export_reloads_identically(name, hf_dirs, batch, inputs, tmp_path):
    directory, tied = hf_dirs[name]
    cfg, params = hf_files.load_hf(directory, base=T5_1_1)
    assert cfg.logits_via_embedding is tied
    assert cfg.mlp_activations == (("relu",) if tied else ("gelu", "linear"))
    model, _ = _load_hf(directory)

    enc = inputs
    ours = decoding.greedy_decode(Transformer(cfg), params, {"encoder_input_tokens": enc},
                                  max_decode_length=DECODE_LEN)
    theirs = hf_greedy(model, enc, DECODE_LEN)
    equal = int(sum(np.array_equal(a, b) for a, b in zip(ours, theirs)))
    valid = batch[2] > 0  # HF computes padded query rows differently (never used)
    ext5_logits, hf_logits = np.asarray(_forward(cfg)(params, *batch)), _hf_logits(model, batch)
    diff = float(np.abs(ext5_logits - hf_logits)[valid].max())

    exported = tmp_path / "export"
    hf_files.export_hf(params, cfg, str(exported))
    reloaded, messages = _load_hf(exported)
    reload_logits = _hf_logits(reloaded, batch)
    print(f"\n[hf-versions] {name}: greedy decodes equal {equal}/{len(enc)}; max |ext5 - HF| logit {diff:.1e}; "
          f"export -> reload max logit diff {float(np.abs(reload_logits - hf_logits).max()):.1e}")
    assert len(np.unique(ours)) > 4  # real generations, not one repeated token
    assert equal == len(enc)
    assert np.abs(ext5_logits).max() > 1.0 and diff <= 1e-4
    np.testing.assert_array_equal(reload_logits, hf_logits)
    # Tying as the source: one stored tensor for a tied head, a separate one for T5.1.1.
    assert (reloaded.lm_head.weight.data_ptr() == reloaded.shared.weight.data_ptr()) is tied
    # No warnings, except transformers >= 5's own notice on every untied T5 (Hub T5.1.1 included): its
    # T5Config forces tie_word_embeddings on, then keeps a stored lm_head untied with that notice.
    unexpected = [m for m in messages if not (NOT_TIED_NOTICE in m and not tied)]
    assert not unexpected, unexpected
    # And back: the export imports to the same ext5 parameters.
    cfg2, params2 = hf_files.load_hf(str(exported), base=T5_1_1)
    assert cfg2 == cfg
    for k, v in flatten(params).items():
        np.testing.assert_array_equal(flatten(params2)[k], v, err_msg=k)


def test_exported_config_means_the_same_to_transformers_4_and_5(tmp_path):
    """The exported config.json read by each version's rule: 4.x ties and scales on tie_word_embeddings; >= 5.24
    scales on scale_decoder_outputs (and unties a separately stored head, which export writes only untied)."""
    for cfg in (T5_1_1, T5_1_0):
        config = hf.hf_config_dict(cfg)
        assert config["tie_word_embeddings"] is config["scale_decoder_outputs"] is cfg.logits_via_embedding
        hf_files.export_hf(_random_params(cfg, 3), cfg, str(tmp_path / str(cfg.logits_via_embedding)))
        state = hf_files.read_safetensors(str(tmp_path / str(cfg.logits_via_embedding) / "model.safetensors"))
        assert ("lm_head.weight" in state) is not cfg.logits_via_embedding


def test_resolve_head_decision_table():
    """Scaling from scale_decoder_outputs, else tie_word_embeddings (default true); tying from the weights."""
    rng = np.random.default_rng(0)
    emb, head = rng.standard_normal((5, 4)).astype(np.float32), rng.standard_normal((5, 4)).astype(np.float32)
    base = {"d_model": 4}
    cases = [  # (config flags, stored head, ext5 tied?, expected untied head)
        ({}, None, True, None),                                                  # original T5, Hub config
        ({"tie_word_embeddings": True}, emb, True, None),                       # .bin-style duplicate of the tie
        ({"tie_word_embeddings": False}, head, False, head),                    # Hub T5.1.1
        ({"tie_word_embeddings": True, "scale_decoder_outputs": False}, head, False, head),  # resaved by 5.24
        ({"tie_word_embeddings": False}, None, False, emb),                     # unscaled head = the embedding
        ({"tie_word_embeddings": True, "scale_decoder_outputs": True}, head, False, head * 0.5),  # scaled, untied
    ]
    for flags, stored, tied, want in cases:
        state = {"shared.weight": emb} if stored is None else {"shared.weight": emb, "lm_head.weight": stored}
        got_tied, resolved = hf.resolve_head({**base, **flags}, state)
        assert got_tied is tied, flags
        if want is None:
            assert "lm_head.weight" not in resolved, flags
        else:
            np.testing.assert_allclose(resolved["lm_head.weight"], want, rtol=1e-6, err_msg=str(flags))


def test_cli_import_of_the_resaved_model_decodes_as_transformers(hf_dirs, inputs, tmp_path, capsys):
    """The reported failure, end to end: `ext5 convert --from=hf` of a T5.1.1 re-saved by transformers 5.24 (was
    a tied, scaled model decoding 0/4 like HF), read back parameters-only."""
    directory, _ = hf_dirs["resaved_t5_1_1"]
    assert cli.main(["convert", "--from=hf", directory, f"--to={tmp_path / 'm'}"]) == 0
    assert "untied head" in capsys.readouterr().out
    cfg, _ = checkpoint.checkpoint_config(str(tmp_path / "m"))
    params, step = checkpoint.load_checkpoint_params(str(tmp_path / "m"), cfg)
    assert step == 0 and not cfg.logits_via_embedding
    cfg, enc = cfg.replace(dtype="float32"), inputs
    ours = decoding.greedy_decode(Transformer(cfg), params, {"encoder_input_tokens": enc},
                                  max_decode_length=DECODE_LEN)
    np.testing.assert_array_equal(ours, hf_greedy(_load_hf(directory)[0], enc, DECODE_LEN))
