"""seqio metric functions and postprocessors (t5.evaluation is not a dependency).

Each metric is `fn(targets, predictions) -> {name: value}` on a 0-100 scale, as in
t5.evaluation.metrics, so seqio.Evaluator can call them and numbers are comparable with
published T5 results. Only numpy and the standard library are used.
"""
from __future__ import annotations

import collections
import re
import string
from typing import Any, Mapping, Sequence

import numpy as np


# ---------------------------------------------------------------------------- helpers
_PUNCT = frozenset(string.punctuation)


def _to_str(x: Any) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def normalize_squad(text: str) -> str:
    """SQuAD v1.1 normalisation: lowercase, drop punctuation, articles and extra whitespace."""
    text = _to_str(text).lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _token_f1(target_tokens: Sequence[str], prediction_tokens: Sequence[str]) -> float:
    common = collections.Counter(prediction_tokens) & collections.Counter(target_tokens)
    num_same = sum(common.values())
    if not target_tokens and not prediction_tokens:
        return 1.0
    if num_same == 0:
        return 0.0
    precision = num_same / len(prediction_tokens)
    recall = num_same / len(target_tokens)
    return 2 * precision * recall / (precision + recall)


# ---------------------------------------------------------------------------- metrics
def accuracy(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
    """Exact-match accuracy (labels compared as strings after postprocessing)."""
    if not targets:
        return {"accuracy": 0.0}
    return {"accuracy": 100.0 * float(np.mean([t == p for t, p in zip(targets, predictions)]))}


def sequence_accuracy(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """Whole-sequence accuracy after whitespace stripping (t5's sequence_accuracy)."""
    if not targets:
        return {"sequence_accuracy": 0.0}
    return {"sequence_accuracy": 100.0 * float(np.mean(
        [_to_str(t).strip() == _to_str(p).strip() for t, p in zip(targets, predictions)]))}


def squad(targets: Sequence[Sequence[str]], predictions: Sequence[str]) -> dict[str, float]:
    """SQuAD EM and F1: max over the reference answers of each example, then mean."""
    em, f1 = [], []
    for answers, pred in zip(targets, predictions):
        if isinstance(answers, (str, bytes)):
            answers = [answers]
        p = normalize_squad(pred)
        refs = [normalize_squad(a) for a in answers]
        em.append(max(float(p == r) for r in refs))
        f1.append(max(_token_f1(r.split(), p.split()) for r in refs))
    n = max(len(em), 1)
    return {"em": 100.0 * sum(em) / n, "f1": 100.0 * sum(f1) / n}


def _ngrams(tokens: Sequence[str], n: int) -> collections.Counter:
    return collections.Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def _f(overlap: float, n_pred: int, n_ref: int) -> float:
    if n_pred == 0 or n_ref == 0 or overlap == 0:
        return float(n_pred == n_ref == 0)
    p, r = overlap / n_pred, overlap / n_ref
    return 2 * p * r / (p + r)


def _rouge_tokens(text: str) -> list[str]:
    # rouge_score's default tokenizer: lowercase, non-alphanumerics are separators.
    return re.sub(r"[^a-z0-9]+", " ", _to_str(text).lower()).split()


def rouge(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """ROUGE-1/2/L F-measure (mean over examples), rouge_score-style tokenisation, no stemming."""
    scores = collections.defaultdict(list)
    for t, p in zip(targets, predictions):
        tt, pt = _rouge_tokens(t), _rouge_tokens(p)
        for n in (1, 2):
            overlap = sum((_ngrams(tt, n) & _ngrams(pt, n)).values())
            scores[f"rouge{n}"].append(
                _f(overlap, max(len(pt) - n + 1, 0), max(len(tt) - n + 1, 0)))
        scores["rougeLsum"].append(_f(_lcs(tt, pt), len(pt), len(tt)))
    return {k: 100.0 * float(np.mean(v)) for k, v in scores.items()} if scores else {
        "rouge1": 0.0, "rouge2": 0.0, "rougeLsum": 0.0}


# ---------------------------------------------------------------------------- postprocessors
def postprocess_text(output: Any, example: Mapping[str, Any] | None = None,
                     is_target: bool = False) -> str:
    """Decoded text -> stripped str."""
    del example, is_target
    return _to_str(output).strip()


def postprocess_squad(output: Any, example: Mapping[str, Any] | None = None,
                      is_target: bool = False) -> Any:
    """Predictions -> stripped str; targets -> the example's list of reference answers."""
    if is_target and example is not None and "answers" in example:
        return [_to_str(a) for a in np.asarray(example["answers"]).reshape(-1)]
    return _to_str(output).strip()
