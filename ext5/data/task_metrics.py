"""Task metrics: seqio metric functions and postprocessors (t5.evaluation is not a dependency).

Each metric is `fn(targets, predictions) -> {name: value}` on a 0-100 scale, as in
t5.evaluation.metrics, so seqio.Evaluator can call them and numbers are comparable with
published T5 results. Only numpy and the standard library are used. (Writing metrics to TensorBoard
and JSONL is ext5.train.metrics.)
"""
from __future__ import annotations

import collections
import re
import string
from typing import Any, Mapping, Sequence

import numpy as np


# ---------------------------------------------------------------------------- helpers
_PUNCT = frozenset(string.punctuation)


def to_str(x: Any) -> str:
    """A decoded str of bytes (numpy/TF outputs) or of any other value."""
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def normalize_squad(text: str) -> str:
    """SQuAD v1.1 normalisation: lowercase, drop punctuation, articles and extra whitespace."""
    text = to_str(text).lower()
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
        [to_str(t).strip() == to_str(p).strip() for t, p in zip(targets, predictions)]))}


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
    return re.sub(r"[^a-z0-9]+", " ", to_str(text).lower()).split()


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
    return to_str(output).strip()


def postprocess_squad(output: Any, example: Mapping[str, Any] | None = None,
                      is_target: bool = False) -> Any:
    """Predictions -> stripped str; targets -> the example's list of reference answers."""
    if is_target and example is not None and "answers" in example:
        return [to_str(a) for a in np.asarray(example["answers"]).reshape(-1)]
    return to_str(output).strip()


# ============================================================================ ExMIX additions
# Metrics below accept, per example, a target that is a str or a list of reference strings
# (multi-reference tasks keep all references for evaluation; see tasks/exmix). Classification
# metrics compare label words; `positive` names the positive class where one is needed.
def references(target: Any) -> list[str]:
    """A target (str, list of str, or {"references": [...]}) as a non-empty list of strings."""
    if isinstance(target, Mapping):
        target = target.get("references", [])
    if isinstance(target, (str, bytes)):
        return [to_str(target)]
    refs = [to_str(t) for t in np.asarray(target, dtype=object).reshape(-1)]
    return refs or [""]


def first_reference(target: Any) -> str:
    """The first reference of a target (str or list of str)."""
    return references(target)[0]


def exact_match(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
    """SQuAD-normalised exact match against any of the references, in percent."""
    if not targets:
        return {"exact_match": 0.0}
    hits = [max(float(normalize_squad(p) == normalize_squad(r)) for r in references(t))
            for t, p in zip(targets, predictions)]
    return {"exact_match": 100.0 * float(np.mean(hits))}


def token_f1(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
    """SQuAD-normalised token F1, max over references, mean over examples, in percent."""
    if not targets:
        return {"f1": 0.0}
    f1 = [max(_token_f1(normalize_squad(r).split(), normalize_squad(p).split()) for r in references(t))
          for t, p in zip(targets, predictions)]
    return {"f1": 100.0 * float(np.mean(f1))}


def rouge_first_reference(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
    """`rouge` against each example's first reference (as T5 scores multi-reference sets)."""
    return rouge([first_reference(t) for t in targets], [to_str(p) for p in predictions])


def _bleu_tokens(text: str) -> list[str]:
    # sacrebleu's 13a tokeniser, simplified: punctuation split off, case kept.
    text = re.sub(r"([^\w\s])", r" \1 ", to_str(text))
    return text.split()


def bleu(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
    """Corpus BLEU-4 (uniform weights, brevity penalty, multi-reference, no smoothing) in 0-100,
    close to sacrebleu's corpus_bleu with its default 13a tokenisation."""
    matches, totals = [0] * 4, [0] * 4
    hyp_len = ref_len = 0
    for t, p in zip(targets, predictions):
        hyp = _bleu_tokens(p)
        refs = [_bleu_tokens(r) for r in references(t)]
        hyp_len += len(hyp)
        # Closest reference length (ties: shorter), as sacrebleu.
        ref_len += min((abs(len(r) - len(hyp)), len(r)) for r in refs)[1]
        for n in range(1, 5):
            h = _ngrams(hyp, n)
            max_ref: collections.Counter = collections.Counter()
            for r in refs:
                max_ref |= _ngrams(r, n)
            matches[n - 1] += sum((h & max_ref).values())
            totals[n - 1] += max(len(hyp) - n + 1, 0)
    if hyp_len == 0 or min(matches) == 0:
        return {"bleu": 0.0}
    log_p = sum(np.log(m / t) for m, t in zip(matches, totals)) / 4
    bp = 1.0 if hyp_len > ref_len else float(np.exp(1 - ref_len / hyp_len))
    return {"bleu": 100.0 * bp * float(np.exp(log_p))}


def _sari_ngram(src: Sequence[str], pred: Sequence[str], refs: Sequence[Sequence[str]], n: int):
    s, p = _ngrams(src, n), _ngrams(pred, n)
    r_all = [_ngrams(r, n) for r in refs]
    nref = len(refs)
    r_union: collections.Counter = collections.Counter()
    for r in r_all:
        for g, c in r.items():
            r_union[g] += c
    # Reference counts are fractional (averaged over references), as in Xu et al. (2016).
    r_frac = {g: c / nref for g, c in r_union.items()}

    def prf(sel: dict, gold: dict) -> tuple[float, float]:
        inter = sum(min(sel[g], gold.get(g, 0.0)) for g in sel)
        prec = inter / sum(sel.values()) if sel else 1.0
        rec = inter / sum(gold.values()) if gold else 1.0
        return prec, rec

    add_sel = {g: 1.0 for g in p if g not in s}
    add_gold = {g: 1.0 for g in r_frac if g not in s}
    ap, ar = prf(add_sel, add_gold)
    keep_sel = {g: min(s[g], p[g]) for g in p if g in s}
    keep_gold = {g: min(s[g], r_frac[g]) for g in s if g in r_frac}
    kp, kr = prf(keep_sel, keep_gold)
    del_sel = {g: s[g] - p.get(g, 0) for g in s if s[g] > p.get(g, 0)}
    del_gold = {g: s[g] - r_frac.get(g, 0.0) for g in s if s[g] > r_frac.get(g, 0.0)}
    dp, _ = prf(del_sel, del_gold)

    def f(a: float, b: float) -> float:
        return 0.0 if a + b == 0 else 2 * a * b / (a + b)
    return f(ap, ar), f(kp, kr), dp


def sari(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
    """SARI for simplification (add F1, keep F1, delete precision; n = 1..4), in 0-100.

    Each target must be a mapping {"source": str, "references": [str, ...]} (the exmix
    postprocessor builds it from the example's input text); without a source, SARI is
    undefined and the example counts as source = prediction."""
    scores = []
    for t, pred in zip(targets, predictions):
        src = to_str(t.get("source", pred)) if isinstance(t, Mapping) else to_str(pred)
        toks = lambda x: to_str(x).lower().split()  # noqa: E731
        refs = [toks(r) for r in references(t)]
        parts = [_sari_ngram(toks(src), toks(pred), refs, n) for n in range(1, 5)]
        add, keep, dele = (float(np.mean([q[i] for q in parts])) for i in range(3))
        scores.append((add + keep + dele) / 3)
    return {"sari": 100.0 * float(np.mean(scores)) if scores else 0.0}


def f1_from_counts(tp: Any, fp: Any, fn: Any) -> Any:
    """F1 = 2tp / (2tp + fp + fn) from (possibly weighted) counts; 0 when there is no true positive."""
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def _is_positive(targets: Sequence[Any], predictions: Sequence[Any],
                 positive: str) -> tuple[np.ndarray, np.ndarray]:
    """Boolean arrays: which targets (first reference) and predictions are the `positive` label word."""
    return (np.array([first_reference(x) == positive for x in targets]),
            np.array([to_str(x).strip() == positive for x in predictions]))


def _macro_f1(targets: Sequence[set], predictions: Sequence[set]) -> float:
    """Unweighted mean over the labels in the targets of each label's F1, in percent (0 without labels)."""
    f1s = []
    for label in sorted(set().union(*targets)):
        tp = sum(label in a and label in b for a, b in zip(targets, predictions))
        fp = sum(label not in a and label in b for a, b in zip(targets, predictions))
        fn = sum(label in a and label not in b for a, b in zip(targets, predictions))
        f1s.append(f1_from_counts(tp, fp, fn))
    return 100.0 * float(np.mean(f1s)) if f1s else 0.0


def f1_binary(targets: Sequence[Any], predictions: Sequence[Any], *,
              positive: str = "True") -> dict[str, float]:
    """F1 of the `positive` label word (sklearn's binary f1_score), in percent."""
    t, p = _is_positive(targets, predictions, positive)
    tp, fp, fn = int(np.sum(t & p)), int(np.sum(~t & p)), int(np.sum(t & ~p))
    return {"f1": 100.0 * f1_from_counts(tp, fp, fn)}


def f1_macro(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
    """Macro-averaged F1 over the label words present in the targets, in percent."""
    return {"f1_macro": _macro_f1([{first_reference(x)} for x in targets],
                                  [{to_str(x).strip()} for x in predictions])}


def multilabel_f1_macro(targets: Sequence[Any], predictions: Sequence[Any], *,
                        sep: str = ",") -> dict[str, float]:
    """Macro F1 over labels of multi-label targets written as "a, b" (e.g. GoEmotions)."""
    split = lambda s: {x.strip() for x in to_str(s).split(sep) if x.strip()}  # noqa: E731
    return {"f1_macro": _macro_f1([split(first_reference(x)) for x in targets], [split(x) for x in predictions])}


def matthews_corrcoef(targets: Sequence[Any], predictions: Sequence[Any], *,
                      positive: str = "acceptable") -> dict[str, float]:
    """Matthews correlation (binary, `positive` label word), x100 as in T5's GLUE numbers."""
    t, p = _is_positive(targets, predictions, positive)
    tp, tn = float(np.sum(t & p)), float(np.sum(~t & ~p))
    fp, fn = float(np.sum(~t & p)), float(np.sum(t & ~p))
    denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return {"matthews_corrcoef": 100.0 * (float((tp * tn - fp * fn) / denom) if denom else 0.0)}


def _floats(values: Sequence[Any]) -> np.ndarray:
    out = []
    for v in values:
        try:
            out.append(float(first_reference(v)) if not isinstance(v, (int, float)) else float(v))
        except ValueError:
            out.append(np.nan)
    return np.asarray(out, dtype=np.float64)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom else 0.0


def _rankdata(x: np.ndarray) -> np.ndarray:
    # Average ranks for ties (scipy.stats.rankdata's default).
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    for v in np.unique(x):
        idx = x == v
        ranks[idx] = ranks[idx].mean()
    return ranks


def pearson(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
    """Pearson correlation x100 of numeric targets/predictions (unparsable predictions -> 0)."""
    t, p = _floats(targets), np.nan_to_num(_floats(predictions))
    return {"pearson": 100.0 * _pearson(t, p) if len(t) > 1 else 0.0}


def spearman(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
    """Spearman rank correlation x100 (average ranks for ties)."""
    t, p = _floats(targets), np.nan_to_num(_floats(predictions))
    return {"spearman": 100.0 * _pearson(_rankdata(t), _rankdata(p)) if len(t) > 1 else 0.0}


def auc(targets: Sequence[Any], predictions: Sequence[Any], *,
        positive: str = "True") -> dict[str, float]:
    """ROC AUC x100 of hard predictions (prediction == positive label word as the score).

    Decoded text has no score, so this equals balanced accuracy; use rank-classification
    scores for a graded AUC."""
    t, p = _is_positive(targets, predictions, positive)
    s = p.astype(np.float64)
    n_pos, n_neg = int(t.sum()), int((~t).sum())
    if not n_pos or not n_neg:
        return {"auc": 0.0}
    ranks = _rankdata(s)
    return {"auc": 100.0 * float((ranks[t].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))}


def meteor(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
    """METEOR with exact unigram matching only (no stemming/synonyms; alpha 0.9, beta 3,
    gamma 0.5), max over references, x100. A lower bound of NLTK's meteor_score."""
    scores = []
    for t, p in zip(targets, predictions):
        hyp = to_str(p).lower().split()
        best = 0.0
        for ref in (r.lower().split() for r in references(t)):
            used, align = set(), []
            for i, w in enumerate(hyp):
                j = next((j for j, x in enumerate(ref) if x == w and j not in used), None)
                if j is not None:
                    used.add(j)
                    align.append((i, j))
            m = len(align)
            if not m:
                continue
            prec, rec = m / len(hyp), m / len(ref)
            fmean = prec * rec / (0.9 * prec + 0.1 * rec)
            chunks = 1 + sum(1 for (a, b), (c, d) in zip(align, align[1:]) if c != a + 1 or d != b + 1)
            best = max(best, fmean * (1 - 0.5 * (chunks / m) ** 3))
        scores.append(best)
    return {"meteor": 100.0 * float(np.mean(scores)) if scores else 0.0}


def joint_goal_accuracy(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
    """Dialogue state tracking: the predicted "slot=value, ..." set equals the target set."""
    as_set = lambda s: {x.strip().lower() for x in to_str(s).split(",") if x.strip()}  # noqa: E731
    hits = [as_set(first_reference(t)) == as_set(p) for t, p in zip(targets, predictions)]
    return {"joint_goal_accuracy": 100.0 * float(np.mean(hits)) if hits else 0.0}


def postprocess_float(output: Any, example: Mapping[str, Any] | None = None,
                      is_target: bool = False) -> float:
    """Decoded number -> float (NaN when the model wrote no number), as T5's string_to_float."""
    del example, is_target
    try:
        return float(to_str(output).strip())
    except ValueError:
        return float("nan")
