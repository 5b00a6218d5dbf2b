"""Numerical parity of ext5's T5.1.1 with Hugging Face `T5ForConditionalGeneration`, and the converters."""

from __future__ import annotations

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from _util import padded_batch, random_params  # noqa: E402

from ext5.interop import hf  # noqa: E402
from ext5.model.configs import get_config  # noqa: E402
from ext5.model.losses import compute_loss  # noqa: E402
from ext5.model.t5 import (Transformer, relative_position_bucket,  # noqa: E402
                           unscanned_to_scan)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# Unequal layer counts, heads*head_dim != emb_dim and a vocab that is not a power of two, so that a
# transposition or layer mix-up in the mapping cannot cancel out.
CFG = get_config("tiny", vocab_size=300, emb_dim=64, num_heads=3, head_dim=16, mlp_dim=96,
                 num_encoder_layers=2, num_decoder_layers=3, dtype="float32")


@pytest.fixture(scope="module")
def params():
    return random_params(CFG, 7, 0.2)


@pytest.fixture(scope="module")
def batch():
    return padded_batch(CFG.vocab_size)


def _hf_forward(model, enc, dec, tgt):
    with torch.no_grad():
        return model(input_ids=torch.tensor(enc, dtype=torch.long),
                     attention_mask=torch.tensor(enc > 0, dtype=torch.long),
                     decoder_input_ids=torch.tensor(dec, dtype=torch.long),
                     labels=torch.tensor(np.where(tgt > 0, tgt, -100), dtype=torch.long))


def test_bucket_formula_matches_hf():
    rel = np.arange(-300, 301)[None, :]
    for bidirectional in (True, False):
        for nb, md in ((32, 128), (16, 64)):
            ours = np.asarray(relative_position_bucket(jnp.asarray(rel), bidirectional=bidirectional,
                                                       num_buckets=nb, max_distance=md))
            theirs = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(
                torch.tensor(rel), bidirectional=bidirectional, num_buckets=nb, max_distance=md).numpy()
            np.testing.assert_array_equal(ours, theirs)


def test_logits_and_loss_match_hf(params, batch):
    enc, dec, tgt = batch
    model = hf.to_hf_model(params, CFG)
    assert model.lm_head.weight.data_ptr() != model.shared.weight.data_ptr()  # untied T5.1.1 head
    out = _hf_forward(model, enc, dec, tgt)
    ours = np.asarray(jax.jit(lambda p: Transformer(CFG).apply(
        {"params": p}, enc, dec, tgt, enable_dropout=False))(params))
    valid = tgt > 0  # HF computes padded query rows differently (they are never used)
    theirs = out.logits.numpy()
    assert np.abs(ours).max() > 1.0
    assert np.abs(ours - theirs)[valid].max() <= 1e-4
    loss, aux = compute_loss(jnp.asarray(ours), jnp.asarray(tgt), jnp.asarray(valid), z_loss=0.0,
                             loss_normalizing_factor="NUM_REAL_TARGET_TOKENS")
    assert abs(float(loss) - float(out.loss)) <= 1e-5
    assert float(aux["weight_sum"]) == valid.sum()

    # Scanned weights through the same converter give the same HF model.
    sd_scan = hf.to_hf_state_dict(unscanned_to_scan(params), CFG)
    sd = hf.to_hf_state_dict(params, CFG)
    assert sd.keys() == sd_scan.keys()
    for k in sd:
        np.testing.assert_array_equal(sd[k], sd_scan[k])


def test_state_dict_names_and_round_trip(params):
    sd = hf.to_hf_state_dict(params, CFG)
    model = transformers.T5ForConditionalGeneration(transformers.T5Config(**hf.to_hf_config(CFG)))
    expected = set(model.state_dict())
    assert set(sd) == expected, (set(sd) ^ expected)
    for name, tensor in model.state_dict().items():
        assert tuple(tensor.shape) == sd[name].shape, name
    assert "decoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight" not in sd
    np.testing.assert_array_equal(sd["encoder.block.1.layer.0.SelfAttention.q.weight"],
                                  np.asarray(params["encoder"]["layers_1"]["attention"]["query"]["kernel"]).T)
    np.testing.assert_array_equal(sd["lm_head.weight"],
                                  np.asarray(params["decoder"]["logits_dense"]["kernel"]).T)

    back = hf.from_hf_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, CFG)
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(params)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(a, np.asarray(b)), back, params)
    assert all(x.dtype == np.float32 for x in jax.tree_util.tree_leaves(back))
    with pytest.raises(KeyError):
        hf.from_hf_state_dict({k: v for k, v in sd.items() if "lm_head" not in k}, CFG)


def test_save_pretrained_round_trip(params, batch, tmp_path):
    enc, dec, tgt = batch
    model = hf.to_hf_model(params, CFG)
    model.save_pretrained(tmp_path)
    loaded = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path).eval()
    np.testing.assert_array_equal(loaded.lm_head.weight.detach().numpy(),
                                  model.lm_head.weight.detach().numpy())
    a = _hf_forward(model, enc, dec, tgt).logits.numpy()
    b = _hf_forward(loaded, enc, dec, tgt).logits.numpy()
    np.testing.assert_allclose(a, b, atol=1e-6)
