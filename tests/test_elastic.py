"""Elastic resume on the grain path: a run checkpointed with H processes resumes with H' != H (2 -> 1 and 1 -> 2,
two local jax.distributed processes on CPU) and ends with the same parameters, bit for bit, as an uninterrupted
run, because the global batch of every step is the same whatever the number of hosts. One resume is SIGKILLed
at a random step and resumed again.

Runs (tiny model, 2 devices in all: 1 process x 2 devices or 2 processes x 1 device, so the mesh is the same):
  A  1 process,  steps 0 -> 8                                  reference
  B  2 processes, steps 0 -> 8                                 == A (the global batch does not depend on H)
  C  B's checkpoint at step 4, 1 process -> 8, SIGKILLed, resumed   == A (2 -> 1, and SIGKILL)
  D  A's checkpoint at step 4, 2 processes -> 8                == A (1 -> 2)
"""
from __future__ import annotations

import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np

from ext5.data import array_cache

STEPS = 8

_WORKER = textwrap.dedent("""
    import sys, time
    model_dir, cache, nproc, pid, port = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    import jax
    from ext5.train import partitioning
    if nproc > 1:
        partitioning.maybe_initialize_distributed(coordinator_address="127.0.0.1:" + port, process_count=nproc,
                                                  process_index=pid)
    import numpy as np
    from jax.experimental import multihost_utils
    from ext5.data.array_cache import CachedSplit
    from ext5.data.grain_pipeline import GrainBatchSource
    from ext5.model import configs
    from ext5.train import optimizer, trainer
    cfg = configs.get_config("tiny", vocab_size=128, emb_dim=32, num_heads=2, head_dim=8, mlp_dim=48,
                             num_encoder_layers=1, num_decoder_layers=1, dtype="float32")
    tasks = [(n, CachedSplit(cache + "/" + n, "train"), r) for n, r in (("a", 2.0), ("b", 1.0))]
    class Slow(GrainBatchSource):  # gives the test time to SIGKILL mid-run
        def __next__(self):
            time.sleep(0.3)
            return super().__next__()
    src = (Slow if len(sys.argv) > 6 else GrainBatchSource)(
        tasks, 32, 8, 8, shard_index=jax.process_index(), num_shards=jax.process_count(), seed=11, pack_window=16)
    r = trainer.train(model=cfg, model_dir=model_dir, train_steps=%d, batch_size=8, batch_source=src,
                      partition=partitioning.PartitionConfig(num_partitions=1),
                      learning_rate=optimizer.create_learning_rate_scheduler("constant", 0.01),
                      checkpoint=trainer.CheckpointConfig(period=2, use_async=True), log_period=1, plot=False)
    leaves = jax.tree_util.tree_leaves_with_path(r.state.params)
    full = multihost_utils.process_allgather([x for _, x in leaves], tiled=True)
    if jax.process_index() == 0:
        np.savez(model_dir + "/final_params.npz",
                 **{jax.tree_util.keystr(p): np.asarray(x) for (p, _), x in zip(leaves, full)})
    print("FINAL", r.start_step, r.final_step, flush=True)
""" % STEPS)


def _port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _run(tmp_path, model_dir, nproc, *, kill_at: int | None = None) -> list[str]:
    """Train in `nproc` processes (2 devices in all); with kill_at, SIGKILL every process once step >= kill_at is
    logged (the workers then take 0.3 s per batch)."""
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={2 // nproc} --xla_backend_optimization_level=0",
               JAX_COMPILATION_CACHE_DIR=str(tmp_path / f"jit{nproc}"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    port = _port()
    procs = [subprocess.Popen([sys.executable, str(script), str(model_dir), str(tmp_path / "cache"), str(nproc),
                               str(i), port] + (["slow"] if kill_at else []), env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(nproc)]
    if kill_at is not None:
        lines, deadline = [], time.time() + 180
        for line in procs[0].stdout:
            lines.append(line)
            m = re.match(r"step\s+(\d+)/", line)
            if m and int(m.group(1)) >= kill_at:
                break
            if time.time() > deadline:
                break
        for p in procs:
            p.kill()  # SIGKILL: async checkpoint writes are cut wherever they are
        for p in procs:
            p.communicate(timeout=60)
        assert procs[0].returncode == -signal.SIGKILL, "".join(lines)[-3000:]
        return lines
    logs = [p.communicate(timeout=300)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    return logs


def _params(model_dir) -> dict[str, np.ndarray]:
    with np.load(os.path.join(model_dir, "final_params.npz"), allow_pickle=False) as z:
        return dict(z)


def _assert_same(a, b, what):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=f"{what}: {k}")


def _truncate_after(src, dst, step):
    """A copy of run `src` as it was right after saving checkpoint `step`."""
    shutil.copytree(src, dst)
    for n in os.listdir(dst):
        m = re.fullmatch(r"checkpoint_(\d+)", n)
        if m and int(m.group(1)) > step:
            shutil.rmtree(dst / n)
    os.remove(dst / "final_params.npz")


def test_elastic_resume_two_to_one_and_one_to_two_is_bit_identical(tmp_path):
    rng = np.random.default_rng(0)
    for t, n in (("a", 90), ("b", 40)):
        array_cache.write_split(str(tmp_path / "cache" / t), "train", [
            {"inputs": rng.integers(2, 127, rng.integers(1, 30)), "targets": rng.integers(2, 127, rng.integers(1, 8))}
            for _ in range(n)], num_shards=2)
    log_a = _run(tmp_path, tmp_path / "A", 1)
    assert f"FINAL 0 {STEPS}" in log_a[0]
    ref = _params(tmp_path / "A")

    _run(tmp_path, tmp_path / "B", 2)
    _assert_same(ref, _params(tmp_path / "B"), "2 processes vs 1")

    seed = int(os.environ.get("EXT5_KILL_SEED", time.time_ns() % 10_000))
    kill_at = random.Random(seed).randint(5, STEPS - 2)
    _truncate_after(tmp_path / "B", tmp_path / "C", 4)
    _run(tmp_path, tmp_path / "C", 1, kill_at=kill_at)
    log_c = _run(tmp_path, tmp_path / "C", 1)
    m = re.search(r"FINAL (\d+) (\d+)", log_c[0])
    assert m and 4 <= int(m.group(1)) < STEPS and int(m.group(2)) == STEPS, (kill_at, log_c[0][-2000:])
    _assert_same(ref, _params(tmp_path / "C"), f"2 -> 1 with a SIGKILL at step {kill_at} (EXT5_KILL_SEED={seed})")

    _truncate_after(tmp_path / "A", tmp_path / "D", 4)
    log_d = _run(tmp_path, tmp_path / "D", 2)
    assert "FINAL 4 8" in log_d[0]
    _assert_same(ref, _params(tmp_path / "D"), "1 -> 2")


_GATHER = textwrap.dedent("""
    import json, sys
    pid, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    from ext5.train import partitioning
    partitioning.maybe_initialize_distributed(coordinator_address="127.0.0.1:" + port, process_count=2,
                                              process_index=pid)
    import numpy as np
    from ext5.eval.evaluator import allgather_rows, host_block
    # 7 eval rows over 2 hosts: blocks of 3 and 4; float64 scores must survive the gather bit for bit.
    rows = np.arange(7)[host_block(7, pid, 2)]
    idx, scores = allgather_rows(rows, np.exp(-rows.astype(np.float64) / 3))
    _, toks = allgather_rows(rows, np.stack([rows * 10 + k for k in range(3)], 1).astype(np.int32))
    if pid == 0:
        json.dump({"idx": idx.tolist(), "scores": scores.tolist(), "toks": toks.tolist()}, open(out, "w"))
""")


def test_eval_results_gathered_over_two_processes_are_the_one_process_results(tmp_path):
    """The evaluator's gather across two jax.distributed processes (tests/test_data.py checks the blocks)."""
    import json
    script = tmp_path / "gather.py"
    script.write_text(_GATHER)
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    port, out = _port(), tmp_path / "out.json"
    procs = [subprocess.Popen([sys.executable, str(script), str(i), port, str(out)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    logs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), logs[0][-2000:] + logs[1][-2000:]
    got = json.loads(out.read_text())
    rows = np.arange(7)
    assert got["idx"] == rows.tolist()
    assert got["scores"] == np.exp(-rows.astype(np.float64) / 3).tolist()  # float64, exactly
    assert got["toks"] == np.stack([rows * 10 + k for k in range(3)], 1).tolist()


_EVAL = textwrap.dedent("""
    import json, sys
    pid, port, out, tests_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    from ext5.train import partitioning
    partitioning.maybe_initialize_distributed(coordinator_address="127.0.0.1:" + port, process_count=2,
                                              process_index=pid)
    sys.path.insert(0, tests_dir)
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    from test_elastic import eval_metrics
    _, params = eval_metrics(None)
    # Global parameters over both processes' devices, as the trainer holds them.
    rep = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), PartitionSpec())
    params = jax.tree_util.tree_map(
        lambda x: jax.make_array_from_callback(x.shape, rep, lambda i, x=x: np.asarray(x)[i]), params)
    metrics, _ = eval_metrics(params)
    if pid == 0:
        json.dump(metrics, open(out, "w"))
""")


def eval_metrics(params):
    """(metrics of a rank-classification and a decoded eval task, params): a tiny model with fixed random params."""
    import sys
    sys.path.insert(0, os.path.dirname(__file__))
    import ext5.tasks  # noqa: F401
    from _util import random_params
    from ext5.data.vocab import get_vocabulary, padded_vocab_size
    from ext5.eval.evaluator import SeqioEvaluator
    from ext5.model import configs
    cfg = configs.get_config("tiny", vocab_size=padded_vocab_size(get_vocabulary("local")), emb_dim=32, num_heads=2,
                             head_dim=8, mlp_dim=48, num_encoder_layers=1, num_decoder_layers=1, dtype="float32")
    if params is None:
        return None, random_params(cfg, 0, 0.1)
    out = {}
    for name in ("local_nli_score_eval", "local_nli"):
        ev = SeqioEvaluator(name, {"inputs": 64, "targets": 8}, cfg, num_examples=24, batch_size=8,
                            max_decode_length=4)
        out.update(ev(params, 0))
    return out, params


def test_two_process_eval_gives_the_one_process_metrics(tmp_path):
    """Each process evaluates half of every eval split; gathered, the metrics equal one process's."""
    import json
    script = tmp_path / "eval.py"
    script.write_text(_EVAL)
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1",
               TF_CPP_MIN_LOG_LEVEL="2")
    port, out = _port(), tmp_path / "metrics.json"
    procs = [subprocess.Popen([sys.executable, str(script), str(i), port, str(out), os.path.dirname(__file__)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    one, _ = eval_metrics(eval_metrics(None)[1])  # meanwhile, in this process: one host
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), logs[0][-2000:] + logs[1][-2000:]
    two = json.loads(out.read_text())
    assert set(one) == {"local_nli_score_eval/accuracy", "local_nli_score_eval/mean_3class_f1", "local_nli/accuracy"}
    assert two == one
