"""Family co-training transfer (ExT5 Figure 1): scoring rules, and the whole experiment at tiny scale on CPU."""
import csv
import math

import numpy as np
import pytest

from ext5.commands import experiment
from ext5.errors import UsageError
from ext5.experiments import transfer


def test_family_scores_average_metrics_per_task_then_tasks_per_family():
    fam = {"t_a1": "a", "t_a2": "a", "t_b": "b"}.__getitem__
    got = transfer.family_scores({"t_a1/em": 10.0, "t_a1/f1": 30.0, "t_a2/accuracy": 60.0,
                                  "t_b/rouge1": 5.0, "t_b/rouge2": 1.0}, fam)
    assert got == pytest.approx({"a": (20.0 + 60.0) / 2, "b": 3.0})


def test_relative_change_and_matrix():
    assert transfer.relative_change(60.0, 50.0) == pytest.approx(0.2)
    assert transfer.relative_change(40.0, 50.0) == pytest.approx(-0.2)
    assert transfer.relative_change(0.0, 0.0) == 0.0
    assert math.isnan(transfer.relative_change(5.0, 0.0))
    fams = ["a", "b", "c"]
    single = {"a": 50.0, "b": 20.0, "c": 10.0}
    pair = {("a", "b"): 55.0, ("b", "a"): 10.0, ("a", "c"): 50.0, ("c", "a"): 12.0,
            ("b", "c"): 30.0, ("c", "b"): 5.0}
    m = np.array(transfer.transfer_matrix(fams, single, pair))
    # row = evaluated family, column = co-trained family
    np.testing.assert_allclose(m, [[0.0, 0.1, 0.0], [-0.5, 0.0, 0.5], [0.2, -0.5, 0.0]])


def test_pair_mixtures_are_equal_between_and_proportional_within_families():
    import seqio
    import ext5.tasks  # noqa: F401
    groups = {"x": {"local_nli": 3000.0, "local_rc": 1000.0}, "y": {"local_classify": 3000.0}}
    runs = transfer.register_mixtures(groups)
    assert runs == {"transfer_x": ["x"], "transfer_y": ["y"], "transfer_x__y": ["x", "y"]}
    mix = seqio.get_mixture_or_task("transfer_x__y")
    rates = {t.name: mix.get_rate(t) for t in mix.tasks}
    assert rates == pytest.approx({"local_nli": 0.375, "local_rc": 0.125, "local_classify": 0.5})


def test_unknown_or_unscorable_family_is_a_one_line_error():
    import ext5.tasks  # noqa: F401
    with pytest.raises(UsageError, match="family 'nope' is not in mixture 'local_default'"):
        transfer.family_rates("local_default", ["nli", "nope"])
    with pytest.raises(UsageError, match="no task with metrics"):
        transfer.family_rates("local_default", ["nli", "span_corruption"])
    assert "span_corruption" not in transfer.family_rates("local_default", None)


def test_transfer_experiment_end_to_end_tiny(tmp_path, capsys):
    out = tmp_path / "transfer"
    argv = ["transfer", "--gin_file=experiments/transfer_tiny.gin", "--families", "nli,classify,summarize",
            "--steps", "8", "--out", str(out), "--gin.BATCH_SIZE=8",
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 16}",
            "--gin.evaluation.SeqioEvaluator.num_examples=16", "--gin.evaluation.SeqioEvaluator.batch_size=16"]
    assert experiment.main(argv) == 0
    log = capsys.readouterr().out
    assert "run 6/6 classify + summarize done" in log

    with open(out / "transfer.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["evaluated\\co_trained", "nli", "classify", "summarize"]
    assert [r[0] for r in rows[1:]] == ["nli", "classify", "summarize"]
    m = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
    assert m.shape == (3, 3) and np.all(np.isfinite(m)), m
    np.testing.assert_array_equal(np.diag(m), 0.0)
    # The matrix is what the per-run scores say: (pair - single) / single.
    scores = {(r[0], r[1]): float(r[2]) for r in csv.reader(open(out / "scores.csv")) if r[0] != "evaluated"}
    fams = ["nli", "classify", "summarize"]
    for i, a in enumerate(fams):
        for j, b in enumerate(fams):
            if a != b:
                assert m[i, j] == pytest.approx((scores[(a, b)] - scores[(a, "")]) / scores[(a, "")], rel=1e-4)

    png = out / "transfer.png"
    assert png.stat().st_size > 10_000
    import matplotlib.image
    img = matplotlib.image.imread(str(png))
    assert img.shape[0] > 200 and img.shape[1] > 200 and float(img[..., :3].std()) > 0.05  # not blank

    # Re-running with the same arguments reuses every run's scores instead of training again.
    assert experiment.main(argv) == 0
    assert capsys.readouterr().out.count(" reused: ") == 6
