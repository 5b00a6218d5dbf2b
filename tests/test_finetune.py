"""Fine-tuning with t5x's INITIAL_CHECKPOINT_PATH semantics, and the regime gin files."""
import jax
import numpy as np
import pytest

from ext5 import cli, config
from ext5.model import configs
from ext5.train import checkpoints, optimizer, partitioning, step as step_lib

QUIET = ["--gin.EVAL_PERIOD=None", "--gin.trainer.train.evaluator=None", "--gin.LOG_PERIOD=2"]


def _state(model_dir, step):
    cfg = configs.get_config("tiny", vocab_size=1152, dtype="float32")
    fns = step_lib.build(cfg, partitioning.make_mesh(2), partitioning.PartitionConfig(num_partitions=2).rules(),
                         optimizer.adafactor(), input_len=8, target_len=8)
    ck = checkpoints.Checkpointer(str(model_dir), use_async=False)
    state, _ = ck.restore(step, fns.abstract_state.as_dict(), fns.param_shapes(), with_data=False)
    ck.close()
    return state


def test_finetune_continues_step_and_optimizer_from_initial_checkpoint(tmp_path, capsys):
    pre, fine = tmp_path / "pre", tmp_path / "fine"
    assert cli.main(["train", "--gin_file=local_tiny.gin", f"--gin.MODEL_DIR='{pre}'", "--gin.TRAIN_STEPS=4",
                     "--gin.CHECKPOINT_PERIOD=4"] + QUIET) == 0
    capsys.readouterr()
    assert cli.main(["train", "--gin_file=local_finetune_tiny.gin", f"--gin.MODEL_DIR='{fine}'",
                     f"--gin.INITIAL_CHECKPOINT_PATH='{pre}'", "--gin.TRAIN_STEPS=6",
                     "--gin.CHECKPOINT_PERIOD=2"] + QUIET) == 0
    out = capsys.readouterr().out
    assert f"initialised from {pre} (step 4)" in out and "steps 4->6" in out
    assert not (fine / "checkpoint_4").exists() and (fine / "checkpoint_6").is_dir()
    b = _state(fine, 6)
    assert int(b["step"]) == 6
    # One step counter: Adafactor keeps no count of its own (its decay and the schedule read the state's step,
    # 4 + 2 here), and its second moments came with the checkpoint.
    assert not any(np.issubdtype(np.asarray(x).dtype, np.integer) for x in jax.tree.leaves(b["opt_state"]))
    assert all(float(np.max(np.asarray(x))) > 0 for x in jax.tree.leaves(b["opt_state"].v_row))
    # The MODEL_DIR's config records the fine-tuning recipe.
    text = (fine / "config.gin").read_text()
    assert "INITIAL_CHECKPOINT_PATH" in text and "DROPOUT_RATE = 0.1" in text


def test_finetune_needs_initial_checkpoint(tmp_path, capsys):
    assert cli.main(["train", "--gin_file=local_finetune_tiny.gin", f"--gin.MODEL_DIR='{tmp_path}'"]) == 2
    assert "missing required gin macro INITIAL_CHECKPOINT_PATH" in capsys.readouterr().err


@pytest.mark.parametrize("gin_file,mixture,steps,dropout", [
    ("ext5_base.gin", None, 1_000_000, 0.0),
    ("prefinetune_base.gin", "exmix", 1_200_000, 0.0),
    ("finetune_base.gin", "ext5_superglue", 1_200_000, 0.1),
])
def test_regime_presets_parse(gin_file, mixture, steps, dropout):
    config.parse([gin_file], ["MODEL_DIR='gs://b/m'", "INITIAL_CHECKPOINT_PATH='gs://b/c'"]
                 + ([f"MIXTURE_OR_TASK_NAME='{mixture}'"] if mixture else []))
    assert config.macro("TRAIN_STEPS") == steps and config.macro("DROPOUT_RATE") == dropout
    assert config.macro("TASK_FEATURE_LENGTHS") == {"inputs": 512, "targets": 114}


def test_c4_ratio_is_gin_settable():
    import seqio
    config.parse(["ext5_base.gin"], ["MODEL_DIR='gs://b/m'"])
    assert config.macro("MIXTURE_OR_TASK_NAME") == "ext5"
    config.parse(["ext5_base.gin"], ["MODEL_DIR='gs://b/m'", "C4_EXMIX_RATIO = 4.0"])
    name = config.macro("MIXTURE_OR_TASK_NAME")
    assert name == "ext5_r4"
    rates = {t.name: r for t, r in zip(*_tasks_and_rates(seqio.get_mixture_or_task(name)))}
    c4 = rates.pop("c4_span_corruption")
    assert c4 / sum(rates.values()) == pytest.approx(4.0)


def _tasks_and_rates(mixture):
    tasks = mixture.tasks
    return tasks, [mixture.get_rate(t) for t in tasks]
