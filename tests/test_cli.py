"""The `ext5`/`t5x` command line: t5x flags, one-line errors, train -> resume -> eval from any directory."""
import json
import os
import subprocess
import sys

import pytest

from ext5 import cli, config

BIN = os.path.dirname(sys.executable)
SMALL = ["--gin.TRAIN_STEPS=2", "--gin.EVAL_PERIOD=None", "--gin.trainer.train.evaluator=None",
         "--gin.CHECKPOINT_PERIOD=2"]


def test_gin_flags_are_rewritten_to_bindings():
    rest, b = config.rewrite_gin_args([
        "train", "--gin_file=local_tiny.gin", "--gin.MODEL_DIR='/tmp/m'", "--gin.TRAIN_STEPS=20",
        "--gin.partitioning.PartitionConfig.num_partitions=2", "--gin.MODEL_DIR=/tmp/unquoted",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 8, 'targets': 4}", "--gin.LEARNING_RATE=1e-3"])
    assert rest == ["train", "--gin_file=local_tiny.gin"]
    assert b == ["MODEL_DIR = '/tmp/m'", "TRAIN_STEPS = 20", "partitioning.PartitionConfig.num_partitions = 2",
                 "MODEL_DIR = '/tmp/unquoted'", "TASK_FEATURE_LENGTHS = {'inputs': 8, 'targets': 4}",
                 "LEARNING_RATE = 1e-3"]
    args, bindings = cli.parse_args(["eval", "--gin_file=a.gin", "--gin_file=b.gin", "--gin_bindings=X = 1",
                                     "--gin.Y=2", "--tfds_data_dir=/data", "--process_count=2"])
    assert args.command == "eval" and args.gin_file == ["a.gin", "b.gin"] and bindings == ["X = 1", "Y = 2"]
    assert args.tfds_data_dir == "/data" and args.process_count == 2
    with pytest.raises(cli.UsageError, match="unknown flag"):
        cli.parse_args(["train", "--gin_fil=x.gin"])


def test_packaged_gin_files_resolve_and_parse_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config.parse(["local_tiny.gin"], ["MODEL_DIR = '/tmp/x'"])
    assert config.macro("MIXTURE_OR_TASK_NAME") == "local_default"
    assert config.macro("TASK_FEATURE_LENGTHS") == {"inputs": 128, "targets": 32}
    config.parse(["ext5_base.gin"], ["MODEL_DIR = 'gs://b/m'"])
    assert config.macro("BATCH_SIZE") == 2048 and config.macro("MIXTURE_OR_TASK_NAME") == "ext5"
    for size in ("tiny", "small", "base", "large", "xl", "xxl"):
        config.parse([f"t5_1_1_{size}.gin", "pretrain.gin"],
                     ["MODEL_DIR='/m'", "MIXTURE_OR_TASK_NAME='x'", "TASK_FEATURE_LENGTHS={}", "TRAIN_STEPS=1"])


def _error(capsys, argv):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ext5: error: ") and "\n" not in err, err
    return err


def test_one_line_errors(capsys, tmp_path):
    base = ["train", "--gin_file=local_tiny.gin", f"--gin.MODEL_DIR='{tmp_path / 'm'}'"] + SMALL
    assert "mixture or task 'nope' is not registered" in _error(capsys, base + ["--gin.MIXTURE_OR_TASK_NAME='nope'"])
    # The real ExT5 configuration names TFDS's c4/en, which is not prepared on a test machine.
    assert "TFDS dataset c4/en:3.1.0 is not prepared" in _error(
        capsys, ["train", "--gin_file=ext5_base.gin", f"--gin.MODEL_DIR='{tmp_path / 'b'}'"])
    bad = tmp_path / "bad.gin"
    bad.write_text("include 'local_tiny.gin'\nTRAIN_STEPS = (\n")
    assert "gin syntax error" in _error(capsys, ["train", f"--gin_file={bad}"])
    assert "missing required gin macro MODEL_DIR" in _error(capsys, ["train", "--gin_file=local_tiny.gin"])
    assert "not found" in _error(capsys, ["train", "--gin_file=nonexistent.gin"])
    assert "not divisible by the data-parallel size 4" in _error(capsys, base + ["--gin.BATCH_SIZE=6"])
    # A MODEL_DIR written by another model: an error, not a silent restore.
    assert cli.main(base) == 0
    assert (tmp_path / "m" / "config.gin").exists()
    err = _error(capsys, base + ["--gin.configs.get_config.mlp_dim=512", "--gin.TRAIN_STEPS=4"])
    assert "holds a different model" in err and "mlp" in err


def _run(argv, cwd, timeout=400):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    p = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p.stdout


def test_t5x_train_resume_then_eval_from_any_directory(tmp_path):
    model_dir = tmp_path / "m"
    common = [os.path.join(BIN, "t5x"), "train", "--gin_file=local_tiny.gin", f"--gin.MODEL_DIR='{model_dir}'",
              "--gin.EVAL_PERIOD=None", "--gin.trainer.train.evaluator=None", "--gin.LOG_PERIOD=10"]
    out = _run(common + ["--gin.TRAIN_STEPS=20"], cwd=tmp_path)
    assert "step     20/20" in out
    assert (model_dir / "config.gin").exists() and (model_dir / "checkpoint_20").is_dir()
    assert "TRAIN_STEPS = 20" in (model_dir / "config.gin").read_text()
    out = _run(common + ["--gin.TRAIN_STEPS=40"], cwd=tmp_path)
    assert f"resumed from {model_dir}/checkpoint_20" in out and "steps 20->40" in out
    assert (model_dir / "checkpoint_40").is_dir() and (model_dir / "loss_curve.png").exists()
    out = _run([os.path.join(BIN, "ext5"), "eval", "--gin_file=local_tiny.gin", "--gin_file=eval.gin",
                f"--gin.CHECKPOINT_PATH='{model_dir}'", "--gin.EVAL_NUM_EXAMPLES=16"], cwd=tmp_path)
    assert "eval @ step 40" in out
    for task in ("local_nli", "local_scan", "local_cbqa", "local_rc", "local_classify", "local_summarize"):
        assert task in out
    metrics = json.loads((model_dir / "eval" / "metrics_step40.json").read_text())
    # Rank classification over 3 choices: accuracy and macro F1 are real numbers in [0, 100].
    for key in ("local_nli_score_eval/accuracy", "local_nli_score_eval/mean_3class_f1",
                "local_classify_score_eval/accuracy"):
        assert 0.0 <= metrics[key] <= 100.0, (key, metrics)
    assert "local_nli_score_eval" in out


def test_local_gins_fit_num_partitions_to_the_devices():
    from ext5.train.partitioning import fit_partitions
    got = {n: fit_partitions(2, devices=[object()] * n) for n in (1, 2, 3, 4, 6, 8)}
    assert got == {1: 1, 2: 2, 3: 1, 4: 2, 6: 2, 8: 2}
    assert fit_partitions(4, devices=[object()] * 6) == 3 and fit_partitions(8, devices=[object()] * 8) == 8
    for gin_file in ("local_tiny.gin", "local_finetune_tiny.gin", "experiments/transfer_tiny.gin"):
        config.parse([gin_file], ["MODEL_DIR = '/tmp/x'", "INITIAL_CHECKPOINT_PATH = '/tmp/y'"])
        import gin
        from ext5.train import partitioning
        assert gin.get_configurable(partitioning.PartitionConfig)().num_partitions == 2  # 8 devices here


def test_t5x_flags_are_declared_once():
    from ext5.commands import experiment

    def flags(parser):
        return {s for a in parser._actions for s in a.option_strings}
    shared = {"--gin_file", "--gin_bindings", "--gin_search_paths", "--tfds_data_dir",
              "--seqio_additional_cache_dirs", "--module_import"}
    assert shared <= flags(cli.build_parser()) and shared <= flags(experiment.build_parser())
    args = experiment.build_parser().parse_args(["transfer", "--tfds_data_dir=/d", "--module_import=a.b",
                                                 "--seqio_additional_cache_dirs=/c"])
    assert cli.data_flags_argv(args) == ["--tfds_data_dir=/d", "--seqio_additional_cache_dirs=/c",
                                         "--module_import=a.b"]


def test_report_is_a_subcommand(capsys, tmp_path):
    (tmp_path / "metrics_step3.json").write_text('{"x/accuracy": 50.0}')
    err = _error(capsys, ["report", str(tmp_path)])
    assert "no '<task>/accuracy' scores of T0 evaluation prompts" in err
