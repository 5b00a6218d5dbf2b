"""Model tests: packing invariance, scan/remat equivalence, dtypes, dropout, cached decoding, losses,
logical partitioning, FLOP counts."""

from __future__ import annotations

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from _util import random_params  # noqa: E402
from flax import linen as nn  # noqa: E402
from jax.sharding import PartitionSpec  # noqa: E402

from ext5.model import configs  # noqa: E402
from ext5.model.decoding import greedy_decode  # noqa: E402
from ext5.model.flops import forward_flops, peak_flops_per_device, train_flops_per_step  # noqa: E402
from ext5.model.losses import compute_loss as _compute_loss, loss_weights_and_normalizer  # noqa: E402
from ext5.model.t5 import Transformer, init_params, scan_to_unscanned, unscanned_to_scan  # noqa: E402

CFG = configs.get_config("tiny", vocab_size=64, emb_dim=32, num_heads=2, head_dim=8, mlp_dim=48,
                         num_encoder_layers=2, num_decoder_layers=2, dtype="float32")
compute_loss = jax.jit(_compute_loss, static_argnames=("z_loss", "loss_normalizing_factor"))
AXIS_NAMES = {"vocab", "embed", "mlp", "heads", "kv", "joined_kv", "relpos_buckets", "layers"}


@pytest.fixture(scope="module")
def params():
    return random_params(CFG, 1, 0.1)


def _forward(cfg, params, batch, rngs=None, enable_dropout=False):
    return Transformer(cfg).apply(
        {"params": params}, batch["encoder_input_tokens"], batch["decoder_input_tokens"],
        batch.get("decoder_target_tokens"), encoder_segment_ids=batch.get("encoder_segment_ids"),
        decoder_segment_ids=batch.get("decoder_segment_ids"),
        encoder_positions=batch.get("encoder_positions"),
        decoder_positions=batch.get("decoder_positions"), enable_dropout=enable_dropout, rngs=rngs)


# Jitted: eager flax op-by-op dispatch is what makes CPU tests slow.
_forward_jit = jax.jit(_forward, static_argnames=("cfg", "enable_dropout"))


def _apply(cfg, params, batch, rngs=None, enable_dropout=False):
    return _forward_jit(cfg, params, dict(batch), rngs, enable_dropout=enable_dropout)


def _shift(t):
    return np.concatenate([[0], t[:-1]])


def _example(rng, n_in, n_tgt):
    return rng.randint(2, CFG.vocab_size, n_in), rng.randint(2, CFG.vocab_size, n_tgt)


def _pack(examples, in_len, tgt_len):
    """Pack examples into one row in seqio's EncDecFeatureConverter format."""
    row = {k: np.zeros((1, n), np.int32) for k, n in (
        ("encoder_input_tokens", in_len), ("encoder_segment_ids", in_len), ("encoder_positions", in_len),
        ("decoder_target_tokens", tgt_len), ("decoder_input_tokens", tgt_len),
        ("decoder_loss_weights", tgt_len), ("decoder_segment_ids", tgt_len),
        ("decoder_positions", tgt_len))}
    i = j = 0
    for seg, (inp, tgt) in enumerate(examples, start=1):
        row["encoder_input_tokens"][0, i:i + len(inp)] = inp
        row["encoder_segment_ids"][0, i:i + len(inp)] = seg
        row["encoder_positions"][0, i:i + len(inp)] = np.arange(len(inp))
        row["decoder_target_tokens"][0, j:j + len(tgt)] = tgt
        row["decoder_input_tokens"][0, j:j + len(tgt)] = _shift(tgt)
        row["decoder_loss_weights"][0, j:j + len(tgt)] = 1
        row["decoder_segment_ids"][0, j:j + len(tgt)] = seg
        row["decoder_positions"][0, j:j + len(tgt)] = np.arange(len(tgt))
        i, j = i + len(inp), j + len(tgt)
    return {k: jnp.asarray(v) for k, v in row.items()}


def _unpacked(examples, in_len, tgt_len):
    enc = np.zeros((len(examples), in_len), np.int32)
    tgt = np.zeros((len(examples), tgt_len), np.int32)
    dec = np.zeros_like(tgt)
    for r, (inp, t) in enumerate(examples):
        enc[r, :len(inp)], tgt[r, :len(t)], dec[r, :len(t)] = inp, t, _shift(t)
    return {"encoder_input_tokens": jnp.asarray(enc), "decoder_target_tokens": jnp.asarray(tgt),
            "decoder_input_tokens": jnp.asarray(dec),
            "decoder_loss_weights": jnp.asarray((tgt > 0).astype(np.int32))}


@pytest.fixture(scope="module")
def packed_case():
    rng = np.random.RandomState(0)
    # Second example long enough (> 8 / 16 positions) to reach the logarithmic relative-position buckets.
    examples = [_example(rng, 7, 5), _example(rng, 20, 18)]
    return examples, _pack(examples, 32, 28)


def test_packed_row_equals_examples_alone(params, packed_case):
    examples, packed = packed_case
    logits = np.asarray(_apply(CFG, params, packed))
    alone = np.asarray(_apply(CFG, params, _unpacked(examples, 24, 20)))
    start = 0
    for r, (_, tgt) in enumerate(examples):
        np.testing.assert_allclose(logits[0, start:start + len(tgt)], alone[r, :len(tgt)],
                                   atol=2e-5, rtol=1e-5)
        start += len(tgt)
    # Sanity: without segment ids the second example sees the first one, so the logits change.
    leaky = dict(packed, encoder_segment_ids=None, decoder_segment_ids=None)
    leaked = np.asarray(_apply(CFG, params, leaky))
    assert np.abs(leaked[0, 5:23] - logits[0, 5:23]).max() > 1e-3


def test_scan_matches_unscanned(params, packed_case):
    _, packed = packed_case
    scanned = unscanned_to_scan(params)
    assert "layers" in scanned["encoder"] and "layers_0" not in scanned["encoder"]
    assert scanned["decoder"]["layers"]["mlp"]["wi_0"]["kernel"].shape == (2, 32, 48)
    back = scan_to_unscanned(scanned)
    jax.tree_util.tree_map(np.testing.assert_array_equal, back, params)
    ref = _apply(CFG, params, packed)
    out = _apply(CFG.replace(scan_layers=True), scanned, packed)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5, rtol=1e-5)
    # A scanned init has the same tree as the converted one.
    fresh = jax.eval_shape(lambda: nn.meta.unbox(init_params(CFG.replace(scan_layers=True),
                                                             jax.random.PRNGKey(0))))
    assert jax.tree_util.tree_structure(fresh) == jax.tree_util.tree_structure(scanned)


def _loss_fn(cfg, p, packed):
    logits = _forward(cfg, p, packed)
    return compute_loss(logits, packed["decoder_target_tokens"], packed["decoder_loss_weights"])[0]


@pytest.fixture(scope="module")
def plain_grads(params, packed_case):
    return jax.jit(jax.value_and_grad(lambda p: _loss_fn(CFG, p, packed_case[1])))(params)


@pytest.mark.parametrize("policy,scan", [("full", False), ("minimal", False), ("full", True)])
def test_remat_matches_plain(params, packed_case, plain_grads, policy, scan):
    _, packed = packed_case
    ref_loss, ref_grads = plain_grads
    cfg = CFG.replace(remat_policy=policy, scan_layers=scan)
    p = unscanned_to_scan(params) if scan else params
    loss, grads = jax.jit(jax.value_and_grad(lambda p: _loss_fn(cfg, p, packed)))(p)
    if scan:
        grads = scan_to_unscanned(grads)
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4),
                           grads, ref_grads)


def test_bfloat16_is_finite_and_close(params, packed_case):
    _, packed = packed_case
    ref = np.asarray(_apply(CFG, params, packed))
    out = _apply(CFG.replace(dtype="bfloat16"), params, packed)
    assert out.dtype == jnp.float32  # logits stay float32
    out = np.asarray(out)
    assert np.isfinite(out).all()
    weights = np.asarray(packed["decoder_loss_weights"]).astype(bool)
    err = np.abs(out - ref)[weights].max()
    assert err < 0.1 * np.abs(ref[weights]).max(), err
    # Parameters stay float32 whatever the activation dtype.
    shapes = jax.eval_shape(lambda: init_params(CFG.replace(dtype="bfloat16"), jax.random.PRNGKey(0)))
    assert {x.dtype for x in jax.tree_util.tree_leaves(nn.meta.unbox(shapes))} == {jnp.dtype("float32")}


def test_dropout_only_when_enabled(params, packed_case):
    _, packed = packed_case
    cfg = CFG.replace(dropout_rate=0.3)
    ref = np.asarray(_apply(CFG, params, packed))
    off = np.asarray(_apply(cfg, params, packed, enable_dropout=False))
    np.testing.assert_array_equal(off, ref)
    rngs = lambda seed: {"dropout": jax.random.PRNGKey(seed)}
    on1 = np.asarray(_apply(cfg, params, packed, enable_dropout=True, rngs=rngs(1)))
    on1b = np.asarray(_apply(cfg, params, packed, enable_dropout=True, rngs=rngs(1)))
    on2 = np.asarray(_apply(cfg, params, packed, enable_dropout=True, rngs=rngs(2)))
    np.testing.assert_array_equal(on1, on1b)
    assert np.abs(on1 - ref).max() > 1e-3 and np.abs(on1 - on2).max() > 1e-3
    # Rate 0 needs no rng even with dropout enabled.
    np.testing.assert_array_equal(np.asarray(_apply(CFG, params, packed, enable_dropout=True)), ref)


def _uncached_greedy(cfg, params, enc, length, eos_id):
    out = np.zeros((enc.shape[0], length), np.int32)
    done = np.zeros(enc.shape[0], bool)
    for t in range(length):
        dec = np.concatenate([np.zeros((enc.shape[0], 1), np.int32), out[:, :-1]], axis=1)
        logits = _apply(cfg, params, {"encoder_input_tokens": enc, "decoder_input_tokens": jnp.asarray(dec)})
        nxt = np.asarray(jnp.argmax(logits[:, t], axis=-1))
        nxt = np.where(done, 0, nxt)
        out[:, t] = nxt
        done |= nxt == eos_id
    return out


@pytest.mark.parametrize("scan", [False, True])
def test_cached_greedy_matches_uncached(params, scan):
    rng = np.random.RandomState(3)
    enc = rng.randint(2, CFG.vocab_size, (3, 12)).astype(np.int32)
    enc[1, 7:] = 0
    length = 20  # > 16: exercises the logarithmic causal buckets
    free = _uncached_greedy(CFG, params, jnp.asarray(enc), length, eos_id=-1)
    eos = int(free[0, 4])  # an id row 0 emits early, so EOS handling is exercised
    ref = _uncached_greedy(CFG, params, jnp.asarray(enc), length, eos_id=eos)
    cfg = CFG.replace(scan_layers=scan, remat_policy="full" if scan else "none")
    p = unscanned_to_scan(params) if scan else params
    out = greedy_decode(Transformer(cfg), {"params": p}, {"encoder_input_tokens": enc},
                        max_decode_length=length, eos_id=eos)
    assert out.dtype == np.int32 and out.shape == (3, length)
    np.testing.assert_array_equal(out, ref)
    first = int(np.argmax(ref[0] == eos))
    assert (ref[0, first + 1:] == 0).all() and first <= 4


def test_loss_normalisation_hand_computed():
    # Two packed sequences in row 0 (2 tokens + 1 token), one sequence of 3 tokens in row 1.
    logits = jnp.log(jnp.array([
        [[0.7, 0.1, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25], [0.1, 0.6, 0.2, 0.1], [0.4, 0.3, 0.2, 0.1]],
        [[0.5, 0.5, 0.0 + 1e-30, 0.0 + 1e-30], [0.1, 0.2, 0.3, 0.4], [0.2, 0.2, 0.2, 0.4],
         [0.3, 0.3, 0.2, 0.2]]]))
    targets = jnp.array([[0, 3, 1, 0], [1, 3, 3, 0]])
    weights = jnp.array([[1, 1, 1, 0], [1, 1, 1, 0]], jnp.float32)
    segs = jnp.array([[1, 1, 2, 0], [1, 1, 1, 0]])
    ce = -np.log(np.array([[0.7, 0.25, 0.6], [0.5, 0.4, 0.4]]))  # probabilities sum to 1: log_z = 0
    total = ce.sum()
    loss, aux = compute_loss(logits, targets, weights, z_loss=0.0)
    np.testing.assert_allclose(float(loss), total, rtol=1e-5)
    np.testing.assert_allclose(float(aux["loss_sum"]), total, rtol=1e-5)
    assert float(aux["weight_sum"]) == 6.0
    # argmax hits: row0 pos0 (0), pos1 no (tie -> 0), pos2 (1); row1 pos0 tie -> 0 != 1, pos1 (3), pos2 (3)
    assert float(aux["correct_sum"]) == 4.0
    loss, _ = compute_loss(logits, targets, weights, z_loss=0.0,
                           loss_normalizing_factor="NUM_REAL_TARGET_TOKENS")
    np.testing.assert_allclose(float(loss), total / 6, rtol=1e-5)
    loss, _ = compute_loss(logits, targets, weights, z_loss=0.0, loss_normalizing_factor=2.0)
    np.testing.assert_allclose(float(loss), total / 2, rtol=1e-5)
    loss, aux = compute_loss(logits, targets, weights, z_loss=0.0,
                             loss_normalizing_factor="AVERAGE_PER_SEQUENCE", segment_ids=segs)
    per_seq = [ce[0, :2].mean(), ce[0, 2], ce[1].mean()]
    np.testing.assert_allclose(float(loss), np.mean(per_seq), rtol=1e-5)
    # The normaliser is the number of sequences (the step no longer logs a separate count).
    assert float(loss_weights_and_normalizer(weights, "AVERAGE_PER_SEQUENCE", segment_ids=segs)[1]) == 3.0
    # Without segment ids each row is one sequence.
    loss, aux = compute_loss(logits, targets, weights, z_loss=0.0,
                             loss_normalizing_factor="AVERAGE_PER_SEQUENCE")
    np.testing.assert_allclose(float(loss), np.mean([ce[0].mean(), ce[1].mean()]), rtol=1e-5)
    assert float(loss_weights_and_normalizer(weights, "AVERAGE_PER_SEQUENCE")[1]) == 2.0
    # z-loss: logits shifted by c give log_z = c; z term = z * c^2 per weighted token.
    loss, aux = compute_loss(logits + 2.0, targets, weights, z_loss=0.5)
    np.testing.assert_allclose(float(aux["z_loss_sum"]), 6 * 0.5 * 4.0, rtol=1e-5)
    np.testing.assert_allclose(float(loss), total + 12.0, rtol=1e-5)
    with pytest.raises(ValueError):
        compute_loss(logits, targets, weights, loss_normalizing_factor="PER_BANANA")


def test_every_param_has_logical_axes():
    for cfg in (CFG, CFG.replace(scan_layers=True)):
        boxed = jax.eval_shape(lambda cfg=cfg: init_params(cfg, jax.random.PRNGKey(0)))
        specs = nn.get_partition_spec(boxed)
        shapes = nn.meta.unbox(boxed)
        flat_specs = jax.tree_util.tree_leaves(specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
        flat_shapes = jax.tree_util.tree_leaves(shapes)
        assert len(flat_specs) == len(flat_shapes) > 0
        for spec, shape in zip(flat_specs, flat_shapes):
            assert isinstance(spec, PartitionSpec) and len(spec) == len(shape.shape), (spec, shape)
            assert set(spec) <= AXIS_NAMES, spec
            if cfg.scan_layers and len(spec) and spec[0] == "layers":
                assert shape.shape[0] == 2
    specs = nn.get_partition_spec(jax.eval_shape(lambda: init_params(CFG, jax.random.PRNGKey(0))))
    assert specs["token_embedder"]["embedding"] == PartitionSpec("vocab", "embed")
    assert specs["encoder"]["layers_0"]["attention"]["query"]["kernel"] == PartitionSpec("embed", "joined_kv")
    assert specs["decoder"]["layers_1"]["self_attention"]["out"]["kernel"] == PartitionSpec("joined_kv", "embed")
    assert specs["decoder"]["layers_0"]["mlp"]["wo"]["kernel"] == PartitionSpec("mlp", "embed")
    assert specs["decoder"]["relpos_bias"]["rel_embedding"] == PartitionSpec("heads", "relpos_buckets")
    assert specs["decoder"]["logits_dense"]["kernel"] == PartitionSpec("embed", "vocab")


def test_init_statistics():
    cfg = CFG.replace(emb_dim=256, num_heads=4, head_dim=64, mlp_dim=512, vocab_size=512)
    p = nn.meta.unbox(init_params(cfg, jax.random.PRNGKey(0)))
    att = p["encoder"]["layers_0"]["attention"]
    np.testing.assert_allclose(np.std(p["token_embedder"]["embedding"]), 1.0, rtol=0.05)
    # fan_in = emb_dim for q/k/v; the query additionally carries 1/sqrt(head_dim).
    np.testing.assert_allclose(np.std(att["key"]["kernel"]), 256 ** -0.5, rtol=0.05)
    np.testing.assert_allclose(np.std(att["query"]["kernel"]), (256 * 64) ** -0.5, rtol=0.05)
    np.testing.assert_allclose(np.std(p["encoder"]["layers_0"]["mlp"]["wo"]["kernel"]), 512 ** -0.5,
                               rtol=0.05)
    np.testing.assert_array_equal(p["encoder"]["encoder_norm"]["scale"], np.ones(256))


def test_flops_match_xla_cost_analysis():
    cfg = CFG.replace(vocab_size=1024, emb_dim=256, num_heads=4, head_dim=64, mlp_dim=1024)
    p = jax.eval_shape(lambda: nn.meta.unbox(init_params(cfg, jax.random.PRNGKey(0))))
    fwd = jax.jit(lambda p, e, d: Transformer(cfg).apply({"params": p}, e, d, d, enable_dropout=False))
    batch, in_len, tgt_len = 2, 64, 32
    compiled = fwd.lower(p, jax.ShapeDtypeStruct((batch, in_len), jnp.int32),
                         jax.ShapeDtypeStruct((batch, tgt_len), jnp.int32)).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    if not cost or "flops" not in cost:
        pytest.skip("cost_analysis unavailable on this backend")
    ours = forward_flops(cfg, batch, in_len, tgt_len)
    # XLA also counts elementwise work (softmax, gelu, norms), so it may only be slightly above.
    assert 0.995 <= cost["flops"] / ours <= 1.02, (cost["flops"], ours)
    assert train_flops_per_step(cfg, batch, in_len, tgt_len) == 3 * ours


def test_flops_hand_count_and_peaks():
    cfg = configs.T5Config(vocab_size=10, emb_dim=4, num_heads=1, head_dim=2, mlp_dim=3,
                           num_encoder_layers=1, num_decoder_layers=1)
    b, i, t = 1, 5, 2
    enc = 2 * (4 * 2 * (2 * i + 2 * i)) + 4 * i * i * 2 + 2 * i * 4 * 3 * 3
    dec = (2 * 4 * 2 * (4 * t) + 4 * t * t * 2) + (2 * 4 * 2 * (2 * t + 2 * i) + 4 * t * i * 2) \
        + 2 * t * 4 * 3 * 3
    assert forward_flops(cfg, b, i, t) == enc + dec + 2 * t * 4 * 10
    assert peak_flops_per_device("TPU v4") == 275e12
    assert peak_flops_per_device("TPU v5 lite") == 197e12
    assert peak_flops_per_device("TPU v5p") == 459e12
    assert peak_flops_per_device("TPU v6 lite") == 918e12
    assert peak_flops_per_device("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops_per_device("NVIDIA A100-SXM4-40GB") == 312e12
    assert peak_flops_per_device("cpu") is None


def test_configs():
    assert configs.get_config("base").emb_dim == 768
    xxl = configs.get_config("xxl")
    assert (xxl.emb_dim, xxl.num_heads, xxl.num_encoder_layers, xxl.mlp_dim) == (4096, 64, 24, 10240)
    assert configs.get_config("small", dropout_rate=0.1).dropout_rate == 0.1
    with pytest.raises(ValueError, match="tiny"):
        configs.get_config("gigantic")
    with pytest.raises(ValueError):
        configs.T5Config(remat_policy="sometimes")
    assert hash(configs.T5Config(mlp_activations=["gelu", "linear"])) == hash(configs.T5Config())


def test_forward_under_mesh_and_logical_rules(params, packed_case):
    """Activation constraints resolve under a mesh + t5x-style rules and do not change the result."""
    from jax.sharding import Mesh

    _, packed = packed_case
    rules = [("batch", "data"), ("length", None), ("vocab", "model"), ("embed", None), ("mlp", "model"),
             ("heads", "model"), ("kv", None), ("joined_kv", "model"), ("relpos_buckets", None),
             ("layers", None)]
    mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "model"))
    cfg = CFG.replace(scan_layers=True)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        shardings = nn.logical_to_mesh_sharding(
            nn.get_partition_spec(jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0)))),
            mesh, rules)
        p = jax.device_put(unscanned_to_scan(params), shardings)
        out = jax.jit(lambda p: _forward(cfg, p, packed))(p)
    np.testing.assert_allclose(np.asarray(out), np.asarray(_apply(CFG, params, packed)), atol=1e-5)
