"""ExMIX and ExT5 mixtures, with rates computed from the catalogue sizes (no data is read).

  exmix                      all 107 tasks, examples-proportional, capped at 300,000 per task
  exmix_<family>             the tasks of one family (8), same rule
  exmix_random_{30,55,80}    random subsets of that size (random.Random(RANDOM_SUBSET_SEED)
                             .sample over the sorted task names), same rule
  exmix_pair_<famA>_<famB>   family pairs for the transfer study: half the examples from each
                             family, examples-proportional within each (28 pairs)
  ext5                       c4_span_corruption + exmix at ratio R = C4 examples per ExMIX
                             example (C4 rate = R x the summed ExMIX rates); R = 2 by default.
                             The paper swept R, so 2 is a starting point to tune:
                             ext5_mixture(ratio=R) registers `ext5_r<R>` (gin:
                             MIXTURE_OR_TASK_NAME = @mixtures.ext5_mixture() with
                             mixtures.ext5_mixture.ratio = 4.0).
Downstream fine-tune / eval mixtures (the ExMIX tasks reused):
  ext5_superglue (8), ext5_gem (the GEM rows), ext5_rainbow (6), ext5_cbqa (NQ, TriviaQA, WebQ).
"""
from __future__ import annotations

import itertools
import random
from typing import Iterable, Mapping

from ext5.data import mixing, registry
from ext5.tasks import c4
from ext5.tasks.exmix.catalog import FAMILIES, load_catalog, rows_by_family, sizes

ORIGIN = "ext5.tasks.exmix.mixtures"
CAP = 300_000
RANDOM_SUBSET_SEED = 2021
RANDOM_SUBSET_SIZES = (30, 55, 80)
DEFAULT_C4_RATIO = 2.0

SUPERGLUE = ("exmix_boolq", "exmix_cb", "exmix_copa", "exmix_multirc", "exmix_record",
             "exmix_rte", "exmix_wic", "exmix_wsc")
RAINBOW = ("exmix_alpha_nli", "exmix_cosmos_qa", "exmix_hellaswag", "exmix_piqa",
           "exmix_social_iqa", "exmix_winogrande")
CBQA = ("exmix_natural_questions", "exmix_trivia_qa", "exmix_web_questions")


def gem_tasks() -> tuple[str, ...]:
    """Rows whose TFDS builder is a GEM task (gem/...)."""
    return tuple(r.task for r in load_catalog() if r.tfds_name.startswith("gem/"))


def random_subset(k: int, seed: int = RANDOM_SUBSET_SEED) -> list[str]:
    """k task names drawn without replacement, reproducibly."""
    return sorted(random.Random(seed).sample(sorted(sizes()), k))


def _add(name: str, rates: Mapping[str, float]) -> str:
    registry.add_mixture(name, list(rates.items()), origin=ORIGIN)
    return name


def _proportional(name: str, tasks: Iterable[str], cap: int | None = CAP) -> str:
    all_sizes = sizes()
    return _add(name, mixing.examples_proportional_rates({t: all_sizes[t] for t in tasks}, cap))


def exmix_rates(cap: int | None = CAP) -> dict[str, float]:
    """Unnormalised rates of the exmix mixture."""
    return mixing.examples_proportional_rates(sizes(), cap)


def ext5_rates(ratio: float = DEFAULT_C4_RATIO, cap: int | None = CAP) -> dict[str, float]:
    """exmix rates plus c4_span_corruption at `ratio` x their sum."""
    if not ratio > 0:
        raise ValueError(f"C4:ExMIX ratio must be > 0, got {ratio!r}")
    rates = exmix_rates(cap)
    return {c4.TASK_NAME: ratio * sum(rates.values()), **rates}


def ext5_mixture(ratio: float = DEFAULT_C4_RATIO) -> str:
    """Registers the C4 + ExMIX mixture at `ratio` and returns its name: `ext5` for the
    default R = 2, `ext5_r<R>` otherwise (e.g. ext5_r4, ext5_r0_5)."""
    name = "ext5" if ratio == DEFAULT_C4_RATIO else "ext5_r" + f"{ratio:g}".replace(".", "_")
    return _add(name, ext5_rates(ratio))


def pair_name(a: str, b: str) -> str:
    return f"exmix_pair_{a}_{b}"


def register() -> list[str]:
    """(Re-)registers every mixture above; returns their names."""
    names = [_add("exmix", exmix_rates())]
    families = rows_by_family()
    for fam, rows in families.items():
        names.append(_proportional(f"exmix_{fam}", [r.task for r in rows]))
    for k in RANDOM_SUBSET_SIZES:
        names.append(_proportional(f"exmix_random_{k}", random_subset(k)))
    for a, b in itertools.combinations(FAMILIES, 2):
        sa = {r.task: r.num_train_examples for r in families[a]}
        sb = {r.task: r.num_train_examples for r in families[b]}
        names.append(_add(pair_name(a, b), mixing.pair_rates(sa, sb, CAP)))
    names.append(ext5_mixture(DEFAULT_C4_RATIO))
    names.append(_proportional("ext5_superglue", SUPERGLUE, cap=None))
    names.append(_proportional("ext5_gem", gem_tasks(), cap=None))
    names.append(_proportional("ext5_rainbow", RAINBOW, cap=None))
    names.append(_proportional("ext5_cbqa", CBQA, cap=None))
    return names
