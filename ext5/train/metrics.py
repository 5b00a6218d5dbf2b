"""Metric writers (clu/TensorBoard when available, always JSONL), the terminal progress line, and plots.

clu's writers import TensorFlow; they are loaded lazily so the trainer still runs where TF is absent.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any, Mapping, Protocol


class Writer(Protocol):
    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class JsonlWriter:
    """One JSON object per write: {"step": s, name: value, ...}; what the loss plot and tests read."""

    def __init__(self, path: str):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.path = path
        self._f = open(path, "a", encoding="utf-8")

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        self._f.write(json.dumps({"step": int(step), **{k: float(v) for k, v in scalars.items()}}) + "\n")
        self._f.flush()

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def write_step_json(directory: str, step: int, scalars: Mapping[str, float]) -> str:
    """`directory/metrics_step<step>.json`, a flat {"task/metric": value} object (what `ext5 report` reads),
    written atomically (temp file + rename) so a reader never sees half a file."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"metrics_step{int(step)}.json")
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({k: float(v) for k, v in scalars.items()}, f, indent=1, sort_keys=True)
    os.replace(tmp, path)
    return path


class StepJsonWriter:
    """Each write becomes its own `metrics_step<N>.json` (evaluation results: one file per evaluated step)."""

    def __init__(self, directory: str):
        self.directory = directory

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        write_step_json(self.directory, step, scalars)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class MultiWriter:
    def __init__(self, writers: list[Any]):
        self.writers = writers

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        for w in self.writers:
            w.write_scalars(step, scalars)

    def flush(self) -> None:
        for w in self.writers:
            w.flush()

    def close(self) -> None:
        for w in self.writers:
            w.close()


class _NullWriter:
    def write_scalars(self, step, scalars): pass
    def flush(self): pass
    def close(self): pass


def create_writer(model_dir: str, name: str = "train", *, is_chief: bool = True,
                  tensorboard: bool = True) -> Writer:
    """Writers for MODEL_DIR/<name> on the chief host, nothing elsewhere: TensorBoard (clu) + metrics.jsonl,
    and for "eval" also a metrics_step<N>.json per evaluation (the layout `ext5 eval` writes too)."""
    if not is_chief:
        return _NullWriter()
    return create_dir_writer(os.path.join(model_dir, name), tensorboard=tensorboard, step_json=name == "eval")


def create_dir_writer(directory: str, *, tensorboard: bool = True, jsonl: bool = True,
                      step_json: bool = False) -> Writer:
    """TensorBoard events (clu, when TF is importable), metrics.jsonl and/or metrics_step<N>.json in `directory`."""
    writers: list[Any] = [JsonlWriter(os.path.join(directory, "metrics.jsonl"))] if jsonl else []
    if step_json:
        writers.append(StepJsonWriter(directory))
    if tensorboard:
        try:
            from clu import metric_writers  # imports TensorFlow
            writers.append(metric_writers.create_default_writer(directory, asynchronous=False))
        except ImportError as e:  # TF/tensorboard absent: JSONL only.
            logging.info("TensorBoard writer unavailable (%s); writing JSONL only", e)
    return MultiWriter(writers)


def read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _fmt_rate(x: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= div:
            return f"{x / div:.1f}{unit}"
    return f"{x:.0f}"


def _fmt_time(s: float) -> str:
    s = int(max(s, 0))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Progress:
    """A progress line per log period: step, loss, accuracy, lr, tokens/s, TFLOP/s/device, MFU, ETA."""

    def __init__(self, total_steps: int, start_step: int, stream=None):
        self.total, self.start = total_steps, start_step
        self.t0 = time.time()
        self.stream = stream or sys.stdout

    def line(self, step: int, m: Mapping[str, float]) -> str:
        done = step - self.start
        eta = (time.time() - self.t0) / max(done, 1) * (self.total - step)
        mfu = f"{m['mfu']:.1%}" if m.get("mfu") is not None else "n/a"
        return (f"step {step:>6}/{self.total} | loss {m['loss']:.4f} | acc {m['accuracy']:.3f} | "
                f"lr {m.get('learning_rate', float('nan')):.2e} | {_fmt_rate(m.get('tokens_per_sec', 0))} tok/s | "
                f"{m.get('tflops_per_device', 0.0):.3f} TFLOP/s/dev | MFU {mfu} | eta {_fmt_time(eta)}")

    def print(self, step: int, m: Mapping[str, float]) -> None:
        print(self.line(step, m), file=self.stream, flush=True)


def plot_curves(jsonl_path: str, png_path: str, keys: tuple[str, ...] = ("loss", "accuracy"),
                eval_jsonl: str | None = None) -> str:
    """Write a PNG of training curves (loss and accuracy against step), plus eval metrics when present."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_jsonl(jsonl_path)
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.6))
    axes = [axes] if len(keys) == 1 else list(axes)
    for ax, key in zip(axes, keys):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        if pts:
            ax.plot(*zip(*pts), label=f"train {key}")
        ax.set_xlabel("step")
        ax.set_title(key)
        ax.grid(alpha=0.3)
    if eval_jsonl and os.path.exists(eval_jsonl):
        erows = read_jsonl(eval_jsonl)
        ax = axes[-1]
        names = sorted({k for r in erows for k in r if k != "step" and k.endswith("accuracy")})
        for name in names:
            pts = [(r["step"], r[name] / (100.0 if r[name] > 1 else 1.0)) for r in erows if name in r]
            ax.plot(*zip(*pts), marker="o", linestyle="--", label=name)
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return png_path
