"""t5x's configurable names, translated to ext5's at the command-line edge.

A t5x user writes `partitioning.PjitPartitioner.num_partitions = 2`, `utils.DatasetConfig.batch_size = 8`,
`utils.SaveCheckpointConfig.period = 100`, `utils.create_learning_rate_scheduler.factors = ...`,
`network.T5Config.emb_dim = 512` or `trainer.Trainer.num_microbatches = 4`, in `--gin.NAME=VALUE` flags,
`--gin_bindings`, or a gin file that imports them `from t5x`. ext5 has its own classes for these jobs, so
rather than register look-alike configurables (which would be separate objects: a binding on one would not
reach the other), `ext5.config` rewrites the names here before gin sees them. A t5x name, or a parameter of
one, that ext5 does not support is a one-line `T5xNameError` naming ext5's equivalent.

Plain text in, plain text out: this module does not import gin (nor anything of ext5's).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Mapping


class T5xNameError(ValueError):
    """A t5x name that ext5 does not support; the message names ext5's equivalent."""


def _same(*names: str) -> dict[str, str]:
    return {n: n for n in names}


@dataclasses.dataclass(frozen=True)
class Alias:
    """One t5x configurable: ext5's configurable that does its job, and the parameters that carry over."""

    ext5: str
    params: Mapping[str, str]


# t5x configurable -> ext5 configurable. Only parameters with the same meaning in both are mapped.
ALIASES: dict[str, Alias] = {
    "partitioning.PjitPartitioner": Alias("partitioning.PartitionConfig",
                                          _same("num_partitions", "logical_axis_rules")),
    "utils.DatasetConfig": Alias("trainer.DatasetConfig", _same(
        "mixture_or_task_name", "task_feature_lengths", "split", "batch_size", "shuffle", "seed",
        "use_cached", "pack", "module")),
    "utils.SaveCheckpointConfig": Alias("trainer.CheckpointConfig", _same("period", "keep")),
    "utils.create_learning_rate_scheduler": Alias("optimizer.create_learning_rate_scheduler", _same(
        "factors", "base_learning_rate", "warmup_steps", "decay_factor", "steps_per_decay",
        "steps_per_cycle", "min_learning_rate")),
    "network.T5Config": Alias("configs.get_config", _same(
        "vocab_size", "dtype", "emb_dim", "num_heads", "num_encoder_layers", "num_decoder_layers", "head_dim",
        "mlp_dim", "mlp_activations", "dropout_rate", "logits_via_embedding", "remat_policy", "scan_layers")),
    "trainer.Trainer": Alias("trainer.train", _same("num_microbatches")),
}

# t5x configurables ext5 has no alias for, with where their job lives in ext5.
UNSUPPORTED: dict[str, str] = {
    "utils.RestoreCheckpointConfig": "INITIAL_CHECKPOINT_PATH (train) or CHECKPOINT_PATH (eval, infer)",
    "train_script.train": "trainer.train (or the macros TRAIN_STEPS, EVAL_PERIOD, RANDOM_SEED)",
    "train.train": "trainer.train (or the macros TRAIN_STEPS, EVAL_PERIOD, RANDOM_SEED)",
    "eval_script.evaluate": "eval_run.evaluate (gin file eval.gin)",
    "infer_script.infer": "eval_run.infer (gin file infer.gin)",
    "models.EncoderDecoderModel": "MODEL = @configs.get_config() with the macros Z_LOSS and "
                                  "LOSS_NORMALIZING_FACTOR",
    "network.Transformer": "MODEL = @configs.get_config()",
    "adafactor.Adafactor": "OPTIMIZER = @optimizer.adafactor",
}

# t5x modules (as imported in t5x's gin files) -> the ext5 imports that bind the translated names.
_MODULE_IMPORTS = {
    "partitioning": ["from ext5.train import partitioning"],
    "utils": ["from ext5.train import optimizer", "from ext5.train import trainer"],
    "network": ["from ext5.model import configs"],
    "trainer": ["from ext5.train import trainer"],
}
# t5x's own gin files that ext5 ships under another name.
_INCLUDES = [(re.compile(r"^t5x/configs/runs/(pretrain|finetune|eval|infer)\.gin$"), r"\1.gin"),
             (re.compile(r"^t5x/examples/t5/t5_1_1/(small|base|large|xl|xxl)\.gin$"), r"t5_1_1_\1.gin")]
_T5X_ONLY_CLASSES = ("PjitPartitioner", "SaveCheckpointConfig", "Trainer", "T5Config")


def _lookup(selector: str, roots: Mapping[str, str] | None = None) -> str | None:
    """The t5x name (`module.Name`) `selector` refers to, or None. `roots` maps a gin file's import aliases
    to t5x module names (`from t5x import utils as u` -> {"u": "utils"})."""
    parts = selector.split(".")
    if roots and len(parts) >= 2 and parts[0] in roots:
        parts = [roots[parts[0]]] + parts[1:]
    name = ".".join(parts)
    for key in list(ALIASES) + list(UNSUPPORTED):
        # `t5x.utils.DatasetConfig` and `utils.DatasetConfig` are t5x names; a bare `DatasetConfig` is also
        # ext5's, so only class names that exist in t5x alone are matched bare.
        if name == key or name.endswith("." + key) or (name == key.split(".")[-1] and name in _T5X_ONLY_CLASSES):
            return key
    return None


def translate_selector(selector: str, roots: Mapping[str, str] | None = None) -> str:
    """ext5's configurable for a t5x one (`partitioning.PjitPartitioner` -> `partitioning.PartitionConfig`);
    any other selector unchanged."""
    key = _lookup(selector, roots)
    if key is None:
        return selector
    if key not in ALIASES:
        raise T5xNameError(f"t5x's {key} is not supported by ext5; use {UNSUPPORTED[key]}")
    return ALIASES[key].ext5


def translate_param(selector: str, param: str, roots: Mapping[str, str] | None = None) -> tuple[str, str]:
    """(ext5 selector, ext5 parameter) for a t5x `selector.param`; others unchanged."""
    key = _lookup(selector, roots)
    if key is None:
        return selector, param
    new = translate_selector(selector, roots)
    alias = ALIASES[key]
    if param not in alias.params:
        raise T5xNameError(f"t5x's {key}.{param} has no ext5 equivalent; ext5's {alias.ext5} accepts t5x's "
                           f"{', '.join(sorted(alias.params))}")
    return new, alias.params[param]


_REF = re.compile(r"@((?:[A-Za-z_][\w.]*/)*)([A-Za-z_][\w.]*)")


def _translate_refs(value: str, roots: Mapping[str, str] | None = None) -> str:
    """`@utils.create_learning_rate_scheduler()` -> `@optimizer.create_learning_rate_scheduler()`, etc."""
    return _REF.sub(lambda m: "@" + m.group(1) + translate_selector(m.group(2), roots), value)


_BINDING = re.compile(r"^(\s*)((?:[A-Za-z_][\w.]*/)*)([A-Za-z_][\w.]*)\.([A-Za-z_]\w*)(\s*=)(.*)$", re.S)


def translate_binding(binding: str, roots: Mapping[str, str] | None = None) -> str:
    """One gin binding `[scope/]selector.param = value` with t5x's names replaced by ext5's."""
    m = _BINDING.match(binding)
    if not m:  # a macro (`NAME = value`) or something gin will reject with its own message
        head, eq, value = binding.partition("=")
        return head + eq + _translate_refs(value, roots) if eq else binding
    indent, scope, selector, param, eq, value = m.groups()
    selector, param = translate_param(selector, param, roots)
    return f"{indent}{scope}{selector}.{param}{eq}{_translate_refs(value, roots)}"


_FROM_T5X = re.compile(r"^from\s+t5x(?:\.[\w.]+)?\s+import\s+(\w+)(?:\s+as\s+(\w+))?\s*(#.*)?$")
_IMPORT_T5X = re.compile(r"^import\s+t5x\.(?:[\w.]+\.)?(\w+)(?:\s+as\s+(\w+))?\s*(#.*)?$")
_MAIN_ALIAS = re.compile(r"^import\s+__main__\s+as\s+(\w+)\s*(#.*)?$")
_INCLUDE = re.compile(r"""^include\s+(['"])(.+)\1\s*(#.*)?$""")
_BLOCK = re.compile(r"^((?:[A-Za-z_][\w.]*/)*)([A-Za-z_][\w.]*)\s*:\s*(#.*)?$")
_BLOCK_PARAM = re.compile(r"^(\s+)([A-Za-z_]\w*)(\s*=.*)$", re.S)


def translate_config(text: str) -> str:
    """A gin file's text with t5x's imports, includes and names replaced by ext5's (unchanged when it uses
    none). Handles single bindings, `selector:` blocks, `@references` and t5x's run/model gin includes."""
    roots: dict[str, str] = {}
    out: list[str] = []
    block: str | None = None  # the t5x selector of the `selector:` block being read
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\n")
        if block is not None and body.strip() and not body[0].isspace():
            block = None
        if not body.strip() or body.lstrip().startswith("#"):
            out.append(line)
            continue
        m = _FROM_T5X.match(body) or _IMPORT_T5X.match(body)
        if m:
            module, alias = m.group(1), m.group(2) or m.group(1)
            roots[alias] = module
            out.extend(s + "\n" for s in _MODULE_IMPORTS.get(module, [f"# (t5x's {module}: not used by ext5)"]))
            continue
        m = _MAIN_ALIAS.match(body)
        if m:  # t5x's `import __main__ as train_script`: its names get UNSUPPORTED's hint when used
            roots[m.group(1)] = "train_script"
            out.append(f"# (t5x's __main__ as {m.group(1)}: not used by ext5)\n")
            continue
        m = _INCLUDE.match(body)
        if m and m.group(2).startswith("t5x/"):
            path = m.group(2)
            for pattern, repl in _INCLUDES:
                if pattern.match(path):
                    out.append(f"include '{pattern.sub(repl, path)}'\n")
                    break
            else:
                raise T5xNameError(f"include {path!r}: ext5 ships no copy of this t5x gin file; include ext5's "
                                   f"(runs: pretrain/finetune/eval/infer.gin, models: t5_1_1_<size>.gin)")
            continue
        m = _BLOCK.match(body)
        if m:
            key = _lookup(m.group(2), roots)
            block = m.group(2) if key else None
            new = translate_selector(m.group(2), roots)
            out.append(f"{m.group(1)}{new}:{' ' + m.group(3) if m.group(3) else ''}\n")
            continue
        m = _BLOCK_PARAM.match(body)
        if block is not None and m:
            _, param = translate_param(block, m.group(2), roots)
            out.append(f"{m.group(1)}{param}{_translate_refs(m.group(3), roots)}\n")
            continue
        out.append(translate_binding(body, roots) + ("\n" if line.endswith("\n") else ""))
    return "".join(out)


def hint_for_unknown(selector: str) -> str | None:
    """For gin's "No configurable matching X": a sentence naming ext5's equivalent when X is a t5x name."""
    key = _lookup(selector)
    if key in UNSUPPORTED:
        return f"{selector!r} is t5x's; ext5's equivalent is {UNSUPPORTED[key]}"
    root = selector.split(".")[0]
    if root in ("utils", "network", "models", "adafactor", "train_script", "t5x"):
        names = ", ".join(f"{k} (-> {a.ext5})" for k, a in ALIASES.items())
        return f"{selector!r} looks like a t5x name ext5 does not support; ext5 accepts these t5x names: {names}"
    return None
