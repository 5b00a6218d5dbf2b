"""`ext5 inspect MIXTURE_OR_TASK`: what a mixture is made of and what its examples look like.

  ext5 inspect local_default
  ext5 inspect exmix --num_examples 0 --stats_examples 0        # rates only: reads no data
  ext5 inspect local_default --task_feature_lengths inputs=128,targets=32 --plot /tmp/plots

Prints (1) the rates table: task, family, examples, rate, share, origin (the module that registered
it), sorted by share, with a totals line and a per-family summary; (2) a few rendered examples per
task (the text the model sees: tokens decoded, sentinels included); (3) token-length statistics per
task (mean/median/p95/max of inputs and targets, and the fraction longer than the feature lengths,
i.e. truncated in training). The rates need no data; (2) and (3) read at most
max(--num_examples, --stats_examples) examples per task.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import time
from typing import TYPE_CHECKING, Any, Sequence

from ext5.errors import UsageError

if TYPE_CHECKING:  # the data stack (TF, seqio) loads only when a command runs
    from ext5.experiments.mixture_info import TaskRow

DEFAULT_LENGTHS = {"inputs": 512, "targets": 114}  # ExT5's pre-training lengths


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ext5 inspect", allow_abbrev=False,
                                description="Rates, examples and token lengths of a seqio mixture or task.")
    p.add_argument("name", metavar="MIXTURE_OR_TASK", help="registered seqio mixture or task name")
    p.add_argument("--split", default="train", help="split to count and read (default: train)")
    p.add_argument("--num_examples", type=int, default=3,
                   help="rendered examples shown per task (default 3; 0 = none)")
    p.add_argument("--stats_examples", type=int, default=200,
                   help="examples per task read for the length statistics (default 200; 0 = no statistics)")
    p.add_argument("--task_feature_lengths", default=None,
                   help="feature lengths for the truncation fraction, e.g. inputs=512,targets=114 (the default)")
    p.add_argument("--plot", metavar="DIR", default=None,
                   help="write shares.png (family and task shares) and lengths.png (histograms) to DIR")
    p.add_argument("--download", action="store_true",
                   help="let TFDS download and prepare datasets that are not prepared yet (default: skip them)")
    p.add_argument("--max_chars", type=int, default=300, help="longest rendered text shown (default 300)")
    p.add_argument("--tfds_data_dir", default=None, help="TFDS data dir (seqio.set_tfds_data_dir_override)")
    p.add_argument("--module_import", action="append", default=[],
                   help="module to import first, to register your own tasks (repeatable)")
    return p


def parse_lengths(text: str | None) -> dict[str, int]:
    """`inputs=512,targets=114` -> {"inputs": 512, "targets": 114}."""
    if not text:
        return dict(DEFAULT_LENGTHS)
    out: dict[str, int] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in ("inputs", "targets") or not value.strip().isdigit() or int(value) <= 0:
            raise UsageError(f"--task_feature_lengths {text!r} is malformed; use inputs=N,targets=M "
                             f"with positive integers, e.g. inputs=512,targets=114")
        out[key] = int(value)
    missing = {"inputs", "targets"} - set(out)
    if missing:
        raise UsageError(f"--task_feature_lengths needs both inputs and targets (missing {', '.join(sorted(missing))});"
                         f" e.g. inputs=512,targets=114")
    return out


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    for flag in ("num_examples", "stats_examples"):
        if getattr(args, flag) < 0:
            raise UsageError(f"--{flag} must be >= 0, got {getattr(args, flag)}")
    lengths = parse_lengths(args.task_feature_lengths)
    for m in args.module_import:
        try:
            importlib.import_module(m)
        except ImportError as e:
            raise UsageError(f"--module_import {m}: {e}; check the module name and PYTHONPATH") from None

    if args.tfds_data_dir:
        import seqio
        seqio.set_tfds_data_dir_override(args.tfds_data_dir)
    import ext5.tasks  # noqa: F401  registers every ext5 task and mixture
    from ext5.data import pipeline, registry
    from ext5.experiments import mixture_info

    provider = pipeline.get_provider(args.name)  # one-line error with near misses for unknown names
    # seqio warns once per task that an uncached task is counted by input examples: that is the intent.
    logging.getLogger("absl").setLevel(logging.ERROR)
    try:
        table = mixture_info.rows(provider, args.split)
    except ValueError as e:
        raise UsageError(str(e)) from None
    kind = "task" if len(table) == 1 and table[0].task == args.name else "mixture"
    families = mixture_info.by_family(table)
    print(f"{kind} {args.name}: {len(table)} task{'s' * (len(table) != 1)} in {len(families)} "
          f"famil{'ies' if len(families) != 1 else 'y'}, registered by {registry.ORIGINS.get(args.name, '?')}; "
          f"examples counted in split '{args.split}'\n")
    print(format_rates(table))
    print()
    print(format_families(families))

    need = max(args.num_examples, args.stats_examples)
    if need == 0:
        return 0
    samples = read_examples(table, args.split, lengths, need, download=args.download)
    if args.num_examples:
        print(f"\nexamples (split '{args.split}', first {args.num_examples} per task, as the model sees them)")
        for r in table:
            print(format_examples(r.task, samples[r.task], args.num_examples, args.max_chars))
    stats = None
    if args.stats_examples:
        stats = {r.task: length_stats(samples[r.task].get("examples", [])[:args.stats_examples], lengths)
                 for r in table}
        print(f"\ntoken lengths (split '{args.split}', up to {args.stats_examples} examples per task; "
              f"truncated = longer than inputs={lengths['inputs']}, targets={lengths['targets']})")
        print(format_stats(table, stats))
    if args.plot:
        paths = plot(table, families, samples, lengths, args.plot)
        print("\nwrote " + ", ".join(paths))
    return 0


# ---------------------------------------------------------------------------------------------- rates
def _fmt_num(x: float) -> str:
    return f"{x:,.0f}" if float(x).is_integer() and abs(x) >= 1 else f"{x:.4g}"


def format_rates(table: list[TaskRow]) -> str:
    """The rates table with a totals line; shares in percent (they sum to 100%)."""
    head = ("task", "family", "examples", "rate", "share", "origin")
    body = [(r.task, r.family, "?" if r.examples is None else f"{r.examples:,}", _fmt_num(r.rate),
             f"{100 * r.share:.2f}%", r.origin) for r in table]
    known = [r.examples for r in table if r.examples is not None]
    unknown = len(table) - len(known)
    total_examples = f"{sum(known):,}" + (f" (+{unknown} ?)" if unknown else "") if known else "?"
    fams = len({r.family for r in table})
    total = (f"total: {len(table)} tasks", f"{fams} families", total_examples,
             _fmt_num(sum(r.rate for r in table)), f"{100 * sum(r.share for r in table):.2f}%", "")
    return _table(head, body, total, right=(2, 3, 4))


def format_families(families: dict[str, list[TaskRow]]) -> str:
    """Per-family task count, examples and share."""
    head = ("family", "tasks", "examples", "share")
    body = []
    for fam, rs in families.items():
        known = [r.examples for r in rs if r.examples is not None]
        ex = (f"{sum(known):,}" + ("+?" if len(known) < len(rs) else "")) if known else "?"
        body.append((fam, str(len(rs)), ex, f"{100 * sum(r.share for r in rs):.2f}%"))
    return _table(head, body, None, right=(1, 2, 3))


def _table(head: tuple, body: list[tuple], total: tuple | None, right: tuple[int, ...] = ()) -> str:
    rows = [head] + body + ([total] if total else [])
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(head))]

    def line(r):
        return "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(r, widths))).rstrip()

    rule = "-" * len(line(head))
    out = [line(head), rule] + [line(r) for r in body]
    if total:
        out += [rule, line(total)]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------- examples
def read_examples(table: list[TaskRow], split: str, lengths: dict[str, int], n: int, *,
                  download: bool = False) -> dict[str, dict[str, Any]]:
    """Up to n untrimmed tokenized examples per task: {task: {"examples": [...]} or {"error": "..."}}.

    Tasks are read without sequence lengths (so nothing is trimmed and truncation can be measured),
    except tasks whose output depends on the lengths (span corruption builds inputs to fit them):
    those get `lengths`, as in training. Unless `download`, TFDS datasets that are not prepared
    locally are skipped (seqio would download and prepare them, which can take hours).
    """
    import seqio
    out: dict[str, dict[str, Any]] = {}
    t0 = time.time()
    for i, r in enumerate(table, 1):
        print(f"[inspect] reading {n} examples of {r.task} ({i}/{len(table)}, {time.time() - t0:.0f}s)",
              file=sys.stderr, flush=True)
        try:
            task = seqio.get_mixture_or_task(r.task)
            if not download:
                _check_prepared(task)
            ds = task.get_dataset(sequence_length=lengths if _length_dependent(task) else None, split=split, shuffle=False, num_epochs=1,
                                  trim_output_features=False, use_cached=False)
            exs = list(ds.take(n).as_numpy_iterator())
            vocab = {k: f.vocabulary for k, f in task.output_features.items()}
            out[r.task] = {"examples": exs, "vocab": vocab}
        except Exception as e:  # noqa: BLE001  data not prepared/downloadable: say so, go on
            out[r.task] = {"error": f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"}
    return out


def _check_prepared(task) -> None:
    """Raise if the task reads a TFDS dataset that is not prepared in the TFDS data dir."""
    import seqio
    src = task.source
    if not isinstance(src, seqio.TfdsDataSource):
        return
    builder = src.tfds_dataset.builder
    if not builder.is_prepared():
        raise FileNotFoundError(f"TFDS {src.tfds_dataset.name} is not prepared in {builder.data_dir}; "
                                f"prepare it (`tfds build`), point --tfds_data_dir at a prepared copy, "
                                f"or pass --download")


def _length_dependent(task) -> bool:
    """Whether a preprocessor other than seqio's EOS/trim step takes `sequence_length` (seqio passes it
    to any preprocessor that accepts it)."""
    import functools
    import inspect
    import seqio
    trims = {seqio.preprocessors.append_eos_after_trim, seqio.preprocessors.append_eos}
    for prep in task.preprocessors:
        fn = prep.func if isinstance(prep, functools.partial) else prep
        if fn in trims:
            continue
        try:
            if "sequence_length" in inspect.signature(prep).parameters:
                return True
        except (TypeError, ValueError):  # builtins/objects without a signature
            continue
    return False


def _text(ex: dict, key: str, vocab: dict) -> str:
    """What the model sees: the tokens decoded (sentinels included); the raw text if not tokenized."""
    value = ex.get(key)
    if value is not None and getattr(value, "dtype", None) is not None and value.dtype.kind in "iu":
        return vocab[key].decode([int(t) for t in value])
    raw = ex.get(f"{key}_pretokenized", value)
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


def _clip(s: str, n: int) -> str:
    s = " ".join(s.split())
    return s if len(s) <= n else s[: n - 1] + "…"


def format_examples(task: str, sample: dict, k: int, max_chars: int) -> str:
    """The first k examples of one task (or why its data is not available)."""
    lines = [f"== {task}"]
    if "error" in sample:
        return "\n".join(lines + [f"  (data not available: {sample['error']})"])
    exs = sample["examples"][:k]
    if not exs:
        lines.append("  (no examples in this split)")
    for j, ex in enumerate(exs):
        for key in ("inputs", "targets"):
            if key in ex:
                lines.append(f"  [{j}] {key:7s} {_clip(_text(ex, key, sample['vocab']), max_chars)}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- stats
def length_stats(examples: list[dict], lengths: dict[str, int]) -> dict[str, dict[str, float]]:
    """{feature: {n, mean, median, p95, max, truncated}} of token lengths (EOS included)."""
    import numpy as np
    out = {}
    for key in ("inputs", "targets"):
        ls = np.array([len(ex[key]) for ex in examples if key in ex], dtype=np.float64)
        if ls.size == 0:
            continue
        out[key] = {"n": int(ls.size), "mean": float(ls.mean()), "median": float(np.median(ls)),
                    "p95": float(np.percentile(ls, 95)), "max": float(ls.max()),
                    "truncated": float(np.mean(ls > lengths[key]))}
    return out


def format_stats(table: list[TaskRow], stats: dict[str, dict]) -> str:
    """Per-task token-length table (inputs and targets)."""
    head = ("task", "n", "in mean", "in med", "in p95", "in max", "in trunc",
            "tg mean", "tg med", "tg p95", "tg max", "tg trunc")
    body = []
    for r in table:
        s = stats.get(r.task) or {}
        row = [r.task, str(s.get("inputs", s.get("targets", {})).get("n", 0))]
        for key in ("inputs", "targets"):
            f = s.get(key)
            row += ([f"{f['mean']:.1f}", f"{f['median']:.0f}", f"{f['p95']:.0f}", f"{f['max']:.0f}",
                     f"{100 * f['truncated']:.1f}%"] if f else ["-"] * 5)
        body.append(tuple(row))
    return _table(head, body, None, right=tuple(range(1, len(head))))


# ----------------------------------------------------------------------------------------------- plot
def plot(table: list[TaskRow], families: dict[str, list[TaskRow]], samples: dict[str, dict], lengths: dict[str, int], out_dir: str) -> list[str]:
    """shares.png (share by family + top tasks) and, when examples were read, lengths.png."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    os.makedirs(out_dir, exist_ok=True)
    paths = []

    fams = list(families)
    fam_share = [100 * sum(r.share for r in families[f]) for f in fams]
    top = table[:25]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, max(4, 0.3 * max(len(fams), len(top)) + 1.5)))
    colors = {f: plt.cm.tab10(i % 10) for i, f in enumerate(fams)}
    a1.barh(fams[::-1], fam_share[::-1], color=[colors[f] for f in fams[::-1]])
    a1.set_xlabel("share of examples (%)")
    a1.set_title(f"{len(fams)} families")
    for y, v in enumerate(fam_share[::-1]):
        a1.text(v, y, f" {v:.1f}%", va="center", fontsize=8)
    a2.barh([r.task for r in top][::-1], [100 * r.share for r in top][::-1],
            color=[colors[r.family] for r in top][::-1])
    a2.set_xlabel("share of examples (%)")
    a2.set_title(f"top {len(top)} of {len(table)} tasks" if len(top) < len(table) else f"{len(table)} tasks")
    a2.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "shares.png"))
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    per_family: dict[str, dict[str, list[int]]] = {}
    for r in table:
        for ex in (samples or {}).get(r.task, {}).get("examples", []):
            d = per_family.setdefault(r.family, {"inputs": [], "targets": []})
            for key in ("inputs", "targets"):
                if key in ex:
                    d[key].append(len(ex[key]))
    if per_family:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4))
        for ax, key in zip(axes, ("inputs", "targets")):
            names = [f for f in fams if per_family.get(f, {}).get(key)]
            ax.hist([per_family[f][key] for f in names], bins=30, stacked=True,
                    color=[colors[f] for f in names], label=names)
            ax.axvline(lengths[key], color="k", ls="--", lw=1)
            ax.set_title(f"{key} tokens (dashed: feature length {lengths[key]})")
            ax.set_xlabel("tokens")
            ax.set_ylabel("examples")
        axes[1].legend(fontsize=7)
        fig.tight_layout()
        paths.append(os.path.join(out_dir, "lengths.png"))
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    return paths
