"""T0 on ext5: mixtures and rates, template rendering on generated fixtures, Hugging Face sources on
local files through the real datasets.load_dataset, the P3 source, and rank classification with a tiny
model through SeqioEvaluator to the median/IQR report. Nothing is downloaded: datasets are local mirrors
written by the test (EXT5_HF_MIRROR), the vocabulary is the packaged local one.
"""
from __future__ import annotations

import csv
import os
import sys
import tempfile

if "datasets" not in sys.modules:  # keep the datasets cache of these tests out of ~/.cache
    os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="ext5_t0_hf_"))
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np
import pytest
import seqio
import t0_fixtures as fixtures

import ext5.tasks  # noqa: F401  (registers everything)
from ext5 import cli, config
from ext5.data import prompts, sources
from ext5.eval import report
from ext5.tasks import t0
from ext5.tasks.t0 import catalog

CATALOG = os.path.join(os.path.dirname(catalog.__file__), "data")


@pytest.fixture(scope="module", autouse=True)
def local_vocabulary():
    """T0 tasks over the offline vocabulary for this module; the default registration afterwards."""
    t0.register(vocabulary="local")
    yield
    t0.register()


@pytest.fixture()
def mirror(tmp_path, monkeypatch):
    """A local Hub mirror that hf_data_source reads instead of the Hub."""
    root = str(tmp_path / "hub")
    monkeypatch.setenv(sources.MIRROR_ENV, root)
    return root


def _csv(name):
    with open(os.path.join(CATALOG, name), newline="") as f:
        return list(csv.DictReader(f))


# ============================================================================ mixtures
def test_training_mixtures_have_t0s_task_counts_and_rates():
    rows = {(r["hf_dataset"], r["subset"] or None): r for r in _csv("t0_train_datasets.csv")}
    by_name = {t.name: t for t in catalog.prompt_tasks()}
    for mixture, n_datasets, n_tasks in (("t0_train", 38, 313), ("t0+_train", 48, 392),
                                         ("t0++_train", 54, 464)):
        mix = seqio.get_mixture_or_task(mixture)
        assert len(mix.tasks) == n_tasks, mixture
        keys = {by_name[t.name].dataset.key for t in mix.tasks}
        assert len(keys) == n_datasets
        for task in mix.tasks:
            r = rows[by_name[task.name].dataset.key]
            size, n = int(r["train_size"]), int(r["num_templates"])
            expected = size if size <= 500_000 else 500_000 // n
            assert mix.get_rate(task) == expected, task.name
    t0pp = seqio.get_mixture_or_task("t0++_train")
    assert t0pp.get_rate(seqio.get_mixture_or_task("amazon_polarity_Is_this_review")) == 55555
    assert t0pp.get_rate(seqio.get_mixture_or_task("app_reviews_categorize_rating_using_review")) \
        == 288065
    assert set(seqio.get_mixture_or_task("t0_train").tasks) < set(t0pp.tasks)


def test_eval_mixture_and_ablations():
    ev = seqio.get_mixture_or_task("t0_eval_score_eval")
    names = [t.name for t in ev.tasks]
    assert all(n.endswith("_score_eval") for n in names)
    by_name = {t.score_eval_name: t for t in catalog.prompt_tasks() if t.score_eval_name}
    assert all(by_name[n].original_task and by_name[n].dataset.eval_cluster for n in names)
    # Held-out datasets (ANLI once per round); non-original templates (e.g. 7 of HellaSwag's 11) dropped.
    assert len({(by_name[n].dataset.key, by_name[n].round) for n in names}) == 11
    assert sum(n.startswith("anli_") for n in names) == 45
    assert sum(n.startswith("hellaswag_") for n in names) == 4
    assert "anli_GPT_3_style_r1_score_eval" in names and "super_glue_rte_GPT_3_style_score_eval" in names
    prompted = {t.name: t for t in catalog.prompt_tasks()}
    t0_tasks = [t.name for t in seqio.get_mixture_or_task("t0_train").tasks]
    one = [t.name for t in seqio.get_mixture_or_task("t0_train_one_og_prompt").tasks]
    every = [t.name for t in seqio.get_mixture_or_task("t0_train_all_og_prompts").tasks]
    assert set(one) <= set(every) <= set(t0_tasks)
    assert every == [n for n in t0_tasks if prompted[n].original_task]
    keys = [prompted[n].dataset.key for n in one]
    assert len(keys) == len(set(keys)) == len({prompted[n].dataset.key for n in every})
    for n in one:  # the first original-task template in promptsource's (sorted) order
        first = next(m for m in every if prompted[m].dataset.key == prompted[n].dataset.key)
        assert n == first
    mix = seqio.get_mixture_or_task("t0_train_all_og_prompts")
    assert all(mix.get_rate(t) == seqio.get_mixture_or_task("t0_train").get_rate(t) for t in mix.tasks)


def test_task_names_follow_t_zero():
    assert prompts.task_name("super_glue", "rte", "GPT-3 style") == "super_glue_rte_GPT_3_style"
    assert prompts.task_name("wiki_qa", None, "Is This True?") == "wiki_qa_Is_This_True_"
    assert prompts.task_name("cos_e", "v1.11", "rationale") == "cos_e_v1.11_rationale"
    for name in ("super_glue_rte_GPT_3_style", "anli_GPT_3_style_r3", "wiki_qa_Is_This_True_",
                 "super_glue_rte_GPT_3_style_score_eval", "adversarial_qa_dbert_answer_the_following_q"):
        assert name in seqio.TaskRegistry.names(), name


def test_registration_reads_no_data_and_no_template_file(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("registration must not read data or template files")
    monkeypatch.setattr(sources, "load_split", fail)
    monkeypatch.setattr(catalog, "templates", fail)
    t0.register(vocabulary="local")
    src = seqio.get_mixture_or_task("super_glue_rte_GPT_3_style").source
    assert isinstance(src, sources.HFDataSource) and (src.dataset_id, src.subset) == ("super_glue", "rte")
    assert src.num_input_examples("train") is None  # held-out only: no train size in the catalog
    src = seqio.get_mixture_or_task("anli_GPT_3_style_r2").source
    assert src.split_map == {"train": "train_r2", "validation": "dev_r2", "test": "test_r2"}
    src = seqio.get_mixture_or_task("amazon_polarity_Is_this_review").source
    assert src.num_input_examples("train") == 3_600_000 and src.split_map == {"train": "train",
                                                                           "test": "test"}


def test_template_index_matches_promptsource():
    assert catalog.build_template_index() == _csv(catalog.INDEX_FILE)


# ============================================================================ rendering
def test_every_train_and_eval_template_renders_on_a_generated_fixture():
    rendered, scored = 0, 0
    for d in catalog.datasets():
        dt = catalog.templates(d.hf_dataset, d.subset)
        names = dt.all_template_names
        rows = fixtures.fixture_rows([fixtures.template_sources(dt[n]) for n in names])
        shared = fixtures.fixture_row([s for n in names for s in fixtures.template_sources(dt[n])])
        assert set(rows[0]) == set(shared)
        for name, row in zip(names, rows):
            t = dt[name]
            out = prompts.render(t, row)
            assert out is not None, (d.label, name, t.apply(prompts.clean_keys(row)))
            assert out["inputs"].strip() and out["targets"].strip()
            assert bool(out["answer_choices"]) == bool(t.answer_choices), (d.label, name)
            prompts.render(t, shared)  # another row of the same dataset: no error (may be empty)
            rendered += 1
            if d.eval_cluster and t.metadata.original_task:
                # rank classification needs the target among the choices
                assert out["targets"].strip() in out["answer_choices"], (d.label, name, out)
                scored += 1
    assert rendered == 464 + 15 + 15 + 10 + 6 + 6  # t0++ train + ANLI, CB, RTE, Winogrande, StoryCloze
    assert scored == 116 - 30  # t0_eval_score_eval less ANLI's two extra rounds


def test_fixture_inference_from_usage():
    row = fixtures.fixture_row([
        "{{ premise }} {% if label == 1 %}{{ choices.text[3] }}{% endif %} ||| "
        "{{ answers.text | choice }} {{ options[label] }} {{ choices.label.index(answerKey) }}",
        "{% if question == 'effect' %}so{% endif %} {{ sol[0].lower() + sol[1:] }}"])
    assert row["label"] == 1 and row["question"] == "effect"
    assert isinstance(row["choices"]["text"], list) and len(row["choices"]["text"]) >= 4
    assert isinstance(row["answers"]["text"], list) and isinstance(row["options"], list)
    assert isinstance(row["premise"], str) and isinstance(row["sol"], str)
    assert row["answerKey"] in row["choices"]["label"]


# ============================================================================ sources
def test_hf_data_source_reads_local_files_through_load_dataset(mirror):
    import datasets
    feats = datasets.Features({
        "q": datasets.Value("string"), "n": datasets.Value("int32"), "f": datasets.Value("float64"),
        "label": datasets.ClassLabel(names=["no", "yes"]),
        "answers": {"text": datasets.List(datasets.Value("string")),
                    "start": datasets.List(datasets.Value("int32"))},
        "nested": datasets.List(datasets.List(datasets.Value("string"))),
        "opts": datasets.List({"t": datasets.Value("string"), "k": datasets.Value("int64")})})
    rows = [{"q": f"q{i}", "n": i, "f": i / 2, "label": i % 2,
             "answers": {"text": ["a", "b"][: i % 3], "start": [1, 2][: i % 3]},
             "nested": [["x"], ["y", "z"]] if i else [], "opts": [{"t": "o", "k": i}]}
            for i in range(6)]
    sources.write_mirror(mirror, "org/toy", "cfg", {"dev_r1": rows, "train": rows[:2]}, features=feats)
    src = sources.hf_data_source("org/toy", "cfg", splits={"validation": "dev_r1", "train": "train"},
                                 num_input_examples={"train": 2})
    assert src.num_input_examples("train") == 2 and src.num_input_examples("validation") is None
    got = list(src.get_dataset("validation", shuffle=False).as_numpy_iterator())
    assert [g["q"] for g in got] == [f"q{i}".encode() for i in range(6)]
    g = got[1]
    assert g["n"].dtype == np.int64 and g["f"].dtype == np.float32 and g["label"] == 1
    assert list(g["answers"]["text"]) == [b"a"] and list(g["answers"]["start"]) == [1]
    assert [list(x) for x in g["nested"]] == [[b"x"], [b"y", b"z"]]
    assert list(g["opts"]["t"]) == [b"o"] and list(g["opts"]["k"]) == [1]
    assert got[0]["nested"].shape[0] == 0
    a = [x["n"] for x in src.get_dataset("validation", shuffle=True, seed=3).as_numpy_iterator()]
    b = [x["n"] for x in src.get_dataset("validation", shuffle=True, seed=3).as_numpy_iterator()]
    assert a == b and sorted(a) == list(range(6))
    shards = [[x["n"] for x in src.get_dataset("validation", shuffle=False,
                                               shard_info=seqio.ShardInfo(i, 2)).as_numpy_iterator()]
              for i in range(2)]
    assert sorted(shards[0] + shards[1]) == list(range(6)) and shards[0] and shards[1]
    with pytest.raises(ValueError, match="no split 'test'"):
        src.get_dataset("test")


def _write_rte(root, n_extra_unlabelled=1):
    """super_glue/rte validation rows from the generated fixture (one per template) + unlabelled rows."""
    import datasets
    dt = catalog.templates("super_glue", "rte")
    rows = fixtures.fixture_rows([fixtures.template_sources(dt[n]) for n in dt.all_template_names])
    words = ["cats sleep", "it rains", "the sun shines", "birds sing", "rivers flow"]
    for i, r in enumerate(rows):  # vary texts and labels so the prompts differ
        r.update(premise=f"{words[i % 5]} today.", hypothesis=f"{words[(i + i // 5) % 5]}.",
                 idx=i, label=i % 2)
    rows += [dict(rows[0], idx=100 + j, label=-1) for j in range(n_extra_unlabelled)]
    feats = datasets.Features({"premise": datasets.Value("string"),
                               "hypothesis": datasets.Value("string"), "idx": datasets.Value("int32"),
                               "label": datasets.Value("int64")})
    sources.write_mirror(root, "super_glue", "rte", {"validation": rows}, features=feats)
    return rows


def test_prompted_task_and_score_eval_twin_through_the_real_pipeline(mirror):
    rows = _write_rte(mirror)
    task = seqio.get_mixture_or_task("super_glue_rte_GPT_3_style")
    got = list(task.get_dataset(None, split="validation", shuffle=False).as_numpy_iterator())
    assert len(got) == len(rows) - 1  # the unlabelled row renders an empty target: dropped
    assert got[0]["inputs_pretokenized"].decode().startswith(rows[0]["premise"])
    assert list(got[0]["answer_choices"]) == [b"True", b"False"]
    assert got[0]["targets_pretokenized"] == b"True" and got[1]["targets_pretokenized"] == b"False"
    assert got[0]["inputs"][-1] != 1 and got[0]["targets"][-1] == 1  # EOS on targets only (as T0)
    twin = seqio.get_mixture_or_task("super_glue_rte_GPT_3_style_score_eval")
    scored = list(twin.get_dataset(None, split="validation", shuffle=False).as_numpy_iterator())
    assert len(scored) == 2 * len(got)
    assert [tuple(r["idx"]) for r in scored[:4]] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert [bool(r["is_correct"]) for r in scored[:4]] == [True, False, False, True]
    assert scored[1]["targets_pretokenized"] == b"False"


def test_p3_source(mirror):
    t0.register(source="p3", vocabulary="local")
    try:
        name = "super_glue_rte_GPT_3_style_score_eval"
        rows = [{"inputs_pretokenized": "A cat.\nQuestion: A dog. True or False?",
                 "targets_pretokenized": c, "answer_choices": ["True", "False"], "idx": [0, j],
                 "is_correct": j == 1, "weight": 1.0} for j, c in enumerate(["True", "False"])]
        sources.write_mirror(mirror, sources.P3_ID, name, {"validation": rows})
        src = seqio.get_mixture_or_task(name).source
        assert (src.dataset_id, src.subset) == ("bigscience/P3", name)
        got = list(seqio.get_mixture_or_task(name).get_dataset(None, split="validation",
                                                               shuffle=False).as_numpy_iterator())
        assert [tuple(g["idx"]) for g in got] == [(0, 0), (0, 1)] and got[0]["idx"].dtype == np.int32
        assert [bool(g["is_correct"]) for g in got] == [False, True]
        assert got[1]["targets_pretokenized"] == b"False"
    finally:
        t0.register(vocabulary="local")


# ============================================================================ report
def test_summary_median_and_iqr():
    groups = {f"t{i}_score_eval": ("nli", "toy") for i in range(4)}
    groups["u_score_eval"] = ("coref", "other")
    scores = {f"t{i}_score_eval/accuracy": v for i, v in enumerate([40.0, 50.0, 60.0, 90.0])}
    scores["u_score_eval/accuracy"] = 70.0
    (toy, other) = report.summarize(scores, groups)
    assert (toy.dataset, toy.median, toy.q1, toy.q3, toy.iqr) == ("toy", 55.0, 47.5, 67.5, 20.0)
    assert other.median == 70.0 and other.iqr == 0.0
    md = report.markdown_table([toy, other])
    assert "## nli" in md and "| toy | 4 | 55.00 | 20.00 (47.50 - 67.50)" in md


def test_rank_classification_end_to_end_to_report(mirror, tmp_path):
    """RTE fixture -> the real prompted _score_eval tasks -> tiny model via SeqioEvaluator -> report."""
    from ext5.data import registry

    rows = _write_rte(mirror)
    rte = {n: g for n, g in report.t0_groups().items() if g[1] == "super_glue/rte"}
    assert len(rte) == 10
    registry.add_mixture("t0_test_rte_score_eval", sorted(rte), origin=__name__, default_rate=1.0)
    try:
        _evaluate_and_report(rows, rte, tmp_path)
    finally:
        seqio.MixtureRegistry.remove("t0_test_rte_score_eval")


def _evaluate_and_report(rows, rte, tmp_path):
    from _util import random_params
    from ext5.data.vocab import get_vocabulary, padded_vocab_size
    from ext5.eval.evaluator import SeqioEvaluator
    from ext5.model import configs

    cfg = configs.get_config("tiny", vocab_size=padded_vocab_size(get_vocabulary("local")),
                             emb_dim=32, num_heads=2, head_dim=8, mlp_dim=48, num_encoder_layers=2,
                             num_decoder_layers=2, dtype="float32")
    params = random_params(cfg, seed=1, norm_noise=0.1)
    ev = SeqioEvaluator("t0_test_rte_score_eval", {"inputs": 96, "targets": 8}, cfg, batch_size=32,
                        output_dir=str(tmp_path / "eval"))
    scores = ev(params, step=7)
    assert set(rte) <= {k.split("/")[0] for k in scores}
    accs = [scores[f"{n}/accuracy"] for n in sorted(rte)]
    assert all(0.0 <= a <= 100.0 for a in accs)
    # Each task scores the examples its template renders (all labelled rows): accuracy in 1/n steps.
    n = len(rows) - 1
    assert all(abs(a * n / 100 - round(a * n / 100)) < 1e-6 for a in accs)
    assert cli.main(["report", str(tmp_path / "eval"), "--out", str(tmp_path / "report")]) == 0
    with open(tmp_path / "report" / "t0_report.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row["dataset"] == "super_glue/rte" and int(row["prompts"]) == 10
    assert float(row["median"]) == pytest.approx(np.median(accs), abs=0.01)
    q1, q3 = np.percentile(accs, [25, 75])
    assert float(row["iqr"]) == pytest.approx(q3 - q1, abs=0.02)
    assert "| super_glue/rte | 10 |" in (tmp_path / "report" / "t0_report.md").read_text()
    png = tmp_path / "report" / "boxplots" / "super_glue_rte.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "report" / "t0_boxplots.png").exists()


def test_report_errors_are_one_line(tmp_path):
    assert cli.main(["report", str(tmp_path)]) == 2
    with pytest.raises(report.UsageError, match="no '<task>/accuracy' scores"):
        report.write_report({"x/accuracy": 1.0}, str(tmp_path / "r"))


# ============================================================================ gin
@pytest.mark.parametrize("gin_file,size", [("t0_3b.gin", "xl"), ("t0_11b.gin", "xxl")])
def test_t0_gin_files_parse(gin_file, size):
    import gin
    config.parse([gin_file], ["MODEL_DIR = '/tmp/t0'",
                              "INITIAL_CHECKPOINT_PATH = '/ckpt/lm100k/checkpoint_1100000'"])
    assert config.macro("MIXTURE_OR_TASK_NAME") == "t0_train"
    assert config.macro("EVAL_MIXTURE_OR_TASK_NAME") == "t0_eval_score_eval"
    assert config.macro("TRAIN_STEPS") == 1_000_000 + 100_000 + 12_200
    assert config.macro("BATCH_SIZE") == 1024
    assert config.macro("TASK_FEATURE_LENGTHS") == {"inputs": 1024, "targets": 256}
    assert config.macro("PACK") is True and config.macro("DROPOUT_RATE") == 0.1
    assert gin.query_parameter("configs.get_config.size") == size
    assert gin.query_parameter("optimizer.create_learning_rate_scheduler.factors") == "constant"
    assert gin.query_parameter("optimizer.create_learning_rate_scheduler.base_learning_rate") == 1e-3
    gin.clear_config()
