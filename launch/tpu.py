#!/usr/bin/env python3
"""Cloud TPU VMs for ext5: create, set up every worker, train/eval on all workers at once, logs, ssh, delete.

    launch/tpu create my-tpu --zone=us-central2-b --accelerator-type=v4-64 --spot
    launch/tpu setup  my-tpu --zone=us-central2-b
    launch/tpu train  my-tpu --zone=us-central2-b -- --gin_file=ext5_base.gin --gin.MODEL_DIR="'gs://b/ext5_base'"
    launch/tpu logs   my-tpu --zone=us-central2-b --follow
    launch/tpu delete my-tpu --zone=us-central2-b

Every subcommand builds gcloud argument lists (never a local shell string), and prints them; `--dry-run`
prints and runs nothing. On a multi-host slice every worker must run the same program (a worker left out
makes the others hang in jax.distributed initialisation, t5x#997), so setup/train/eval/stop always use
`--worker=all`. Arguments that reach the workers' shell (gin bindings, paths, environment values) are
quoted with shlex.quote: a binding such as --gin.X="'a b; rm -rf ~'" arrives as one argument.

Files on each worker live under ~/ext5 (--remote-dir): venv/ (the environment setup made), dist/ (the
wheel setup copied), logs/RUN.log and logs/RUN.pid (one per worker, on that worker).
Only the Python standard library is used, so this runs on a laptop without ext5 installed.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parent.parent
DEFAULT_VERSION = "tpu-ubuntu2204-base"  # the runtime for JAX on v4 and older (v5e: v2-alpha-tpuv5-lite)
DEFAULT_REMOTE_DIR = "ext5"              # relative to the worker's home directory (ssh starts there)
DEFAULT_PYTHON = "3.11"
TPU_VM = ["compute", "tpus", "tpu-vm"]
QUEUED = ["compute", "tpus", "queued-resources"]


class LaunchError(ValueError):
    """Bad arguments: printed as one line."""


# ---------------------------------------------------------------- remote shell commands (quoted)
def _q(s: str) -> str:
    return shlex.quote(str(s))


def remote_path(remote_dir: str, *parts: str) -> str:
    """A path under the remote dir, quoted for the worker's shell (relative paths stay home-relative)."""
    return _q("/".join([remote_dir.rstrip("/"), *parts]))


def _env_prefix(env: Sequence[str]) -> list[str]:
    out = []
    for kv in env:
        key, sep, value = kv.partition("=")
        if not sep or not key.isidentifier():
            raise LaunchError(f"--env {kv!r} is not KEY=VALUE; use e.g. --env TF_CPP_MIN_LOG_LEVEL=2")
        out.append(f"{key}={_q(value)}")
    return ["env", *out] if out else []


def job_command(command: str, t5x_args: Sequence[str], *, run: str, remote_dir: str,
                env: Sequence[str] = (), attach: bool = False) -> str:
    """The shell command each worker runs: `t5x COMMAND ARGS...` with its output in logs/RUN.log.

    Detached (default): started with nohup in the background, its pid in logs/RUN.pid, so the job survives
    the ssh session (a dropped laptop connection must not kill a pod run). Attached: runs in the
    foreground, output shown and tee'd to the log.
    """
    if not run or "/" in run or run.startswith("."):
        raise LaunchError(f"--run {run!r} must be a plain file name such as 'train' or 'ext5_base'")
    t5x = " ".join([remote_path(remote_dir, "venv", "bin", "t5x"), _q(command), *map(_q, t5x_args)])
    if env:
        t5x = " ".join(_env_prefix(env)) + " " + t5x
    log, pid = remote_path(remote_dir, "logs", f"{run}.log"), remote_path(remote_dir, "logs", f"{run}.pid")
    mkdir = f"mkdir -p {remote_path(remote_dir, 'logs')}"
    if attach:
        return f"{mkdir} && set -o pipefail && {t5x} 2>&1 | tee {log}"
    # `;` not `&&` before nohup: `a && b &` would background a subshell, and $! would not be t5x's pid
    # (nohup and env exec, so $! is the training process itself and `stop` can kill it).
    return (f"{mkdir}; nohup {t5x} > {log} 2>&1 < /dev/null & echo $! > {pid}; "
            f'echo "$(hostname): started pid $(cat {pid})"')


def setup_script(package: str, *, remote_dir: str, python: str, extra: Sequence[str] = ()) -> str:
    """Shell script run on every worker: a venv with jax[tpu] and ext5 (+ promptsource as the Makefile does)."""
    venv = remote_path(remote_dir, "venv")
    pip = remote_path(remote_dir, "venv", "bin", "pip")
    pkgs = " ".join(_q(p) for p in ["jax[tpu]", package, *extra])
    return " && ".join([
        "set -e",
        f"mkdir -p {remote_path(remote_dir, 'logs')}",
        # uv fetches a managed CPython: the TPU images' python3.10 is older than current jax supports.
        'if ! command -v uv >/dev/null && [ ! -x "$HOME/.local/bin/uv" ]; then '
        "curl -LsSf https://astral.sh/uv/install.sh | sh; fi",
        'export PATH="$HOME/.local/bin:$HOME/.cargo/bin:$PATH"',  # where the installer puts uv
        f"uv venv --seed --allow-existing --python {_q(python)} {venv}",
        f"{pip} install -q --upgrade pip",
        f"{pip} install -q {pkgs}",
        # promptsource 0.2.3 is sdist-only and declares python<3.10 (see the Makefile).
        f"{pip} install -q --no-deps --ignore-requires-python promptsource==0.2.3",
        f"{remote_path(remote_dir, 'venv', 'bin', 'python')} -c "
        + _q("import jax, ext5; print(jax.process_index(), jax.device_count(), jax.devices()[0].device_kind)"),
    ])


# ---------------------------------------------------------------- gcloud argument lists
def _common(args) -> list[str]:
    out = []
    if args.zone:
        out.append(f"--zone={args.zone}")
    if args.project:
        out.append(f"--project={args.project}")
    return out


def ssh_cmd(args, command: str | None, worker: str) -> list[str]:
    cmd = ["gcloud", *TPU_VM, "ssh", args.name, *_common(args), f"--worker={worker}"]
    if command is not None:
        cmd.append(f"--command={command}")
    return cmd


def plan_create(args) -> list[list[str]]:
    if args.spot and args.preemptible:
        raise LaunchError("--spot and --preemptible are exclusive; use --spot (preemptible TPUs are legacy)")
    extra = [f"--accelerator-type={args.accelerator_type}"]
    if args.queued:
        if args.preemptible:
            raise LaunchError("queued resources take --spot, not --preemptible")
        cmd = ["gcloud", *QUEUED, "create", args.name, *_common(args), *extra,
               f"--runtime-version={args.version}", f"--node-id={args.node_id or args.name}"]
    else:
        cmd = ["gcloud", *TPU_VM, "create", args.name, *_common(args), *extra, f"--version={args.version}"]
    cmd += ["--spot"] if args.spot else ["--preemptible"] if args.preemptible else []
    if args.service_account:
        cmd.append(f"--service-account={args.service_account}")
    for label in args.labels:
        cmd.append(f"--labels={label}")
    return [cmd]


def plan_delete(args) -> list[list[str]]:
    if args.queued:  # --force also deletes the queued resource's nodes
        return [["gcloud", *QUEUED, "delete", args.name, *_common(args), "--force", "--quiet"]]
    return [["gcloud", *TPU_VM, "delete", args.name, *_common(args), "--quiet"]]


def _wheel_dir() -> Path:
    return REPO / "build" / "launch_dist"


def wheel_name() -> str:
    """ext5's wheel file name, from setup.py's version (pure-Python wheel)."""
    import re
    m = re.search(r"""version\s*=\s*["']([^"']+)["']""", (REPO / "setup.py").read_text())
    if not m:
        raise LaunchError("cannot read ext5's version from setup.py; pass --package=REQUIREMENT instead")
    return f"ext5-{m.group(1)}-py3-none-any.whl"


def plan_setup(args) -> list[list[str]]:
    plan = []
    package = args.package
    if not package:  # build ext5's wheel from this checkout and copy it to every worker
        wheel_dir, wheel = _wheel_dir(), wheel_name()
        plan.append([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheel_dir), str(REPO)])
        plan.append(ssh_cmd(args, f"mkdir -p {remote_path(args.remote_dir, 'dist')}", "all"))
        plan.append(["gcloud", *TPU_VM, "scp", str(wheel_dir / wheel), f"{args.name}:{args.remote_dir}/dist/",
                     *_common(args), "--worker=all"])
        package = f"./{args.remote_dir}/dist/{wheel}"  # pip: a local file (./ keeps it a path, not a name)
    plan.append(ssh_cmd(args, setup_script(package, remote_dir=args.remote_dir, python=args.python,
                                           extra=args.extra), "all"))
    return plan


def _t5x_args(args) -> list[str]:
    rest = list(args.t5x_args)
    if not any(a.startswith("--gin_file") for a in rest):
        raise LaunchError("no --gin_file for t5x; put t5x's flags after `--`, e.g. "
                          "-- --gin_file=ext5_base.gin --gin.MODEL_DIR=\"'gs://bucket/run'\"")
    return rest


def plan_job(args) -> list[list[str]]:
    run = args.run or args.command
    return [ssh_cmd(args, job_command(args.command, _t5x_args(args), run=run, remote_dir=args.remote_dir,
                                      env=args.env, attach=args.attach), "all")]


def plan_stop(args) -> list[list[str]]:
    pid = remote_path(args.remote_dir, "logs", f"{args.run}.pid")
    return [ssh_cmd(args, f"if [ -f {pid} ]; then kill $(cat {pid}) 2>/dev/null; rm -f {pid}; fi; true", "all")]


def plan_logs(args) -> list[list[str]]:
    log = remote_path(args.remote_dir, "logs", f"{args.run}.log")
    if args.fetch:
        n = args.num_workers or num_workers(args)
        return [["gcloud", *TPU_VM, "scp", f"{args.name}:{args.remote_dir}/logs/{args.run}.log",
                 str(Path(args.fetch) / f"{args.run}.worker{i}.log"), *_common(args), f"--worker={i}"]
                for i in range(n)]
    tail = f"tail -n {int(args.lines)}{' -F' if args.follow else ''} {log}"
    if args.worker == "all":  # the workers' outputs interleave: prefix each line with its host
        tail += ' | sed "s/^/[$(hostname)] /"'
    return [ssh_cmd(args, tail, args.worker)]


def plan_status(args) -> list[list[str]]:
    group = QUEUED if args.queued else TPU_VM  # a queued resource is ACTIVE once its node exists
    return [["gcloud", *group, "describe", args.name, *_common(args)]]


def plan_ssh(args) -> list[list[str]]:
    return [ssh_cmd(args, args.remote_command, args.worker)]


def num_workers(args) -> int:
    """Workers of the TPU VM (from `gcloud ... describe`; --num-workers skips the call)."""
    if args.dry_run:
        raise LaunchError("--dry-run cannot ask gcloud for the number of workers; pass --num-workers")
    out = subprocess.run(["gcloud", *TPU_VM, "describe", args.name, *_common(args), "--format=json"],
                         check=True, capture_output=True, text=True).stdout
    return max(1, len(json.loads(out).get("networkEndpoints", [])))


# ---------------------------------------------------------------- running
def execute(plan: list[list[str]], *, dry_run: bool) -> int:
    """Prints each command (stdout with --dry-run, else stderr with a `+ `) and runs it unless dry_run."""
    for cmd in plan:
        print(("" if dry_run else "+ ") + shlex.join(cmd), file=sys.stdout if dry_run else sys.stderr, flush=True)
        if dry_run:
            continue
        rc = subprocess.call(cmd)
        if rc:
            print(f"launch/tpu: error: command exited with {rc}: {shlex.join(cmd[:6])} ...", file=sys.stderr)
            return rc
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="launch/tpu", description=__doc__.split("\n\nEvery")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("name", help="TPU VM name (also the queued resource's name with --queued)")
    common.add_argument("--zone", default=os.environ.get("EXT5_TPU_ZONE"),
                        help="zone, e.g. us-central2-b (default $EXT5_TPU_ZONE, else gcloud's compute/zone)")
    common.add_argument("--project", default=os.environ.get("EXT5_TPU_PROJECT"),
                        help="GCP project (default $EXT5_TPU_PROJECT, else gcloud's core/project)")
    common.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    common.add_argument("--remote-dir", default=DEFAULT_REMOTE_DIR, help="ext5's folder on each worker (~/ext5)")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("create", parents=[common], help="create a TPU VM (or a queued resource)")
    c.add_argument("--accelerator-type", default="v4-8", help="e.g. v4-8, v4-64, v5litepod-16 (default v4-8)")
    c.add_argument("--version", default=DEFAULT_VERSION, help=f"TPU runtime version (default {DEFAULT_VERSION})")
    c.add_argument("--spot", action="store_true", help="Spot capacity (cheaper, can be preempted)")
    c.add_argument("--preemptible", action="store_true", help="legacy preemptible TPU (tpu-vm only)")
    c.add_argument("--queued", action="store_true", help="request through `queued-resources create` (waits for capacity)")
    c.add_argument("--node-id", default=None, help="node id of the queued resource (default: NAME)")
    c.add_argument("--service-account", default=None)
    c.add_argument("--labels", action="append", default=[], help="KEY=VALUE,... (repeatable)")

    s = sub.add_parser("setup", parents=[common], help="install ext5 (+ jax[tpu]) in ~/ext5/venv on every worker")
    s.add_argument("--package", default=None,
                   help="pip requirement for ext5 (e.g. git+https://.../ext5.git@main); default: a wheel built "
                        "from this checkout and copied to every worker")
    s.add_argument("--extra", action="append", default=[], help="more pip requirements (repeatable)")
    s.add_argument("--python", default=DEFAULT_PYTHON, help=f"Python version for the venv (default {DEFAULT_PYTHON})")

    for name in ("train", "eval"):
        j = sub.add_parser(name, parents=[common], help=f"run `t5x {name} ARGS` on all workers at once",
                           usage=f"launch/tpu {name} NAME [options] -- T5X_ARGS...")
        j.add_argument("--run", default=None, help=f"log name: logs/RUN.log on each worker (default {name})")
        j.add_argument("--env", action="append", default=[], help="KEY=VALUE for the job's environment (repeatable)")
        j.add_argument("--attach", action="store_true",
                       help="stay attached (output tee'd to the log) instead of starting in the background")

    st = sub.add_parser("stop", parents=[common], help="stop a detached run on all workers (its pid file)")
    st.add_argument("--run", default="train")

    lg = sub.add_parser("logs", parents=[common], help="tail a run's per-worker logs, or --fetch them")
    lg.add_argument("--run", default="train")
    lg.add_argument("--worker", default="0", help="worker index or 'all' (lines prefixed by host)")
    lg.add_argument("--lines", type=int, default=100)
    lg.add_argument("--follow", "-f", action="store_true", help="keep following (tail -F)")
    lg.add_argument("--fetch", default=None, metavar="DIR", help="copy every worker's log to DIR/RUN.workerI.log")
    lg.add_argument("--num-workers", type=int, default=None, help="workers to fetch from (default: gcloud describe)")

    sh = sub.add_parser("ssh", parents=[common], help="ssh to a worker, or run --command on --worker=all")
    sh.add_argument("--worker", default="0")
    sh.add_argument("--command", dest="remote_command", default=None, help="shell command to run (else interactive)")

    stt = sub.add_parser("status", parents=[common], help="describe the TPU VM (or the queued resource's state)")
    stt.add_argument("--queued", action="store_true")

    d = sub.add_parser("delete", parents=[common], help="delete the TPU VM (or the queued resource with --queued)")
    d.add_argument("--queued", action="store_true")
    return p


PLANS = {"create": plan_create, "delete": plan_delete, "setup": plan_setup, "train": plan_job,
         "eval": plan_job, "stop": plan_stop, "logs": plan_logs, "ssh": plan_ssh, "status": plan_status}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after the first `--` is t5x's, passed through verbatim (never parsed here).
    cut = argv.index("--") if "--" in argv else len(argv)
    args = build_parser().parse_args(argv[:cut])
    args.t5x_args = argv[cut + 1:]
    try:
        if args.remote_dir.startswith("~") or not args.remote_dir.strip("/"):
            # It is quoted for the worker's shell, so `~` would not expand: paths are home-relative already.
            raise LaunchError(f"--remote-dir {args.remote_dir!r}: give a path relative to the worker's home "
                              "(e.g. ext5) or an absolute one")
        plan = PLANS[args.command](args)
        return execute(plan, dry_run=args.dry_run)
    except LaunchError as e:
        print(f"launch/tpu: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
