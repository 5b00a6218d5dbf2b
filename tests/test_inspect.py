"""Mixing-rate rules (ext5.data.mixing) and `ext5 inspect`: rates table, examples, lengths, plots, errors."""
import re

import pytest

from ext5 import cli
from ext5.commands import inspect_cmd
from ext5.data import mixing
from ext5.errors import UsageError


# ------------------------------------------------------------------------------------ mixing rules
def test_capped_rate_and_examples_proportional_rates():
    assert mixing.capped_rate(1_000_000, 300_000) == 300_000.0
    assert mixing.capped_rate(1234, 300_000) == 1234.0
    assert mixing.capped_rate(1_000_000, None) == 1_000_000.0
    assert mixing.examples_proportional_rates({"a": 500_000, "b": 100, "c": 0}, 300_000) == {
        "a": 300_000.0, "b": 100.0, "c": 0.0}
    for bad in (-1, float("nan"), True, "3"):
        with pytest.raises(ValueError):
            mixing.capped_rate(bad, 10)
    with pytest.raises(ValueError, match="cap"):
        mixing.capped_rate(5, 0)


def test_shares_sum_to_one_and_keep_order():
    s = mixing.shares({"b": 1.0, "a": 3.0})
    assert list(s) == ["b", "a"] and s == pytest.approx({"b": 0.25, "a": 0.75})
    with pytest.raises(ValueError, match="sum to 0"):
        mixing.shares({"a": 0.0})


def test_pair_rates_equal_between_families_capped_proportional_within():
    # Family A: 100k + 300k examples (cap 200k -> 100k : 200k); family B: one task.
    r = mixing.pair_rates({"a1": 100_000, "a2": 300_000}, {"b1": 7}, cap=200_000)
    assert r == pytest.approx({"a1": 0.5 / 3, "a2": 1.0 / 3, "b1": 0.5})
    assert sum(r.values()) == pytest.approx(1.0)
    assert mixing.pair_rates({"a": 1}, {"b": 10**9}, cap=None) == pytest.approx({"a": 0.5, "b": 0.5})
    with pytest.raises(ValueError, match="both families"):
        mixing.pair_rates({"x": 1}, {"x": 2}, cap=None)
    with pytest.raises(ValueError, match="at least one task"):
        mixing.pair_rates({}, {"x": 2}, cap=None)


# ----------------------------------------------------------------------------------------- inspect
def _rates_rows(out: str) -> dict[str, tuple[str, str, float, float]]:
    """{task: (family, examples, rate, share %)} parsed from the printed rates table."""
    rows = {}
    for line in out.splitlines():
        m = re.match(r"^(\w+)\s+(\w+)\s+([\d,?]+)\s+([\d,.]+)\s+([\d.]+)%\s+(\S+)$", line)
        if m:
            rows[m.group(1)] = (m.group(2), m.group(3), float(m.group(4).replace(",", "")), float(m.group(5)))
    return rows


def test_inspect_local_default_rates_examples_stats_and_plots(capsys, tmp_path):
    import ext5.tasks  # noqa: F401
    from ext5.tasks import local
    assert inspect_cmd.main(["local_default", "--task_feature_lengths", "inputs=40,targets=8",
                             "--num_examples", "2", "--stats_examples", "20",
                             "--plot", str(tmp_path / "plots")]) == 0
    out = capsys.readouterr().out
    rows = _rates_rows(out)
    assert set(rows) == set(local.TASK_NAMES)
    assert sum(r[3] for r in rows.values()) == pytest.approx(100.0, abs=0.05)
    assert "100.00%" in out and "total: 7 tasks" in out
    # local_default is examples-proportional: rate = train examples, all local families are 3000 strong.
    assert rows["local_nli"] == ("nli", "3,000", 3000.0, pytest.approx(100 / 7, abs=0.01))
    assert rows["local_span_corruption"][0] == "span_corruption"
    assert "ext5.tasks.local" in out
    # Rendered examples: the text the model sees (a prefix from the task's template, sentinels decoded).
    assert re.search(r"\[0\] inputs\s+nli premise: .+ hypothesis: ", out)
    assert re.search(r"\[1\] targets\s+(entailment|neutral|contradiction)\b", out)
    assert "<extra_id_0>" in out
    # Length statistics: local_rc contexts are longer than 40 tokens -> truncated; classify targets fit in 8.
    stats = {line.split()[0]: line.split() for line in out.split("token lengths")[1].splitlines()
             if line.startswith("local_")}
    assert stats["local_rc"][1] == "20" and float(stats["local_rc"][6].rstrip("%")) == 100.0
    assert float(stats["local_classify"][11].rstrip("%")) == 0.0
    for name in ("shares.png", "lengths.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 5_000


def test_inspect_weighted_mixture_and_single_task(capsys):
    import seqio
    import ext5.tasks  # noqa: F401
    from ext5.data import registry
    registry.add_mixture("test_inspect_mix", [("local_nli", 3.0), ("local_scan", 1.0)], origin="tests")
    registry.add_mixture("test_inspect_nested", [("test_inspect_mix", 1.0), ("local_rc", 1.0)], origin="tests")
    try:
        assert inspect_cmd.main(["test_inspect_nested", "--num_examples", "0", "--stats_examples", "0"]) == 0
        rows = _rates_rows(capsys.readouterr().out)
        # A nested mixture is flattened as seqio samples it: 1/2 * (3/4, 1/4) and 1/2.
        assert {k: v[3] for k, v in rows.items()} == pytest.approx(
            {"local_nli": 37.5, "local_scan": 12.5, "local_rc": 50.0}, abs=0.01)
        assert inspect_cmd.main(["local_scan", "--num_examples", "1", "--stats_examples", "0"]) == 0
        out = capsys.readouterr().out
        assert out.startswith("task local_scan: 1 task in 1 family")
        assert _rates_rows(out)["local_scan"][3] == 100.0 and "[0] targets" in out
    finally:
        for name in ("test_inspect_nested", "test_inspect_mix"):
            seqio.MixtureRegistry.remove(name)


def test_inspect_errors_are_one_line_with_suggestions(capsys):
    assert cli.main(["inspect", "local_defualt", "--num_examples", "0", "--stats_examples", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ext5: error: mixture or task 'local_defualt' is not registered") and "\n" not in err
    assert "local_default" in err
    assert cli.main(["inspect", "local_default", "--task_feature_lengths", "inputs=5"]) == 2
    assert "needs both inputs and targets" in capsys.readouterr().err
    with pytest.raises(UsageError, match="malformed"):
        inspect_cmd.parse_lengths("inputs=x,targets=3")


def test_inspect_exmix_rates_without_data(capsys, monkeypatch):
    import ext5.tasks  # noqa: F401
    from ext5.data import registry
    from ext5.tasks import exmix
    if not isinstance(getattr(registry, "FAMILIES", None), dict):
        # Until the registry keeps task metadata, record the catalogue's as tasks/exmix does.
        rows = exmix.load_catalog()
        monkeypatch.setattr(registry, "FAMILIES", {r.task: r.family for r in rows}, raising=False)
        monkeypatch.setattr(registry, "NUM_EXAMPLES", {r.task: {"train": r.num_train_examples} for r in rows},
                            raising=False)
    assert inspect_cmd.main(["exmix", "--num_examples", "0", "--stats_examples", "0"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("mixture exmix: 107 tasks in 8 families")
    rows = _rates_rows(out)
    assert len(rows) == 107 and sum(r[3] for r in rows.values()) == pytest.approx(100.0, abs=0.3)
    assert "total: 107 tasks" in out and "100.00%" in out
    # The 300,000 cap: gigaword (3.8M examples) is mixed at 300,000; cb (250) at its size.
    assert rows["exmix_gigaword"][1:3] == ("3,803,957", 300_000.0)
    assert rows["exmix_cb"][1:3] == ("250", 250.0)
    assert {r[0] for r in rows.values()} == set(exmix.FAMILIES)
