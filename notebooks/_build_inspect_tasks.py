"""Writes inspect_tasks.ipynb from the cells below (run: .venv/bin/python notebooks/_build_inspect_tasks.py).

Keeping the notebook's source here makes reviews readable diffs; the committed .ipynb has no outputs.
"""
from pathlib import Path

import nbformat

CELLS = [
("md", """# Inspecting ext5's seqio tasks and mixtures

What the model will actually see: the registered mixtures, a mixture's rates, examples as text and as
tokens, packed batches with their segment boundaries, and token-length histograms. Everything here runs
offline on `local_default`, the embedded default mixture (generated data, packaged SentencePiece model).
Open it in Colab or run it locally (`.venv/bin/jupyter notebook notebooks/inspect_tasks.ipynb`)."""),
("code", """# Install ext5 on Colab; a no-op where ext5 is already importable (e.g. the project's .venv kernel).
import importlib.util, subprocess, sys
EXT5_REQUIREMENT = "ext5 @ git+https://github.com/YOUR_ORG/ext5.git"  # edit: where your ext5 lives
if importlib.util.find_spec("ext5") is None:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", EXT5_REQUIREMENT])
    # As the Makefile: promptsource 0.2.3 is sdist-only and declares python<3.10.
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                           "--ignore-requires-python", "promptsource==0.2.3"])
else:
    print("ext5 already installed:", importlib.util.find_spec("ext5").origin)"""),
("code", """import os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
import logging
logging.getLogger("absl").setLevel(logging.ERROR)  # seqio logs every dataset it builds

import numpy as np
import pandas as pd
import matplotlib.pyplot as plt
import seqio
import tensorflow as tf
tf.get_logger().setLevel("ERROR")

import ext5.tasks  # registers every ext5 task and mixture (from one explicit list)
from ext5.data import mixing, packing, registry

MIXTURE = "local_default"
LENGTHS = {"inputs": 128, "targets": 32}  # local_tiny.gin's TASK_FEATURE_LENGTHS
pd.set_option("display.max_colwidth", 120)"""),
("md", "## Registered mixtures\n\nEvery mixture `import ext5.tasks` registers, with the module that registered it."),
("code", """mixtures = pd.DataFrame(
    [(name, len(seqio.get_mixture_or_task(name).tasks), registry.ORIGINS.get(name, "?"))
     for name in sorted(seqio.MixtureRegistry.names())],
    columns=["mixture", "tasks", "registered by"])
print(f"{len(seqio.TaskRegistry.names())} tasks, {len(mixtures)} mixtures registered")
mixtures"""),
("md", """## `local_default`: rates and shares

seqio samples each task with probability rate / total rate. `local_default` is examples-proportional:
a task's rate is its number of training examples (no cap)."""),
("code", """mixture = seqio.get_mixture_or_task(MIXTURE)
rates = {t.name: float(mixture.get_rate(t)) for t in mixture.tasks}
shares = mixing.shares(rates)  # ext5.data.mixing: rate / total rate
table = pd.DataFrame({
    "task": list(rates),
    "train examples": [t.num_input_examples("train") for t in mixture.tasks],
    "rate": list(rates.values()),
    "share": [shares[name] for name in rates],
}).sort_values("share", ascending=False).reset_index(drop=True)
assert abs(table["share"].sum() - 1) < 1e-9
table.style.format({"share": "{:.1%}", "rate": "{:,.0f}", "train examples": "{:,}"})"""),
("code", """fig, ax = plt.subplots(figsize=(7, 0.35 * len(table) + 1))
ax.barh(table["task"][::-1], table["share"][::-1])
for y, s in enumerate(table["share"][::-1]):
    ax.text(s, y, f" {s:.1%}", va="center")
ax.set_xlabel("share of sampled examples"); ax.set_title(f"{MIXTURE}: mixing shares")
ax.set_xlim(0, table["share"].max() * 1.25); plt.tight_layout(); plt.show()"""),
("md", """## Examples as text and as tokens

`inputs_pretokenized`/`targets_pretokenized` are the rendered strings; `inputs`/`targets` are the token ids
(with EOS = 1 appended). Span corruption shows its sentinels (`<extra_id_0>`, ...) after decoding."""),
("code", """def examples(task_name, n, split="validation", **kw):
    task = seqio.get_mixture_or_task(task_name)
    ds = task.get_dataset(sequence_length=LENGTHS, split=split, shuffle=False, seed=0, **kw)
    return list(ds.take(n).as_numpy_iterator())

vocab = seqio.get_mixture_or_task("local_nli").output_features["inputs"].vocabulary
text = lambda ids: vocab.decode([int(i) for i in ids])
rows = []
for name in ("local_nli", "local_scan", "local_span_corruption"):
    for ex in examples(name, 2):
        rows.append({"task": name,
                     "inputs (decoded)": text(ex["inputs"]), "targets (decoded)": text(ex["targets"]),
                     "len(inputs)": len(ex["inputs"]), "len(targets)": len(ex["targets"])})
pd.DataFrame(rows)"""),
("code", """ex = examples("local_nli", 1)[0]
print("inputs_pretokenized:", ex["inputs_pretokenized"].decode())
print("targets_pretokenized:", ex["targets_pretokenized"].decode())
pieces = vocab.tokenizer.id_to_piece  # the SentencePiece model behind seqio's vocabulary
pd.DataFrame({"id": ex["inputs"], "piece": [pieces(int(i)) if i < vocab.tokenizer.get_piece_size() else "<extra>"
                                            for i in ex["inputs"]]}).T"""),
("md", """## Packed batches

Training packs several examples into each row (`ext5.data.packing`, best-fit): `*_segment_ids` number the
examples in a row (0 = padding) and `*_positions` restart at 0 for each one. Below: one batch of 8 rows from
the mixture, each colour one example, and the fill (fraction of real tokens)."""),
("code", """ds = mixture.get_dataset(sequence_length=LENGTHS, split="train", shuffle=True, seed=0)
stream = [{"inputs": e["inputs"], "targets": e["targets"]} for e in ds.take(400).as_numpy_iterator()]
batches = list(packing.batch_rows(packing.pack(stream, LENGTHS), 8))
fill = packing.fill_rate(batches)
per_row = np.mean([len(packing.unpack_row({k: v[i] for k, v in b.items()})) for b in batches for i in range(8)])
print(f"{len(stream)} examples -> {len(batches)} batches of 8 rows; {per_row:.1f} examples per row; "
      f"fill: inputs {fill['inputs']:.1%}, targets {fill['targets']:.1%}")
unpacked_fill = packing.fill_rate(packing.batch_rows(packing.pad(stream, LENGTHS), 8))
print(f"without packing (one example per row): inputs {unpacked_fill['inputs']:.1%}, "
      f"targets {unpacked_fill['targets']:.1%}")"""),
("code", """batch = batches[0]
fig, axes = plt.subplots(1, 2, figsize=(12, 3), gridspec_kw={"width_ratios": [4, 1]})
for ax, key, title in ((axes[0], "encoder_segment_ids", "encoder (inputs)"),
                       (axes[1], "decoder_segment_ids", "decoder (targets)")):
    seg = np.ma.masked_equal(batch[key], 0)  # padding stays white
    ax.imshow(seg, aspect="auto", interpolation="nearest", cmap="tab20")
    ax.set_title(f"{title}: segment ids"); ax.set_xlabel("position"); ax.set_ylabel("row")
plt.tight_layout(); plt.show()
rows = [{k: v[i] for k, v in batch.items()} for i in range(len(batch["encoder_segment_ids"]))]
fullest = max(range(len(rows)), key=lambda i: len(packing.unpack_row(rows[i])))
print(f"row {fullest} of the batch, segment by segment:")
pd.DataFrame([{"segment": i + 1, "inputs": text(inp), "targets": text(tgt)}
              for i, (inp, tgt) in enumerate(packing.unpack_row(rows[fullest]))])"""),
("md", """## Token lengths per task

Histograms of input and target lengths (validation split, untruncated); the dashed line is the feature
length a longer example is truncated to in training."""),
("code", """lengths = {}
for task in mixture.tasks:
    exs = examples(task.name, 150, trim_output_features=False)
    lengths[task.name] = ([len(e["inputs"]) for e in exs], [len(e["targets"]) for e in exs])
fig, axes = plt.subplots(1, 2, figsize=(12, 3.5))
for side, ax in enumerate(axes):
    key = ("inputs", "targets")[side]
    for name, ls in lengths.items():
        ax.hist(ls[side], bins=30, histtype="step", label=name)
    ax.axvline(LENGTHS[key], color="k", ls="--"); ax.set_title(f"{key} length (tokens)")
axes[1].legend(fontsize=7); plt.tight_layout(); plt.show()
pd.DataFrame({name: {"inputs p50": np.median(i), "inputs max": max(i), "targets p50": np.median(t),
                     "targets max": max(t), "truncated": np.mean((np.array(i) > LENGTHS["inputs"]) |
                                                                 (np.array(t) > LENGTHS["targets"]))}
              for name, (i, t) in lengths.items()}).T"""),
]


def build() -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(src) if kind == "md" else nbformat.v4.new_code_cell(src)
                for kind, src in CELLS]
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                   "language_info": {"name": "python"}, "colab": {"provenance": []}}
    return nb


if __name__ == "__main__":
    out = Path(__file__).with_name("inspect_tasks.ipynb")
    nbformat.write(build(), out)
    print("wrote", out)
