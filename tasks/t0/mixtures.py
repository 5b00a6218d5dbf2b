"""T0's mixtures as (task name, rate) lists, computed from the catalog alone (no data is read).

  t0_train, t0+_train, t0++_train  every template of the mixture's training datasets; rate per task =
                                   train_size if <= 500,000 else 500000 // num_templates (T0 paper)
  t0_eval_score_eval               held-out datasets, original-task templates only, rank classification
  t0_train_one_og_prompt           T0's ablation: one original-task template per t0 dataset (the first
                                   in promptsource's sorted template order), same rates
  t0_train_all_og_prompts          T0's ablation: every original-task template of the t0 datasets
"""
from __future__ import annotations

from ext5.tasks.t0 import catalog

EVAL_MIXTURE = "t0_eval_score_eval"


def train_mixture_name(mixture: str) -> str:
    return f"{mixture}_train"


def _train_tasks(mixture: str) -> list[catalog.PromptTask]:
    keys = {d.key for d in catalog.train_datasets(mixture)}
    return [t for t in catalog.prompt_tasks() if t.dataset.key in keys and t.round is None]


def mixtures() -> dict[str, list[tuple[str, float]]]:
    """Mixture name -> [(task name, rate)], in catalog order."""
    out = {train_mixture_name(m): [(t.name, float(t.rate)) for t in _train_tasks(m)]
           for m in catalog.MIXTURES}
    out[EVAL_MIXTURE] = [(t.score_eval_name, 1.0) for t in catalog.prompt_tasks()
                         if t.dataset.eval_cluster and t.original_task and t.has_answer_choices]
    og = [t for t in _train_tasks("t0") if t.original_task]
    first: dict[tuple, catalog.PromptTask] = {}
    for t in og:  # prompt_tasks() lists templates in promptsource's sorted order
        first.setdefault(t.dataset.key, t)
    out["t0_train_one_og_prompt"] = [(t.name, float(t.rate)) for t in first.values()]
    out["t0_train_all_og_prompts"] = [(t.name, float(t.rate)) for t in og]
    return out
