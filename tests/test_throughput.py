"""Honest throughput: on ONE CPU device (asynchronous dispatch, as on TPU/GPU) the logged tokens/s agree
with the wall clock over the same steps. Before the fix the log read the clock before the interval's device
work had finished and showed ~38x the wall-clock rate."""
import json
import os
import subprocess
import sys
import textwrap

_WORKER = textwrap.dedent("""
    import json, sys, time
    import jax
    from ext5.model import configs
    from ext5.train import optimizer, synthetic, trainer
    assert jax.device_count() == 1

    class Timed(synthetic.SyntheticBatches):
        calls = []
        def __next__(self):
            self.calls.append(time.perf_counter())
            return super().__next__()

    cfg = configs.get_config("tiny", vocab_size=256, dtype="float32")
    src = Timed(input_len=128, target_len=64, vocab_size=256, host_batch_size=16)
    res = trainer.train(model=cfg, model_dir=sys.argv[1], train_steps=26, batch_size=16, batch_source=src,
                        learning_rate=optimizer.create_learning_rate_scheduler("constant", 0.01), log_period=5,
                        checkpoint=trainer.CheckpointConfig(period=10 ** 6, use_async=False), plot=False)
    print("RESULT " + json.dumps({"history": res.history, "calls": src.calls}))
""")


def test_logged_rate_matches_wall_clock_on_one_device(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", _WORKER, str(tmp_path / "run")], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))[7:])
    rows = {r["step"]: r for r in res["history"]}
    timed = [rows[s] for s in (10, 15, 20, 25)]  # steps 6..25: 20 steps, 16 x 192 tokens each
    logged_seconds = sum(5 / r["steps_per_sec"] for r in timed)
    logged_rate = 20 * 16 * 192 / logged_seconds
    assert abs(timed[0]["tokens_per_sec"] * 5 / timed[0]["steps_per_sec"] - 5 * 16 * 192) < 1e-3 * 5 * 16 * 192
    # Call i fetches the batch of step i + 1, after the log row of step i (i = 5, 25) is written.
    calls = res["calls"]
    wall_rate = 20 * 16 * 192 / (calls[25] - calls[5])
    assert 0.5 * wall_rate <= logged_rate <= 1.5 * wall_rate, (logged_rate, wall_rate)
