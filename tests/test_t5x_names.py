"""t5x's configurable names work in ext5: translated at the gin edge, same meaning, one-line errors otherwise."""
import dataclasses
import glob
import inspect
import json
import os

import jax
import numpy as np
import pytest

from ext5 import cli, config, t5x_names


def _ext5_params(selector: str) -> set[str]:
    """The parameters ext5's configurable `selector` takes."""
    from ext5.model import configs
    from ext5.train import optimizer, partitioning, trainer
    target = {"partitioning.PartitionConfig": partitioning.PartitionConfig, "trainer.DatasetConfig": trainer.DatasetConfig,
              "trainer.CheckpointConfig": trainer.CheckpointConfig,
              "optimizer.create_learning_rate_scheduler": optimizer.create_learning_rate_scheduler,
              "configs.get_config": configs.T5Config, "trainer.train": trainer.train}[selector]
    if dataclasses.is_dataclass(target):
        return {f.name for f in dataclasses.fields(target)}
    return set(inspect.signature(target).parameters)


@pytest.mark.parametrize("t5x_name", sorted(t5x_names.ALIASES))
def test_every_alias_lands_on_a_real_ext5_parameter(t5x_name):
    alias = t5x_names.ALIASES[t5x_name]
    assert set(alias.params.values()) <= _ext5_params(alias.ext5), alias


def test_bindings_translate_with_scopes_references_and_bare_class_names():
    tb = t5x_names.translate_binding
    assert tb("partitioning.PjitPartitioner.num_partitions = 2") == "partitioning.PartitionConfig.num_partitions = 2"
    assert tb("PjitPartitioner.num_partitions = 4") == "partitioning.PartitionConfig.num_partitions = 4"
    assert tb("train/utils.DatasetConfig.batch_size = 8") == "train/trainer.DatasetConfig.batch_size = 8"
    assert tb("t5x.utils.SaveCheckpointConfig.keep = 3") == "trainer.CheckpointConfig.keep = 3"
    assert tb("network.T5Config.emb_dim = 64") == "configs.get_config.emb_dim = 64"
    assert tb("trainer.Trainer.num_microbatches = 4") == "trainer.train.num_microbatches = 4"
    assert tb("LEARNING_RATE = @utils.create_learning_rate_scheduler()") == (
        "LEARNING_RATE = @optimizer.create_learning_rate_scheduler()")
    # ext5's own names, and names that only look alike, pass through untouched.
    for b in ("partitioning.PartitionConfig.num_partitions = 2", "trainer.DatasetConfig.packer = 'seqio'",
              "DatasetConfig.batch_size = 8", "MIXTURE_OR_TASK_MODULE = 'my.tasks'", "my.utils.thing.x = 1"):
        assert tb(b) == b


def test_packaged_gin_files_are_left_as_they_are():
    files = glob.glob(os.path.join(str(config.packaged_gin_dir()), "**", "*.gin"), recursive=True)
    assert len(files) > 15
    for path in files:
        text = open(path, encoding="utf-8").read()
        assert t5x_names.translate_config(text) == text, path


T5X_STYLE_GIN = """\
# A t5x user's experiment file, unchanged: t5x's imports, includes and names.
from __gin__ import dynamic_registration
from t5x import partitioning
from t5x import utils as t5x_utils
from t5x import trainer
import __main__ as train_script

include 'local_tiny.gin'

TASK_FEATURE_LENGTHS = {'inputs': 32,
                        'targets': 8}
partitioning.PjitPartitioner.logical_axis_rules = @partitioning.standard_logical_axis_rules()
train/t5x_utils.DatasetConfig:
  pack = False  # unpacked rows
  shuffle = True
t5x_utils.create_learning_rate_scheduler:
  factors = 'constant'
  base_learning_rate = 0.005
trainer.train.evaluator = None  # ext5's own knob (no in-training evaluation in this test)
"""


def test_t5x_style_gin_file_translates():
    out = t5x_names.translate_config(T5X_STYLE_GIN)
    assert "from ext5.train import partitioning\n" in out and "from ext5.train import optimizer\n" in out
    assert "t5x" not in out.replace("t5x user", "").replace("t5x's", "")
    assert "train/trainer.DatasetConfig:\n  pack = False  # unpacked rows\n  shuffle = True\n" in out
    assert "optimizer.create_learning_rate_scheduler:\n  factors = 'constant'\n" in out
    assert "partitioning.PartitionConfig.logical_axis_rules = @partitioning.standard_logical_axis_rules()" in out
    assert "TASK_FEATURE_LENGTHS = {'inputs': 32,\n                        'targets': 8}" in out
    assert t5x_names.translate_config("include 't5x/configs/runs/finetune.gin'\n") == "include 'finetune.gin'\n"
    assert t5x_names.translate_config("include 't5x/examples/t5/t5_1_1/xl.gin'\n") == "include 't5_1_1_xl.gin'\n"


def _error(capsys, argv):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ext5: error: ") and "\n" not in err, err
    return err


def test_unsupported_t5x_names_are_one_line_errors_naming_ext5s_equivalent(capsys, tmp_path):
    base = ["train", "--gin_file=local_tiny.gin", f"--gin.MODEL_DIR='{tmp_path / 'm'}'"]
    err = _error(capsys, base + ["--gin.utils.SaveCheckpointConfig.dtype='float32'"])
    assert "utils.SaveCheckpointConfig.dtype" in err and "trainer.CheckpointConfig" in err and "period" in err
    err = _error(capsys, base + ["--gin.utils.RestoreCheckpointConfig.path='/ckpt'"])
    assert "INITIAL_CHECKPOINT_PATH" in err
    err = _error(capsys, base + ["--gin.network.T5Config.float32_attention_logits=True"])
    assert "configs.get_config" in err and "emb_dim" in err
    err = _error(capsys, base + ["--gin.utils.Nope.x=1"])
    assert "t5x name ext5 does not support" in err and "utils.DatasetConfig (-> trainer.DatasetConfig)" in err
    assert "MIXTURE_OR_TASK_MODULE='no_such_tasks_module'" in _error(
        capsys, base + ["--gin.MIXTURE_OR_TASK_MODULE='no_such_tasks_module'"])
    bad = tmp_path / "t5x_bad.gin"
    bad.write_text("from __gin__ import dynamic_registration\ninclude 't5x/configs/runs/precompile.gin'\n")
    assert "ships no copy of this t5x gin file" in _error(capsys, ["train", f"--gin_file={bad}"])
    bad.write_text("from __gin__ import dynamic_registration\nimport __main__ as train_script\n"
                   "include 'local_tiny.gin'\ntrain_script.train.stats_period = 10\n")
    assert "trainer.train" in _error(capsys, ["train", f"--gin_file={bad}", f"--gin.MODEL_DIR='{tmp_path / 'm'}'"])
    # An explicit num_partitions that does not divide the devices stays an error (8 devices here).
    assert "num_partitions=3 does not divide the 8 devices" in _error(
        capsys, base + ["--gin.TRAIN_STEPS=1", "--gin.partitioning.PjitPartitioner.num_partitions=3"])


def test_train_the_local_mixture_with_t5x_names_only(tmp_path, monkeypatch, capsys):
    """A t5x-style gin file, and a command line in t5x's names only; each name has its effect."""
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "t5x_user_tasks.py").write_text(
        "import seqio\nimport ext5.tasks  # noqa: F401\n"
        "if 't5x_user_mix' not in seqio.MixtureRegistry.names():\n"
        "    seqio.MixtureRegistry.add('t5x_user_mix', [('local_nli', 1.0), ('local_classify', 1.0)])\n")
    gin_file = tmp_path / "t5x_experiment.gin"
    gin_file.write_text(T5X_STYLE_GIN)
    model_dir = tmp_path / "m"
    argv = ["train", f"--gin_file={gin_file}", f"--gin.MODEL_DIR='{model_dir}'", "--gin.TRAIN_STEPS=4",
            "--gin.MIXTURE_OR_TASK_NAME='t5x_user_mix'", "--gin.MIXTURE_OR_TASK_MODULE='t5x_user_tasks'",
            "--gin.partitioning.PjitPartitioner.num_partitions=2",
            "--gin.train/utils.DatasetConfig.batch_size=8",  # t5x scopes it as pretrain.gin does
            "--gin.utils.SaveCheckpointConfig.period=1", "--gin.utils.SaveCheckpointConfig.keep=2",
            "--gin.utils.create_learning_rate_scheduler.base_learning_rate=0.004",
            "--gin.network.T5Config.emb_dim=64", "--gin.network.T5Config.num_encoder_layers=1",
            "--gin.network.T5Config.num_decoder_layers=1",
            "--gin.trainer.Trainer.num_microbatches=2"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "mesh {'data': 4, 'model': 2}" in out and "batch 8 x (32+8) tokens" in out, out
    # network.T5Config: the model has emb_dim 64 and one layer per stack.
    from ext5.data.vocab import get_vocabulary, padded_vocab_size
    from ext5.model import configs
    from ext5.model.t5 import init_params
    cfg = configs.get_config("tiny", vocab_size=padded_vocab_size(get_vocabulary("local")), emb_dim=64,
                             num_encoder_layers=1, num_decoder_layers=1)
    shapes = jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0)))
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
    assert f"{n / 1e6:.2f}M params" in out, (n, out)
    # SaveCheckpointConfig: every step saved (period 1), the 2 latest kept.
    assert sorted(p.name for p in model_dir.glob("checkpoint_*")) == ["checkpoint_3", "checkpoint_4"]
    # create_learning_rate_scheduler: the file's 'constant' factor with the command line's base rate.
    rows = [json.loads(line) for line in (model_dir / "train" / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(r["learning_rate"] == pytest.approx(0.004) for r in rows)
    import gin
    assert gin.query_parameter("trainer.train.num_microbatches") == 2
    assert gin.query_parameter("train/trainer.DatasetConfig.pack") is False
    assert "num_microbatches = 2" in (model_dir / "config.gin").read_text()
