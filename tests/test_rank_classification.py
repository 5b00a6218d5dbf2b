"""Rank classification: preprocessing rows, the metric, choice grouping, and shared-encoder scoring in eval."""
from __future__ import annotations

import numpy as np
import pytest
import seqio
import tensorflow as tf

import ext5.tasks  # noqa: F401  (registers local tasks)
from ext5.data import rank_classification as rc
from ext5.eval.evaluator import choice_groups


def _examples():
    return tf.data.Dataset.from_tensor_slices({
        "premise": ["a cat sleeps", "it rains", "the sun"],
        "label": [2, 0, 1],
        "w": [1.0, 2.0, 0.5],
    })


def test_rows_per_choice_in_eval_train_and_fewshot_modes():
    kw = dict(inputs_formats="p: {premise}", targets_formats=["yes", "maybe {premise}", "no"], weight_key="w")
    rows = list(rc.rank_classification_formatter(_examples(), mode="eval", **kw).as_numpy_iterator())
    assert len(rows) == 9
    assert [tuple(r["idx"]) for r in rows[:4]] == [(0, 0), (0, 1), (0, 2), (1, 0)]
    assert [bool(r["is_correct"]) for r in rows[:6]] == [False, False, True, True, False, False]
    assert rows[1]["targets"] == b"maybe a cat sleeps" and rows[4]["inputs"] == b"p: it rains"
    assert [float(r["weight"]) for r in rows[::3]] == [1.0, 2.0, 0.5]
    train = list(rc.rank_classification_formatter(_examples(), mode="train", **kw).as_numpy_iterator())
    assert [tuple(r["idx"]) for r in train] == [(0, 2), (1, 0), (2, 1)]
    assert all(r["is_correct"] for r in train)
    few = list(rc.rank_classification_formatter(_examples(), mode="fewshot_eval", **kw).as_numpy_iterator())
    assert len(few) == 3 and few[0]["targets"].shape == (3,)
    with pytest.raises(ValueError, match="mode"):
        rc.rank_classification(_examples(), inputs_fn=None, targets_fn=None, is_correct_fn=None, mode="test")


def test_multi_answer_labels_and_per_choice_inputs():
    ds = tf.data.Dataset.from_tensor_slices({"q": ["x", "y"], "label": tf.ragged.constant([[0, 2], [1]])})
    rows = list(rc.rank_classification_formatter(
        ds, inputs_formats=["{q} 0", "{q} 1", "{q} 2"], targets_formats=["a", "b", "c"]).as_numpy_iterator())
    assert [bool(r["is_correct"]) for r in rows] == [True, False, True, False, True, False]
    assert rows[2]["inputs"] == b"x 2"


def _t(i, c, correct, w=1.0, n=2):
    return ((i, c), correct, w, n)


def test_metric_accuracy_f1_weights_and_length_normalisation():
    targets = [_t(0, 0, True), _t(0, 1, False), _t(1, 0, False), _t(1, 1, True), _t(2, 0, True), _t(2, 1, False)]
    scores = [-1.0, -2.0, -1.0, -3.0, -5.0, -4.0]  # predictions: 0 (right), 0 (wrong), 1 (wrong)
    out = rc.rank_classification_metric(targets, scores, num_classes=2)
    assert out["accuracy"] == pytest.approx(100 / 3)
    # Class 1 F1: tp 0 -> 0.
    assert out["f1"] == 0.0
    # Shuffled rows give the same result (the metric sorts by idx).
    perm = [3, 0, 5, 1, 4, 2]
    assert rc.rank_classification_metric([targets[i] for i in perm], [scores[i] for i in perm])["accuracy"] \
        == pytest.approx(100 / 3)
    # Weights: example 0 counts 3x.
    weighted = [_t(0, 0, True, 3.0), _t(0, 1, False, 3.0)] + targets[2:]
    assert rc.rank_classification_metric(weighted, scores)["accuracy"] == pytest.approx(100 * 3 / 5)
    # Length normalisation flips a long correct choice with a higher per-token likelihood.
    long_t = [_t(0, 0, True, n=10), _t(0, 1, False, n=1)]
    assert rc.rank_classification_metric(long_t, [-5.0, -2.0])["accuracy"] == 0.0
    assert rc.rank_classification_metric(long_t, [-5.0, -2.0], normalize_by_target_length=True)["accuracy"] == 100.0
    # 3 classes: macro F1 over classes (hand-computed).
    t3 = [_t(i, c, c == g) for i, g in enumerate([0, 1, 2, 2]) for c in range(3)]
    s3 = [0.0 if c == p else -1.0 for p in [0, 1, 1, 2] for c in range(3)]
    m = rc.rank_classification_metric(t3, s3, num_classes=3)
    assert m["accuracy"] == 75.0
    assert m["mean_3class_f1"] == pytest.approx(100 * (1.0 + 2 / 3 + 2 / 3) / 3)


def test_choice_groups_split_runs_of_identical_inputs():
    inputs = np.array([[1, 2], [1, 2], [1, 2], [3, 4], [3, 4], [1, 2]])
    assert choice_groups(inputs, 16) == [(0, 3), (3, 5), (5, 6)]
    assert choice_groups(inputs, 2) == [(0, 2), (2, 3), (3, 5), (5, 6)]


def test_local_score_task_rows_and_postprocessing():
    task = seqio.get_mixture_or_task("local_nli_score_eval")
    ds = task.get_dataset({"inputs": 128, "targets": 8}, split="validation", shuffle=False).take(6)
    rows = list(ds.as_numpy_iterator())
    assert [tuple(r["idx"]) for r in rows] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert sum(bool(r["is_correct"]) for r in rows[:3]) == 1
    assert np.array_equal(rows[0]["inputs"], rows[2]["inputs"])
    post = rc.postprocess(None, example=rows[1], is_target=True)
    assert post[0] == (0, 1) and post[2] == 1.0 and post[3] == np.count_nonzero(rows[1]["targets"])
    assert rc.postprocess(-1.5, example=rows[1]) == -1.5


def test_evaluator_scores_shared_encoder_rows_like_one_row_at_a_time():
    from _util import random_params
    from ext5.eval.evaluator import SeqioEvaluator
    from ext5.model import configs, scoring
    from ext5.model.t5 import Transformer
    cfg = configs.get_config("tiny", vocab_size=1152, emb_dim=32, num_heads=2, head_dim=8, mlp_dim=48,
                             num_encoder_layers=2, num_decoder_layers=2, dtype="float32")
    params = random_params(cfg, 0, 0.1)
    lengths = {"inputs": 64, "targets": 8}
    ev = SeqioEvaluator("local_nli_score_eval", lengths, cfg, num_examples=12, batch_size=8, max_choices=3)
    task = seqio.get_mixture_or_task("local_nli_score_eval")
    ds = task.get_dataset(lengths, split="validation", shuffle=False).take(12)
    conv = seqio.EncDecFeatureConverter(pack=False)(ds, lengths)
    got = dict(ev.score_fn(params, conv.enumerate()))
    rows = list(conv.as_numpy_iterator())
    batch = {k: np.stack([r[k] for r in rows]) for k in
             ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens")}
    want = scoring.score(Transformer(cfg), params, batch)
    np.testing.assert_allclose([got[i] for i in range(12)], want, rtol=1e-5, atol=1e-4)
    # The seqio metric path turns them into accuracy over the 4 examples.
    metrics = ev(params, step=0)
    assert set(metrics) == {"local_nli_score_eval/accuracy", "local_nli_score_eval/mean_3class_f1"}
    assert metrics["local_nli_score_eval/accuracy"] in (0.0, 25.0, 50.0, 75.0, 100.0)
