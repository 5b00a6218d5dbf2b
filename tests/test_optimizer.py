"""ext5's t5x Adafactor: optax's numbers on plain trees, per-layer statistics for scanned layers (scanned
and unscanned models take identical updates), and one step counter (TrainState.step) for the schedule,
the decay and the logs, also after resuming from a checkpoint written at step N."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ext5.model import configs
from ext5.model.t5 import scan_to_unscanned, unscanned_to_scan
from ext5.train import checkpoints, optimizer, partitioning, step as step_lib, synthetic, trainer

# Dims >= 128 so that matrices are factored; float32 so the comparisons are exact up to rounding.
CFG = configs.get_config("tiny", vocab_size=128, dtype="float32", num_heads=2, head_dim=64, emb_dim=128,
                         mlp_dim=256, num_encoder_layers=2, num_decoder_layers=2)
IN, TGT, B = 16, 8, 4


def _tree(seed):
    rng = np.random.RandomState(seed)
    return {"a": jnp.asarray(rng.randn(256, 130), jnp.float32), "b": jnp.asarray(rng.randn(64), jnp.float32),
            "c": jnp.asarray(rng.randn(200, 100), jnp.float32), "d": jnp.asarray(rng.randn(130, 300), jnp.float32)}


def test_plain_tree_matches_optax_adafactor():
    sched = optimizer.create_learning_rate_scheduler("constant * rsqrt_decay", 1.0, warmup_steps=2)
    ours = optimizer.adafactor(sched)
    ref = optax.adafactor(learning_rate=sched, min_dim_size_to_factor=128, decay_rate=0.8, clipping_threshold=1.0,
                          multiply_by_parameter_scale=True, momentum=None, eps=1e-30, factored=True)
    params = _tree(0)
    s_ours, s_ref = ours.init(params), ref.init(params)
    for t in range(3):
        grads = jax.tree.map(lambda x: x * (t + 1.5), _tree(10 + t))
        u_ours, s_ours = ours.update(grads, s_ours, params, step=jnp.int32(t))
        u_ref, s_ref = ref.update(grads, s_ref, params)
        for x, y in zip(jax.tree.leaves(u_ours), jax.tree.leaves(u_ref)):
            np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-9)
        params = optax.apply_updates(params, u_ours)
    # No optimizer step count: the step is TrainState.step.
    assert not any(jnp.issubdtype(x.dtype, jnp.integer) for x in jax.tree.leaves(s_ours))
    with pytest.raises(ValueError, match="step=TrainState.step"):
        ours.update(grads, s_ours, params)


def _steps(cfg, n):
    mesh = partitioning.make_mesh(1, jax.devices()[:1])
    tx = optimizer.adafactor(optimizer.create_learning_rate_scheduler("constant", 0.05))
    return step_lib.build(cfg, mesh, partitioning.standard_logical_axis_rules(), tx, input_len=IN, target_len=TGT)


def test_scanned_and_unscanned_models_take_identical_updates():
    plain, scanned = _steps(CFG, 3), _steps(CFG.replace(scan_layers=True), 3)
    s_plain = plain.init(jax.random.PRNGKey(0))
    s_scan = step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=unscanned_to_scan(jax.device_get(s_plain.params)),
                                 opt_state=scanned.init(jax.random.PRNGKey(0)).opt_state)
    src = synthetic.SyntheticBatches(input_len=IN, target_len=TGT, vocab_size=128, host_batch_size=B)
    p0 = jax.device_get(s_plain.params)
    for _ in range(3):
        batch = {k: jnp.asarray(v) for k, v in next(src).items()}
        s_plain, m_plain = plain.train_step(s_plain, batch)
        s_scan, m_scan = scanned.train_step(s_scan, batch)
        np.testing.assert_allclose(float(m_plain["loss"]), float(m_scan["loss"]), rtol=1e-5)
    got = jax.device_get(scan_to_unscanned(s_scan.params))
    want = jax.device_get(s_plain.params)
    for (path, x), y, x0 in zip(jax.tree_util.tree_leaves_with_path(want), jax.tree.leaves(got), jax.tree.leaves(p0)):
        # Compare the updates (not just the params) so a small error cannot hide behind a large weight.
        np.testing.assert_allclose(y - x0, x - x0, rtol=2e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path))
    # optax.adafactor averages over the stacked axis: it would not pass this test (the test can fail).
    tx = optax.adafactor(0.05, min_dim_size_to_factor=128)
    # Layers whose weights differ in scale: per-layer parameter-scale RMS differ from the stack's.
    layer_scale = lambda x: x * (10.0 ** jnp.arange(x.shape[0], dtype=x.dtype)).reshape((-1,) + (1,) * (x.ndim - 1))
    params = unscanned_to_scan(p0)
    params = {**params, "encoder": {**params["encoder"],
                                    "layers": jax.tree.map(layer_scale, params["encoder"]["layers"])}}
    grads = jax.tree.map(lambda x: jnp.cos(x * 7.0), params)
    ours = optimizer.adafactor(0.05)
    u_optax, _ = tx.update(grads, tx.init(params), params)
    u_ours, _ = ours.update(grads, ours.init(params), params, step=jnp.int32(0))
    wi = ("encoder", "layers", "mlp", "wi_0", "kernel")
    pick = lambda t: t[wi[0]][wi[1]][wi[2]][wi[3]][wi[4]]
    assert not np.allclose(pick(u_optax), pick(u_ours), rtol=1e-3)


def test_resume_from_a_checkpoint_at_step_n_continues_the_schedule(tmp_path):
    """A checkpoint written at step N with a fresh optimizer state (as the converter writes one) trains
    step N at lr(N): the update of a 1-D (unfactored, clipped to RMS 1) parameter is lr(N)/lr(0) times
    the one a step-0 state takes from the same weights and batch."""
    n = 4000
    sched = optimizer.create_learning_rate_scheduler("constant * rsqrt_decay", 1.0, warmup_steps=100)
    cfg = CFG.replace(num_encoder_layers=1, num_decoder_layers=1)
    mesh = partitioning.make_mesh(1, jax.devices()[:1])
    fns = step_lib.build(cfg, mesh, partitioning.standard_logical_axis_rules(), optimizer.adafactor(sched),
                         input_len=IN, target_len=TGT)
    fresh = fns.init(jax.random.PRNGKey(0))
    p0 = jax.device_get(fresh.params)
    at_n = fresh.replace(step=jnp.asarray(n, jnp.int32))
    ck = checkpoints.Checkpointer(str(tmp_path / "imported"), use_async=False)
    ck.save(n, at_n.as_dict(), None, checkpoints.model_meta(cfg, fns.param_shapes()), force=True)
    ck.close()

    def run(model_dir, init_path):
        src = synthetic.SyntheticBatches(input_len=IN, target_len=TGT, vocab_size=128, host_batch_size=8)
        return trainer.train(model=cfg, model_dir=str(model_dir), train_steps=10 ** 6, batch_source=src,
                             batch_size=8, learning_rate=sched, initial_checkpoint_path=init_path,
                             stop_after_steps=1, log_period=1, plot=False,
                             checkpoint=trainer.CheckpointConfig(period=10 ** 6, use_async=False))

    resumed = run(tmp_path / "resumed", str(tmp_path / "imported"))
    assert resumed.start_step == n and resumed.final_step == n + 1
    assert resumed.history[0]["learning_rate"] == pytest.approx(float(sched(n)), rel=1e-6)
    start = fns.init(jax.random.PRNGKey(0))  # same weights, step 0
    from_zero, _ = fns.train_step(start, {k: jnp.asarray(v) for k, v in synthetic.SyntheticBatches(
        input_len=IN, target_len=TGT, vocab_size=128, host_batch_size=8).global_batch(0).items()})
    scale = lambda s: np.asarray(jax.device_get(s.params["encoder"]["encoder_norm"]["scale"]))
    ratio = (scale(resumed.state) - p0["encoder"]["encoder_norm"]["scale"]) / (
        scale(from_zero) - p0["encoder"]["encoder_norm"]["scale"])
    np.testing.assert_allclose(ratio, float(sched(n) / sched(0)), rtol=1e-3)
