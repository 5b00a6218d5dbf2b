"""launch/: the Cloud TPU script driven against a stub `gcloud` that records its argv, and the SLURM scripts.

The recorded `--command` of `train` is also run by a real bash (with a stub `t5x` in a fake worker home),
so quoting is checked by the shell itself, not only by shlex.
"""
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TPU = REPO / "launch" / "tpu"
# A gin binding with quotes, spaces, a `;`, `$(...)` and backticks: must reach t5x as one argument.
NASTY = """--gin.RUN_NAME='it''s "quoted"; $(touch pwned) `touch pwned2` & echo x'"""
T5X_ARGS = ["--gin_file=ext5_base.gin", "--gin.MODEL_DIR='gs://bucket/ext5 base'", NASTY]

RECORDER = """#!{python}
import json, os, sys
with open(os.environ["{env}"], "a") as f:
    f.write(json.dumps({{"argv": sys.argv[1:], "pid": os.getpid()}}) + "\\n")
if "describe" in sys.argv:
    print(json.dumps({{"networkEndpoints": [{{}}, {{}}, {{}}]}}))
"""


def _stub(path: Path, env_var: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(RECORDER.format(python=sys.executable, env=env_var))
    path.chmod(0o755)
    return path


def _records(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture
def gcloud(tmp_path):
    """Runs launch/tpu with a recording `gcloud` first on PATH; returns (run, recorded-calls)."""
    bin_dir, log = tmp_path / "bin", tmp_path / "gcloud.jsonl"
    _stub(bin_dir / "gcloud", "GCLOUD_LOG")
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", GCLOUD_LOG=str(log),
               PYTHON=sys.executable)
    env.pop("EXT5_TPU_ZONE", None), env.pop("EXT5_TPU_PROJECT", None)

    def run(*args, rc=0):
        p = subprocess.run([str(TPU), *args], env=env, capture_output=True, text=True, timeout=60)
        assert p.returncode == rc, p.stderr
        return p

    return run, lambda: [r["argv"] for r in _records(log)]


def _command(argv: list[str]) -> str:
    [cmd] = [a[len("--command="):] for a in argv if a.startswith("--command=")]
    return cmd


def test_train_is_one_ssh_on_all_workers_with_the_exact_t5x_invocation(gcloud, tmp_path):
    run, calls = gcloud
    run("train", "my-tpu", "--zone=us-central2-b", "--project=p1", "--env", "XLA_FLAGS=--a --b", "--", *T5X_ARGS)
    [argv] = calls()
    assert argv[:5] == ["compute", "tpus", "tpu-vm", "ssh", "my-tpu"]
    assert "--worker=all" in argv and "--zone=us-central2-b" in argv and "--project=p1" in argv
    words = shlex.split(_command(argv))
    i = words.index("ext5/venv/bin/t5x")
    assert words[i + 1:i + 2 + len(T5X_ARGS)] == ["train", *T5X_ARGS]
    assert words[i + 2 + len(T5X_ARGS)] == ">" and words[i + 3 + len(T5X_ARGS)] == "ext5/logs/train.log"
    assert words[i - 3:i] == ["nohup", "env", "XLA_FLAGS=--a --b"]

    # The worker's real shell: the stub t5x must receive exactly T5X_ARGS, and the pid file must name it.
    home = tmp_path / "worker"
    _stub(home / "ext5" / "venv" / "bin" / "t5x", "T5X_LOG")
    env = dict(os.environ, T5X_LOG=str(tmp_path / "t5x.jsonl"))
    out = subprocess.run(["bash", "-c", _command(argv)], cwd=home, env=env, capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0 and "started pid" in out.stdout, out.stderr
    deadline = time.time() + 20
    while not _records(tmp_path / "t5x.jsonl") and time.time() < deadline:
        time.sleep(0.05)
    [rec] = _records(tmp_path / "t5x.jsonl")
    assert rec["argv"] == ["train", *T5X_ARGS]
    assert int((home / "ext5" / "logs" / "train.pid").read_text()) == rec["pid"]
    assert (home / "ext5" / "logs" / "train.log").exists()
    assert not (home / "pwned").exists() and not (home / "pwned2").exists()


def test_eval_attached_and_run_name(gcloud):
    run, calls = gcloud
    run("eval", "t", "--run=ev1", "--attach", "--", "--gin_file=a.gin", "--gin_file=eval.gin")
    words = shlex.split(_command(calls()[0]))
    i = words.index("ext5/venv/bin/t5x")
    assert words[i:i + 4] == ["ext5/venv/bin/t5x", "eval", "--gin_file=a.gin", "--gin_file=eval.gin"]
    assert words[-2:] == ["tee", "ext5/logs/ev1.log"]


def test_dry_run_runs_nothing_and_prints_the_commands(gcloud):
    run, calls = gcloud
    out = run("train", "my-tpu", "--zone=z", "--dry-run", "--", *T5X_ARGS).stdout
    assert calls() == []
    [line] = out.strip().splitlines()
    argv = shlex.split(line)
    assert argv[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-tpu"]
    words = shlex.split(_command(argv))
    assert words[words.index("ext5/venv/bin/t5x") + 1:][:1 + len(T5X_ARGS)] == ["train", *T5X_ARGS]
    for sub in (["create", "x", "--spot"], ["delete", "x"], ["setup", "x"], ["logs", "x", "-f"], ["stop", "x"]):
        assert run(*sub, "--dry-run").stdout.strip()
    assert calls() == []


def test_create_and_delete_argv(gcloud):
    run, calls = gcloud
    run("create", "pod", "--zone=us-central2-b", "--accelerator-type=v4-64", "--spot", "--project=p")
    run("create", "pod", "--zone=us-central2-b", "--accelerator-type=v4-64", "--queued", "--spot")
    run("create", "one", "--accelerator-type=v4-8", "--version=tpu-vm-base", "--preemptible")
    run("delete", "pod", "--zone=us-central2-b")
    run("delete", "pod", "--zone=us-central2-b", "--queued")
    assert calls() == [
        ["compute", "tpus", "tpu-vm", "create", "pod", "--zone=us-central2-b", "--project=p",
         "--accelerator-type=v4-64", "--version=tpu-ubuntu2204-base", "--spot"],
        ["compute", "tpus", "queued-resources", "create", "pod", "--zone=us-central2-b", "--accelerator-type=v4-64",
         "--runtime-version=tpu-ubuntu2204-base", "--node-id=pod", "--spot"],
        ["compute", "tpus", "tpu-vm", "create", "one", "--accelerator-type=v4-8", "--version=tpu-vm-base",
         "--preemptible"],
        ["compute", "tpus", "tpu-vm", "delete", "pod", "--zone=us-central2-b", "--quiet"],
        ["compute", "tpus", "queued-resources", "delete", "pod", "--zone=us-central2-b", "--force", "--quiet"],
    ]
    err = run("create", "pod", "--spot", "--preemptible", rc=2).stderr
    assert err.startswith("launch/tpu: error:") and len(err.strip().splitlines()) == 1
    assert "--gin_file" in run("train", "pod", rc=2).stderr  # no t5x flags: says how to pass them
    assert len(calls()) == 5


def test_setup_logs_ssh_stop(gcloud):
    run, calls = gcloud
    run("setup", "t", "--package=ext5 @ git+https://example.com/ext5.git")
    [setup] = calls()
    assert "--worker=all" in setup
    script = _command(setup)
    assert "'ext5 @ git+https://example.com/ext5.git'" in script and "'jax[tpu]'" in script
    run("logs", "t", "--fetch=/tmp/out", "--run=r")  # asks gcloud describe for the 3 workers, then scp's each
    scps = [c for c in calls() if "scp" in c]
    assert [c[4:6] for c in scps] == [["t:ext5/logs/r.log", f"/tmp/out/r.worker{i}.log"] for i in range(3)]
    assert [c[-1] for c in scps] == ["--worker=0", "--worker=1", "--worker=2"]
    run("logs", "t", "--worker=2", "--follow")
    assert calls()[-1][-2:] == ["--worker=2", "--command=tail -n 100 -F ext5/logs/train.log"]
    run("ssh", "t", "--worker=all", "--command=nvidia-smi; ls")
    assert calls()[-1][-2:] == ["--worker=all", "--command=nvidia-smi; ls"]
    run("stop", "t")
    assert "kill $(cat ext5/logs/train.pid)" in _command(calls()[-1])


def test_slurm_scripts_generate_per_process_flags(tmp_path):
    from ext5 import cli
    bin_dir = tmp_path / "bin"
    (bin_dir).mkdir()
    (bin_dir / "scontrol").write_text("#!/bin/sh\nprintf 'gpu-a01\\ngpu-a02\\ngpu-b07\\n'\n")
    (bin_dir / "scontrol").chmod(0o755)
    _stub(bin_dir / "srun", "REC_LOG")
    stub_t5x = _stub(tmp_path / "t5x_stub", "REC_LOG")
    log = tmp_path / "rec.jsonl"
    base = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", REC_LOG=str(log))
    args = ["--gin_file=ext5_base.gin", NASTY]

    # sbatch's script: srun with per-process logs, the task script, and the arguments untouched.
    subprocess.run(["bash", str(REPO / "launch" / "slurm.sbatch"), *args], check=True, timeout=30,
                   env=dict(base, SLURM_SUBMIT_DIR=str(REPO)))
    [srun] = _records(log)
    assert srun["argv"] == ["--kill-on-bad-exit=1", "--output=ext5-%j.%t.log",
                            str(REPO / "launch" / "slurm_task.sh"), *args]
    log.unlink()

    for procid in (0, 2):
        env = dict(base, SLURM_PROCID=str(procid), SLURM_NTASKS="3", SLURM_JOB_NODELIST="gpu-a[01-02],gpu-b07",
                   EXT5_T5X=str(stub_t5x), EXT5_COORDINATOR_PORT="2222")
        subprocess.run([str(REPO / "launch" / "slurm_task.sh"), *args], check=True, env=env, timeout=30)
    got = [r["argv"] for r in _records(log)]
    assert got == [["train", "--multiprocess_gpu", "--coordinator_address=gpu-a01:2222", "--process_count=3",
                    f"--process_index={i}", *args] for i in (0, 2)]
    parsed, bindings = cli.parse_args(got[1])  # flags ext5's CLI really accepts
    assert (parsed.multiprocess_gpu, parsed.coordinator_address, parsed.process_count, parsed.process_index) == \
        (True, "gpu-a01:2222", 3, 2)
    bad = subprocess.run([str(REPO / "launch" / "slurm_task.sh")], env=base, capture_output=True, text=True)
    assert bad.returncode != 0 and "SLURM_PROCID" in bad.stderr
