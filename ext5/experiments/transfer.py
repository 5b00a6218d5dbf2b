"""Family co-training transfer (ExT5's Figure 1): how much does co-training family B help family A?

For every chosen family F, train on F alone; for every pair {A, B}, train on A+B (half of the examples
from each family, tasks within a family keep their relative rates from the base mixture). Each run
is the real trainer (`ext5.train.trainer.train`, configured by gin exactly like `ext5 train`) and ends
with the configured evaluator on the run's tasks. A family's score is the mean over its tasks of
each task's mean metric (all ext5 metrics are on a 0-100 scale). The matrix is

    M[A][B] = (score_A(trained on A+B) - score_A(trained on A)) / score_A(trained on A)

row = evaluated family, column = co-trained family, diagonal 0. Written to OUT/transfer.csv,
OUT/transfer.png (annotated heatmap, diverging colormap centred at 0), OUT/scores.csv (raw family
scores per run) and OUT/transfer.json. Each run lives in OUT/runs/<mixture>/ with its scores.json,
so an interrupted experiment re-run with the same arguments skips the runs already done.
"""
from __future__ import annotations

import csv
import dataclasses
import importlib
import itertools
import json
import math
import os
import subprocess
import sys
import time
from typing import Callable, Mapping, Sequence

from ext5.errors import UsageError

_MODULE = "ext5.experiments.transfer"  # also when run as a run's child process (__main__)
SINGLE_PREFIX = "transfer_"
PAIR_SEPARATOR = "__"


@dataclasses.dataclass
class TransferResult:
    families: list[str]
    matrix: list[list[float]]  # [evaluated][co-trained] relative change; nan where single score is 0
    single: dict[str, float]   # family -> score trained alone
    pair: dict[tuple[str, str], float]  # (evaluated, co-trained) -> score of evaluated in the pair run
    files: dict[str, str]
    seconds: float


# ------------------------------------------------------------------------------ families and mixtures
def family_rates(mixture: str, families: Sequence[str] | None) -> dict[str, dict[str, float]]:
    """{family: {task: rate in the base mixture}} for the chosen families (default: every family with
    at least one task that has metrics; families without metrics, like span corruption, cannot be
    scored)."""
    import seqio
    from ext5.data import pipeline
    from ext5.experiments import mixture_info
    provider = pipeline.get_provider(mixture)
    groups: dict[str, dict[str, float]] = {}
    for task, rate in mixture_info.task_rates(provider).items():
        groups.setdefault(mixture_info.family_of(task), {})[task] = rate
    scorable = {f for f, ts in groups.items()
                if any(seqio.get_mixture_or_task(t).metric_fns for t in ts)}
    if families is None:
        chosen = sorted(scorable)
    else:
        chosen = list(dict.fromkeys(families))
        for f in chosen:
            if f not in groups:
                raise UsageError(f"family {f!r} is not in mixture '{mixture}' (families: "
                                 f"{', '.join(sorted(groups))}); pick from those with --families")
            if f not in scorable:
                raise UsageError(f"family {f!r} of '{mixture}' has no task with metrics, so it cannot be "
                                 f"scored; drop it from --families")
    if len(chosen) < 2:
        raise UsageError(f"the transfer experiment needs at least 2 families, got {chosen}; "
                         f"pass e.g. --families a,b,c")
    return {f: groups[f] for f in chosen}


def single_name(family: str) -> str:
    return f"{SINGLE_PREFIX}{family}"


def pair_name(a: str, b: str) -> str:
    return f"{SINGLE_PREFIX}{a}{PAIR_SEPARATOR}{b}"


def register_mixtures(groups: Mapping[str, Mapping[str, float]]) -> dict[str, list[str]]:
    """Registers transfer_<F> (one family, proportional within) and transfer_<A>__<B> (equal between
    families via mixing.pair_rates, proportional within). Returns {mixture: families it trains}."""
    from ext5.data import mixing, registry
    runs: dict[str, list[str]] = {}
    for f, rates in groups.items():
        registry.add_mixture(single_name(f), sorted(mixing.shares(rates).items()), origin=_MODULE)
        runs[single_name(f)] = [f]
    for a, b in itertools.combinations(groups, 2):
        rates = mixing.pair_rates(groups[a], groups[b], cap=None)  # base rates already carry the cap
        registry.add_mixture(pair_name(a, b), sorted(rates.items()), origin=_MODULE)
        runs[pair_name(a, b)] = [a, b]
    return runs


def registered_runs(families: Sequence[str], single_format: str, pair_format: str) -> dict[str, list[str]]:
    """Runs over mixtures that are already registered, e.g. single 'exmix_{a}', pair 'exmix_pair_{a}_{b}'
    (either family order is accepted for pairs)."""
    import seqio
    from ext5.data import pipeline
    names = set(seqio.MixtureRegistry.names()) | set(seqio.TaskRegistry.names())
    runs: dict[str, list[str]] = {}
    for f in families:
        name = single_format.format(a=f)
        pipeline.check_registered(name)
        runs[name] = [f]
    for a, b in itertools.combinations(families, 2):
        ab, ba = pair_format.format(a=a, b=b), pair_format.format(a=b, b=a)
        name = ab if ab in names or ba not in names else ba
        pipeline.check_registered(name)
        runs[name] = [a, b]
    return runs


# ------------------------------------------------------------------------------------------ scoring
def family_scores(metrics: Mapping[str, float], task_family: Callable[[str], str]) -> dict[str, float]:
    """{family: mean over its tasks of the task's mean metric} from flat {"task/metric": value}."""
    per_task: dict[str, list[float]] = {}
    for key, value in metrics.items():
        task, _, _ = key.partition("/")
        if math.isfinite(float(value)):
            per_task.setdefault(task, []).append(float(value))
    per_family: dict[str, list[float]] = {}
    for task, values in per_task.items():
        per_family.setdefault(task_family(task), []).append(sum(values) / len(values))
    return {f: sum(v) / len(v) for f, v in per_family.items()}


def relative_change(pair: float, single: float) -> float:
    """(pair - single) / single; 0 when both are 0; nan when only the single score is 0 (undefined)."""
    if single == 0:
        return 0.0 if pair == 0 else float("nan")
    return (pair - single) / single


def transfer_matrix(families: Sequence[str], single: Mapping[str, float],
                    pair: Mapping[tuple[str, str], float]) -> list[list[float]]:
    return [[0.0 if a == b else relative_change(pair[(a, b)], single[a]) for b in families] for a in families]


# ------------------------------------------------------------------------------------------ running
def _train_one(gin_files: Sequence[str], bindings: Sequence[str], search_paths: Sequence[str],
               mixture: str, model_dir: str, steps: int, *, mixtures: Mapping[str, Mapping[str, float]],
               train_flags: Sequence[str], cache_dir: str | None) -> tuple[dict[str, float], int]:
    """One training run, `ext5 train` with the experiment's gin files, in its own process; returns
    (final eval metrics, final step).

    A process per run isolates the runs (a failed run leaves the finished ones reusable) and keeps
    every run's JAX/TF state fresh; compilation is still shared through one persistent JAX cache.
    """
    # Evaluate exactly the run's tasks, once, at the end.
    overrides = [f"MIXTURE_OR_TASK_NAME = {mixture!r}", f"EVAL_MIXTURE_OR_TASK_NAME = {mixture!r}",
                 f"MODEL_DIR = {model_dir!r}", "EVAL_PERIOD = None", "trainer.train.plot = False",
                 f"TRAIN_STEPS = {int(steps)}"]
    os.makedirs(model_dir, exist_ok=True)
    spec_path = os.path.join(model_dir, "transfer_run.json")
    _write_json(spec_path, {"mixtures": {k: dict(v) for k, v in mixtures.items()}})
    argv = [sys.executable, "-m", _MODULE, spec_path, "train", *(f"--gin_file={f}" for f in gin_files),
            *(f"--gin_search_paths={p}" for p in search_paths), *train_flags,
            *(f"--gin_bindings={b}" for b in list(bindings) + overrides)]
    rc = subprocess.run(argv, env=_child_env(cache_dir)).returncode
    if rc != 0:
        raise UsageError(f"training run {mixture} failed (exit {rc}, output above); fix it and re-run the "
                         f"same command: finished runs are reused")
    rows = _read_jsonl(os.path.join(model_dir, "eval", "metrics.jsonl"))
    if not rows:
        raise UsageError("the gin config gives trainer.train no evaluator, so runs cannot be scored; set "
                         "trainer.train.evaluator = @evaluation.SeqioEvaluator() (see local_tiny.gin)")
    last = rows[-1]
    return {k: float(v) for k, v in last.items() if k != "step"}, int(last["step"])


def _read_jsonl(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _child_env(cache_dir: str | None) -> dict[str, str]:
    """The environment of a run: the shared compilation cache (every run compiles the same programs),
    and more patience for virtual-CPU-device collectives, which XLA aborts after 40 s by default: too
    soon on an oversubscribed host, while a genuinely stuck run still fails in 5 minutes."""
    env = dict(os.environ)
    if cache_dir and not env.get("JAX_COMPILATION_CACHE_DIR"):
        env.update(JAX_COMPILATION_CACHE_DIR=cache_dir, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    flags = env.get("XLA_FLAGS", "")
    if "xla_cpu_collective_call_terminate_timeout_seconds" not in flags:
        env["XLA_FLAGS"] = (flags + " --xla_cpu_collective_call_terminate_timeout_seconds=300").strip()
    return env


def _worker(argv: Sequence[str]) -> int:
    """Child process of one run: register the run's mixtures, then `ext5 train ARGS`."""
    import ext5.tasks  # noqa: F401
    from ext5 import cli
    from ext5.data import registry
    spec_path, train_argv = argv[0], list(argv[1:])
    for flag in train_argv:  # user task modules must be registered before mixtures over their tasks
        if flag.startswith("--module_import="):
            importlib.import_module(flag.split("=", 1)[1])
    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    for name, rates in spec["mixtures"].items():
        registry.add_mixture(name, sorted(rates.items()), origin=_MODULE)
    return cli.main(train_argv)


def run(gin_files: Sequence[str], bindings: Sequence[str] = (), *, out_dir: str,
        families: Sequence[str] | None = None, steps: int | None = None, mixture: str | None = None,
        search_paths: Sequence[str] = (), single_format: str | None = None, pair_format: str | None = None,
        train_flags: Sequence[str] = (), cache_dir: str | None = "",
        log: Callable[[str], None] = lambda s: print(s, flush=True)) -> TransferResult:
    """Train every single-family and family-pair run and write the transfer matrix (see module doc).

    `mixture` (default: the gin's MIXTURE_OR_TASK_NAME) supplies the tasks, their families and rates;
    `single_format`/`pair_format` use already registered mixtures instead of registering them here.
    `train_flags` are passed on to each run's `ext5 train` (e.g. --tfds_data_dir=..., --module_import=...);
    `cache_dir` is the runs' shared JAX compilation cache ("" = OUT/.jax_cache, None = none).
    """
    from ext5 import config
    from ext5.experiments import mixture_info
    t_start = time.time()
    config.parse(gin_files, list(bindings) + [f"MODEL_DIR = {out_dir!r}"], search_paths)
    module = config.macro("MIXTURE_OR_TASK_MODULE")
    if module:
        importlib.import_module(module)
    import ext5.tasks  # noqa: F401
    steps = int(steps if steps is not None else config.macro("TRAIN_STEPS"))  # recorded with each run's scores
    base = mixture or config.macro("MIXTURE_OR_TASK_NAME")
    if not base:
        raise UsageError("no base mixture: pass --mixture or set MIXTURE_OR_TASK_NAME in the gin config")
    if bool(single_format) != bool(pair_format):
        raise UsageError("--single_mixture and --pair_mixture go together (e.g. exmix_{a} and exmix_pair_{a}_{b})")
    groups = family_rates(base, families)
    chosen = list(groups)
    runs = (registered_runs(chosen, single_format, pair_format) if single_format
            else register_mixtures(groups))
    from ext5.data import mixing
    mixtures = {} if single_format else {
        name: (mixing.shares(groups[fams[0]]) if len(fams) == 1
               else mixing.pair_rates(groups[fams[0]], groups[fams[1]], cap=None))
        for name, fams in runs.items()}
    if cache_dir == "":
        cache_dir = os.path.join(os.path.abspath(out_dir), ".jax_cache")
    log(f"[transfer] base mixture {base}: families {', '.join(chosen)}; {len(runs)} runs "
        f"({len(chosen)} single + {len(runs) - len(chosen)} pairs), "
        f"{steps} steps each -> {out_dir}")

    single: dict[str, float] = {}
    pair: dict[tuple[str, str], float] = {}
    for i, (name, fams) in enumerate(runs.items(), 1):
        run_dir = os.path.join(out_dir, "runs", name)
        scores_path = os.path.join(run_dir, "scores.json")
        t0 = time.time()
        cached = _load_scores(scores_path, steps)
        label = " + ".join(fams)
        if cached is not None:
            metrics = cached["metrics"]
            log(f"[transfer] run {i}/{len(runs)} {label}: reusing {scores_path}")
        else:
            log(f"[transfer] run {i}/{len(runs)} {label} ({name}) ...")
            metrics, final_step = _train_one(
                gin_files, bindings, search_paths, name, run_dir, steps,
                mixtures={name: mixtures[name]} if name in mixtures else {},
                train_flags=train_flags, cache_dir=cache_dir)
            _write_json(scores_path, {"mixture": name, "families": fams, "steps": steps,
                                      "final_step": final_step, "metrics": metrics})
        by_family = family_scores({k: v for k, v in metrics.items() if k != "step"}, mixture_info.family_of)
        missing = [f for f in fams if f not in by_family]
        if missing:
            raise UsageError(f"run {name} reported no metrics for famil{'ies' if len(missing) > 1 else 'y'} "
                             f"{', '.join(missing)} (got {sorted(metrics)[:6]}); check its evaluator's tasks")
        if len(fams) == 1:
            single[fams[0]] = by_family[fams[0]]
        else:
            a, b = fams
            pair[(a, b)], pair[(b, a)] = by_family[a], by_family[b]
        took = "reused" if cached is not None else f"done in {time.time() - t0:.1f}s"
        log(f"[transfer] run {i}/{len(runs)} {label} {took}: " + ", ".join(f"{f} {by_family[f]:.2f}" for f in fams))

    matrix = transfer_matrix(chosen, single, pair)
    for a, row in zip(chosen, matrix):
        if any(math.isnan(v) for v in row):
            log(f"[transfer] warning: family {a} scored 0 when trained alone, so its relative changes are "
                f"undefined (nan); train longer (--steps)")
    files = write_outputs(out_dir, chosen, matrix, single, pair, base)
    seconds = time.time() - t_start
    log(f"[transfer] wrote {files['csv']} and {files['png']} ({seconds:.1f}s)")
    return TransferResult(chosen, matrix, single, pair, files, seconds)


def _load_scores(path: str, steps: int) -> dict | None:
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    return data if data.get("steps") == steps else None


def _write_json(path: str, data) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------- output
def write_outputs(out_dir: str, families: Sequence[str], matrix: Sequence[Sequence[float]],
                  single: Mapping[str, float], pair: Mapping[tuple[str, str], float], base: str) -> dict[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    files = {"csv": os.path.join(out_dir, "transfer.csv"), "png": os.path.join(out_dir, "transfer.png"),
             "scores": os.path.join(out_dir, "scores.csv"), "json": os.path.join(out_dir, "transfer.json")}
    with open(files["csv"], "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["evaluated\\co_trained", *families])
        for a, row in zip(families, matrix):
            w.writerow([a, *(f"{v:.6g}" for v in row)])
    with open(files["scores"], "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["evaluated", "co_trained", "score"])
        for a in families:
            w.writerow([a, "", f"{single[a]:.6g}"])
            for b in families:
                if a != b:
                    w.writerow([a, b, f"{pair[(a, b)]:.6g}"])
    _write_json(files["json"], {
        "base_mixture": base, "families": list(families), "relative_change": [list(r) for r in matrix],
        "single": dict(single), "pair": {f"{a}{PAIR_SEPARATOR}{b}": v for (a, b), v in pair.items()}})
    heatmap(families, matrix, files["png"], title=f"co-training transfer on {base}",
            diagonal=[f"alone\n{single[f]:.1f}" for f in families])
    return files


def heatmap(families: Sequence[str], matrix: Sequence[Sequence[float]], path: str, title: str = "",
            diagonal: Sequence[str] | None = None) -> str:
    """Annotated heatmap of relative change (%), diverging colormap centred at 0; `diagonal` labels
    the diagonal cells (e.g. the single-family scores) instead of their 0."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    m = 100.0 * np.array(matrix, dtype=float)
    finite = m[np.isfinite(m)]
    vmax = max(float(np.abs(finite).max()) if finite.size else 0.0, 1e-6)
    n = len(families)
    fig, ax = plt.subplots(figsize=(1.1 * n + 2.5, 0.9 * n + 1.8))
    im = ax.imshow(np.ma.masked_invalid(m), cmap="RdBu", vmin=-vmax, vmax=vmax)
    ax.set_xticks(range(n), families, rotation=45, ha="right")
    ax.set_yticks(range(n), families)
    ax.set_xlabel("co-trained family")
    ax.set_ylabel("evaluated family")
    for i in range(n):
        for j in range(n):
            v = m[i, j]
            text = "n/a" if not np.isfinite(v) else f"{v:+.1f}"
            if i == j and diagonal is not None:
                text = diagonal[i]
            ax.text(j, i, text, ha="center", va="center", fontsize=9,
                    color="white" if np.isfinite(v) and abs(v) > 0.6 * vmax else "black")
    fig.colorbar(im, ax=ax, label="relative change over single-family training (%)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


if __name__ == "__main__":  # one run of the experiment in its own process (see _train_one)
    sys.exit(_worker(sys.argv[1:]))
