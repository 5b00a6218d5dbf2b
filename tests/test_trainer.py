"""Partitioned trainer: sharding, microbatching, resume, model-dir checks, multi-host and TF-free runs."""
import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from ext5.model import configs, losses
from ext5.train import checkpoints, optimizer, partitioning, step as step_lib, synthetic, trainer

CFG = configs.get_config("tiny", vocab_size=128, dtype="float32", num_heads=4, emb_dim=64, mlp_dim=128,
                         head_dim=16)
IN, TGT = 24, 12


def _src(bs=8, **kw):
    return synthetic.SyntheticBatches(input_len=IN, target_len=TGT, vocab_size=128, host_batch_size=bs, **kw)


def _run_steps(fns, state, src, n):
    losses = []
    for _ in range(n):
        batch = partitioning.make_global_batch(next(src), fns.mesh, src.host_batch)
        state, m = fns.train_step(state, batch)
        losses.append(float(m["loss"]))
    return state, losses


def _params_np(state):
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), state.params)


def _assert_trees_close(a, b, atol):
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, atol=atol, rtol=0, err_msg=jax.tree_util.keystr(path))


def _build(mesh, **kw):
    rules = partitioning.standard_logical_axis_rules(kw.pop("fsdp", False))
    tx = optimizer.adafactor(optimizer.create_learning_rate_scheduler("constant", 0.01))
    return step_lib.build(CFG, mesh, rules, tx, input_len=IN, target_len=TGT, **kw)


def test_eight_device_sharded_step_equals_single_device():
    assert jax.device_count() == 8
    one = _build(partitioning.make_mesh(1, jax.devices()[:1]))
    eight = _build(partitioning.make_mesh(2), fsdp=True)
    init = one.init(jax.random.PRNGKey(0))
    # The same initial weights, laid out over the 4x2 mesh.
    sharded = jax.device_put(jax.device_get(init), eight.state_shardings)
    spec = sharded.params["decoder"]["layers_0"]["mlp"]["wi_0"]["kernel"].sharding.spec
    assert spec == jax.sharding.PartitionSpec("data", "model"), spec  # fsdp embed->data, mlp->model
    s1, l1 = _run_steps(one, init, _src(), 3)
    s8, l8 = _run_steps(eight, sharded, _src(), 3)
    np.testing.assert_allclose(l1, l8, rtol=1e-5)
    _assert_trees_close(_params_np(s1), _params_np(s8), atol=2e-5)


def test_microbatching_equals_full_batch():
    mesh = partitioning.make_mesh(2)
    full = _build(mesh, loss_normalizing_factor="NUM_REAL_TARGET_TOKENS")
    micro = _build(mesh, loss_normalizing_factor="NUM_REAL_TARGET_TOKENS", num_microbatches=4)
    s0 = full.init(jax.random.PRNGKey(1))
    s0_copy = jax.tree.map(lambda x: x.copy(), s0)
    sf, lf = _run_steps(full, s0, _src(16), 2)
    sm, lm = _run_steps(micro, s0_copy, _src(16), 2)
    np.testing.assert_allclose(lf, lm, rtol=1e-5)
    _assert_trees_close(_params_np(sf), _params_np(sm), atol=2e-5)


def test_average_per_sequence_weights_sum_to_number_of_segments():
    b = _src(4).global_batch(0)
    weights, norm = losses.loss_weights_and_normalizer(b["decoder_loss_weights"], "AVERAGE_PER_SEQUENCE",
                                                       segment_ids=b["decoder_segment_ids"])
    nseg = sum(len(set(r[r > 0].tolist())) for r in b["decoder_segment_ids"])
    assert float(norm) == pytest.approx(nseg, rel=1e-5)
    with pytest.raises(ValueError, match="unknown loss_normalizing_factor"):
        losses.loss_weights_and_normalizer(b["decoder_loss_weights"], "PER_BANANA")


def _train(model_dir, steps, stop=None, cfg=CFG, **kw):
    return trainer.train(model=cfg, model_dir=str(model_dir), train_steps=steps, batch_size=8,
                         batch_source=_src(), partition=partitioning.PartitionConfig(num_partitions=2),
                         learning_rate=optimizer.create_learning_rate_scheduler("constant", 0.01),
                         checkpoint=trainer.CheckpointConfig(period=5, use_async=True), log_period=5,
                         stop_after_steps=stop, plot=False, **kw)


def test_save_restore_continue_equals_not_stopping(tmp_path):
    straight = _train(tmp_path / "a", 12)
    first = _train(tmp_path / "b", 12, stop=7)
    assert first.final_step == 7 and 7 in checkpoints.Checkpointer(str(tmp_path / "b")).all_steps()
    resumed = _train(tmp_path / "b", 12)
    assert resumed.start_step == 7 and resumed.final_step == 12
    for x, y in zip(jax.tree.leaves(_params_np(straight.state)), jax.tree.leaves(_params_np(resumed.state))):
        np.testing.assert_array_equal(x, y)
    rows = [json.loads(l) for l in open(tmp_path / "a" / "train" / "metrics.jsonl")]
    assert {"loss", "accuracy", "learning_rate", "tokens_per_sec", "tflops_per_device"} <= set(rows[-1])


def test_model_dir_holding_a_different_model_is_an_error(tmp_path):
    _train(tmp_path, 2)
    bigger = CFG.replace(mlp_dim=256)
    with pytest.raises(checkpoints.IncompatibleCheckpointError) as e:
        _train(tmp_path, 4, cfg=bigger)
    msg = str(e.value)
    assert "\n" not in msg and "holds a different model" in msg and "mlp" in msg and "fresh MODEL_DIR" in msg


def test_batch_not_divisible_by_data_parallel_size():
    with pytest.raises(partitioning.PartitioningError, match="not divisible by the data-parallel size 4"):
        partitioning.check_batch_size(6, partitioning.make_mesh(2))
    with pytest.raises(partitioning.PartitioningError, match="does not divide the 8 devices"):
        partitioning.make_mesh(3)


def test_learning_rate_schedules():
    rsqrt = optimizer.create_learning_rate_scheduler()
    assert float(rsqrt(0)) == pytest.approx(0.01) and float(rsqrt(40000)) == pytest.approx(0.005)
    assert float(optimizer.create_learning_rate_scheduler("constant", 1e-3)(12345)) == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="unknown learning-rate factor"):
        optimizer.create_learning_rate_scheduler("constant * bogus")


_WORKER = textwrap.dedent("""
    import json, os, sys
    pid, nproc, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    import jax
    from ext5.train import partitioning
    if nproc > 1:
        partitioning.maybe_initialize_distributed(coordinator_address="127.0.0.1:" + port,
                                                  process_count=nproc, process_index=pid)
    import numpy as np
    from ext5.model import configs, losses
    from ext5.train import optimizer, synthetic, trainer
    cfg = configs.get_config("tiny", vocab_size=128, dtype="float32", num_heads=4, emb_dim=64, mlp_dim=128,
                             head_dim=16)
    src = synthetic.SyntheticBatches(input_len=24, target_len=12, vocab_size=128, host_batch_size=8 // nproc,
                                     shard_index=jax.process_index(), num_shards=nproc)
    r = trainer.train(model=cfg, model_dir=out + "/model", train_steps=4, batch_size=8, batch_source=src,
                      partition=partitioning.PartitionConfig(num_partitions=2),
                      learning_rate=optimizer.create_learning_rate_scheduler("constant", 0.01),
                      checkpoint=trainer.CheckpointConfig(period=100, use_async=False), log_period=2, plot=False)
    wo = r.state.params["encoder"]["layers_0"]["mlp"]["wo"]["kernel"]
    total = float(jax.jit(lambda x: x.sum(), out_shardings=None)(wo))
    if jax.process_index() == 0:
        json.dump({"losses": [h["loss"] for h in r.history], "wo_sum": total,
                   "devices": jax.device_count(), "processes": jax.process_count()}, open(out + "/result.json", "w"))
""")


def _launch(tmp_path, nproc, devices_per_proc):
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_proc}",
               JAX_PLATFORMS="cpu")
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    out = tmp_path / f"p{nproc}"
    out.mkdir()
    procs = [subprocess.Popen([sys.executable, str(script), str(i), str(nproc), port, str(out)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(nproc)]
    logs = [p.communicate(timeout=240)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    return json.loads((out / "result.json").read_text())


def test_two_process_distributed_run_agrees_with_one_process(tmp_path):
    one = _launch(tmp_path, 1, 4)
    two = _launch(tmp_path, 2, 2)
    assert one["devices"] == two["devices"] == 4 and two["processes"] == 2
    np.testing.assert_allclose(one["losses"], two["losses"], rtol=1e-5)
    assert one["wo_sum"] == pytest.approx(two["wo_sum"], rel=1e-5, abs=1e-5)


def test_trainer_core_runs_without_tensorflow(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        sys.modules["tensorflow"] = None  # any import of TF now fails
        from ext5.model import configs, losses
        from ext5.train import optimizer, partitioning, synthetic, trainer
        cfg = configs.get_config("tiny", vocab_size=128, dtype="float32")
        src = synthetic.SyntheticBatches(input_len=16, target_len=8, vocab_size=128, host_batch_size=8)
        r = trainer.train(model=cfg, model_dir={str(tmp_path)!r}, train_steps=3, batch_size=8, batch_source=src,
                          partition=partitioning.PartitionConfig(num_partitions=2), log_period=1)
        assert r.final_step == 3
        assert not any(m == "tensorflow" or m.startswith("tensorflow.") for m, v in sys.modules.items() if v)
        print("OK")
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert p.returncode == 0 and "OK" in p.stdout, p.stdout[-2000:] + p.stderr[-3000:]
    assert (tmp_path / "loss_curve.png").exists()
