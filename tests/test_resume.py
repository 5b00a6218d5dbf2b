"""Resumable training: SIGKILL/SIGTERM, unreadable checkpoints, and the data position.

The SIGKILL test runs real training subprocesses on the embedded `local_default` mixture (tiny model, CPU,
2 devices): an uninterrupted run, a run killed with SIGKILL at a random step, and its resume; the resumed
run must end with bit-identical parameters. The subprocesses share a persistent compilation cache, so only
the first one compiles.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from ext5.model import configs
from ext5.train import checkpoints, optimizer, partitioning, synthetic, trainer

STEPS = 12

_WORKER = textwrap.dedent("""
    import sys
    import numpy as np
    import jax
    import ext5.tasks  # registers local_default
    from ext5.data.vocab import get_vocabulary, padded_vocab_size
    from ext5.model import configs
    from ext5.train import optimizer, partitioning, trainer
    model_dir, steps = sys.argv[1], int(sys.argv[2])
    cfg = configs.get_config("tiny", vocab_size=padded_vocab_size(get_vocabulary("local")), emb_dim=32,
                             num_heads=2, head_dim=8, mlp_dim=48, num_encoder_layers=2, num_decoder_layers=2,
                             dtype="float32")
    data = trainer.DatasetConfig("local_default", {"inputs": 32, "targets": 8}, batch_size=8, seed=3,
                                 pack_window=64)
    r = trainer.train(model=cfg, model_dir=model_dir, train_steps=steps, batch_size=8, train_dataset=data,
                      partition=partitioning.PartitionConfig(num_partitions=1),
                      learning_rate=optimizer.create_learning_rate_scheduler("constant", 0.01),
                      checkpoint=trainer.CheckpointConfig(period=2, use_async=True), log_period=1, plot=False)
    leaves = jax.tree_util.tree_leaves_with_path(r.state.params)
    np.savez(model_dir + "/final_params.npz",
             **{jax.tree_util.keystr(p): np.asarray(jax.device_get(x)) for p, x in leaves})
    print("FINAL", r.start_step, r.final_step, flush=True)
""")


def _env(cache_dir) -> dict:
    return dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
                XLA_FLAGS="--xla_force_host_platform_device_count=2 --xla_backend_optimization_level=0",
                JAX_COMPILATION_CACHE_DIR=str(cache_dir), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


def _has_checkpoint(model_dir) -> bool:
    """A finished orbax checkpoint exists (async saves may still be in their tmp directories)."""
    return any(re.fullmatch(r"checkpoint_\d+", n) for n in os.listdir(model_dir))


def _worker(tmp_path, model_dir, *, kill_at: int | None = None) -> tuple[int, str]:
    """Run the training worker; with kill_at, SIGKILL it once it has logged step >= `kill_at` and some
    checkpoint is complete (so the resume has something to resume from)."""
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    p = subprocess.Popen([sys.executable, str(script), str(model_dir), str(STEPS)], env=_env(tmp_path / "jit"),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    deadline = time.time() + 240
    for line in p.stdout:
        lines.append(line)
        m = re.match(r"step\s+(\d+)/", line)
        if kill_at is not None and m and int(m.group(1)) >= kill_at and _has_checkpoint(model_dir):
            p.kill()  # SIGKILL: no handler runs, async checkpoint writes are cut wherever they are
            break
        if time.time() > deadline:
            p.kill()
            break
    rest, _ = p.communicate(timeout=60)
    return p.returncode, "".join(lines) + (rest or "")


def _params(model_dir) -> dict[str, np.ndarray]:
    with np.load(os.path.join(model_dir, "final_params.npz"), allow_pickle=False) as z:
        return dict(z)


def test_sigkill_at_random_step_then_resume_is_bit_identical(tmp_path):
    seed = int(os.environ.get("EXT5_KILL_SEED", time.time_ns() % 10_000))
    kill_at = random.Random(seed).randint(3, STEPS - 5)
    rc, log = _worker(tmp_path, tmp_path / "straight")
    assert rc == 0 and f"FINAL 0 {STEPS}" in log, log[-3000:]

    rc, log = _worker(tmp_path, tmp_path / "killed", kill_at=kill_at)
    assert rc == -signal.SIGKILL, f"kill_at={kill_at} (EXT5_KILL_SEED={seed}): {log[-3000:]}"
    assert "FINAL" not in log
    rc, log = _worker(tmp_path, tmp_path / "killed")
    assert rc == 0, log[-3000:]
    m = re.search(r"FINAL (\d+) (\d+)", log)
    assert m and 0 < int(m.group(1)) < STEPS and int(m.group(2)) == STEPS, (kill_at, log[-3000:])
    assert "fast-forward" not in log  # the data position came from its files, not a replay

    a, b = _params(tmp_path / "straight"), _params(tmp_path / "killed")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=f"{k} (kill_at={kill_at}, EXT5_KILL_SEED={seed})")


# ------------------------------------------------------------------ SIGTERM and unreadable checkpoints
CFG = configs.get_config("tiny", vocab_size=64, emb_dim=32, num_heads=2, head_dim=8, mlp_dim=48,
                         num_encoder_layers=2, num_decoder_layers=2, dtype="float32")
SIGTERM_AT = 5


class _SigtermAt(synthetic.SyntheticBatches):
    """Synthetic batches that send this process SIGTERM while fetching the batch of step `at`."""

    def __init__(self, at: int | None, **kw):
        super().__init__(input_len=16, target_len=8, vocab_size=64, host_batch_size=8, **kw)
        self.at = at

    def __next__(self):
        batch = super().__next__()
        if self.step == self.at:
            os.kill(os.getpid(), signal.SIGTERM)
        return batch


def _train(model_dir, steps, at=None):
    return trainer.train(model=CFG, model_dir=str(model_dir), train_steps=steps, batch_size=8,
                         batch_source=_SigtermAt(at), partition=partitioning.PartitionConfig(num_partitions=1),
                         learning_rate=optimizer.create_learning_rate_scheduler("constant", 0.01),
                         checkpoint=trainer.CheckpointConfig(period=2, use_async=True), log_period=100, plot=False)


@pytest.fixture(scope="module")
def sigterm_run(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("sigterm")
    before = signal.getsignal(signal.SIGTERM)
    result = _train(model_dir, 20, at=SIGTERM_AT)
    return model_dir, result, before


def test_sigterm_leaves_a_checkpoint_at_the_step_it_was_received(sigterm_run):
    model_dir, result, before = sigterm_run
    assert result.preempted and result.final_step == SIGTERM_AT  # exited cleanly, not killed
    ck = checkpoints.Checkpointer(str(model_dir), use_async=False)
    assert ck.latest_step() == SIGTERM_AT and ck.all_steps() == [2, 4, SIGTERM_AT]
    restored = ck._mngr.restore(SIGTERM_AT, args=checkpoints.ocp.args.Composite(
        data=checkpoints.ocp.args.JsonRestore()))
    assert restored["data"]["step"] == SIGTERM_AT  # the data position of that step, too
    ck.close()
    assert signal.getsignal(signal.SIGTERM) == before  # our handler is removed again


def test_corrupted_latest_checkpoint_falls_back_to_the_previous_one(sigterm_run, capsys):
    model_dir, _, _ = sigterm_run
    # The latest checkpoint garbled after it was written, and a half-written one orbax never finished.
    for root, _, files in os.walk(model_dir / f"checkpoint_{SIGTERM_AT}"):
        for f in files:
            p = os.path.join(root, f)
            open(p, "r+b").truncate(os.path.getsize(p) // 2)
    half = model_dir / "checkpoint_7.orbax-checkpoint-tmp-1234567"
    (half / "state").mkdir(parents=True)
    (half / "state" / "manifest.ocdbt").write_bytes(b"\0" * 10)
    result = _train(model_dir, 6)
    assert result.start_step == 4 and result.final_step == 6
    out = capsys.readouterr().out
    assert f"checkpoint_{SIGTERM_AT} is unreadable" in out and "falling back" in out
    names = os.listdir(model_dir)
    assert any(n.startswith(f"corrupt-checkpoint_{SIGTERM_AT}-") for n in names)
    assert checkpoints.Checkpointer(str(model_dir), use_async=False).all_steps() == [2, 4, 6]


def _tiny_checkpoints(model_dir):
    import jax.numpy as jnp
    ck = checkpoints.Checkpointer(str(model_dir), period=1, use_async=False)
    for s in (1, 2, 3):
        ck.save(s, {"w": jnp.full((4, 3), float(s))}, {"pos": s}, {"param_shapes": {"w": [4, 3]}})
    ck.close()
    return {"w": jax.ShapeDtypeStruct((4, 3), np.float32)}


@pytest.mark.parametrize("damage", ["truncated", "garbled", "missing"])
def test_unreadable_latest_checkpoint_is_skipped(tmp_path, damage):
    abstract = _tiny_checkpoints(tmp_path)
    rng = np.random.default_rng(0)
    for root, _, files in os.walk(tmp_path / "checkpoint_3" / "state"):
        for f in files:
            p = os.path.join(root, f)
            if damage == "truncated":
                open(p, "r+b").truncate(os.path.getsize(p) // 2)
            elif damage == "garbled":
                open(p, "wb").write(rng.bytes(max(16, os.path.getsize(p))))
            else:
                os.remove(p)
    ck = checkpoints.Checkpointer(str(tmp_path), use_async=False)
    step, state, data = ck.restore_latest(abstract, {"w": [4, 3]})
    assert step == 2 and data == {"pos": 2} and float(state["w"][0, 0]) == 2.0
    assert ck.all_steps() == [1, 2]
    ck.close()
    # Every checkpoint unreadable: one-line error, not a silent fresh start.
    for s in (1, 2):
        shutil.rmtree(tmp_path / f"checkpoint_{s}" / "state")
    ck = checkpoints.Checkpointer(str(tmp_path), use_async=False)
    with pytest.raises(checkpoints.NoReadableCheckpointError, match="no checkpoint in"):
        ck.restore_latest(abstract, {"w": [4, 3]})


# ------------------------------------------------------------------ the data position
def test_resumed_batches_equal_uninterrupted_batches_without_replay(tmp_path, monkeypatch):
    import ext5.tasks  # noqa: F401
    from ext5.data.pipeline import HostBatchIterator
    kw = dict(task_feature_lengths={"inputs": 64, "targets": 16}, host_batch_size=4, seed=7, pack_window=64)
    a = HostBatchIterator("local_default", **kw)
    for _ in range(6):
        next(a)
    state = json.loads(json.dumps(a.state(str(tmp_path / "pos"))))
    assert state["files"] and state["batches_emitted"] == 6
    following = [next(a) for _ in range(4)]

    def no_replay(self, target):
        raise AssertionError("restore replayed the stream")
    with monkeypatch.context() as m:
        m.setattr(HostBatchIterator, "_fast_forward", no_replay)
        b = HostBatchIterator("local_default", **kw)
        b.restore(state, str(tmp_path / "pos"))
        got = [next(b) for _ in range(4)]
    for x, y in zip(following, got):
        assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
    # Without its files the position is still exact, by replaying the stream.
    shutil.rmtree(tmp_path / "pos")
    c = HostBatchIterator("local_default", **kw)
    c.restore(state, str(tmp_path / "pos"))
    assert all(np.array_equal(x[k], y[k]) for x, y in zip(following, [next(c) for _ in range(4)]) for k in x)
