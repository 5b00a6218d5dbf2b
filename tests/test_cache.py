"""`ext5 cache`: seqio's Beam caching on the DirectRunner, then training that reads the cache.

To prove training reads the cache (and not the task's source), the cached task's source is made to fail
after caching: training without USE_CACHED_TASKS then fails, and with it trains.
"""
import json

import pytest
import seqio

from ext5 import cli
from ext5.commands.cache import check_cached
from ext5.data import batch_sources
from ext5.data.array_cache import CachedSplit
from ext5.data.grain_pipeline import GrainBatchSource
from ext5.errors import UsageError

TASK = "local_nli"
SMALL = ["--gin.TRAIN_STEPS=2", "--gin.EVAL_PERIOD=None", "--gin.trainer.train.evaluator=None",
         "--gin.CHECKPOINT_PERIOD=2", "--gin.BATCH_SIZE=8", "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 8}",
         f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'",
         # the smallest model that trains: this test is about data, and compile time dominates it
         "--gin.configs.get_config.num_encoder_layers=1", "--gin.configs.get_config.num_decoder_layers=1",
         "--gin.partitioning.PartitionConfig.num_partitions=1"]


class SourceRead(RuntimeError):
    pass


@pytest.fixture
def restore_seqio_cache_state():
    dirs = list(seqio.get_global_cache_dirs())
    yield
    seqio.set_global_cache_dirs(dirs)
    seqio.TaskRegistry.get(TASK)._cache_dir = None


def test_cache_then_train_with_use_cached_tasks(tmp_path, capsys, monkeypatch, restore_seqio_cache_state):
    cache_dir = tmp_path / "cache"
    assert cli.main(["cache", f"--tasks={TASK}", f"--output_cache_dir={cache_dir}", "--min_shards=2",
                     "--pipeline_options=--runner=DirectRunner"]) == 0
    out = cache_dir / TASK
    assert (out / "COMPLETED").exists()
    for split in ("train", "validation"):
        assert sorted(p.name for p in out.glob(f"{split}.tfrecord-*")) == [
            f"{split}.tfrecord-00000-of-00002", f"{split}.tfrecord-00001-of-00002"]
        info = json.loads((out / f"info.{split}.json").read_text())
        assert info["features"]["inputs"]["dtype"] == "int32"
        stats = json.loads((out / f"stats.{split}.json").read_text())
        assert stats["examples"] == seqio.TaskRegistry.get(TASK).num_input_examples(split)
        # The ArrayRecord copy holds exactly seqio's cached examples (sorted by content), with their lengths, and the
        # grain path adds the post-cache EOS as seqio does (append_eos_after_trim at the feature lengths): long
        # lengths compare the whole examples, short ones the trimming too.
        ar = CachedSplit(str(out), split)
        got = ar.read(range(len(ar)))
        assert len(got) == stats["examples"] and ar.lengths().tolist() == [[len(i), len(t)] for i, t in got]
        task = seqio.TaskRegistry.get(TASK)
        eos = batch_sources.post_cache_eos(task)
        assert eos == {"inputs": (1, True), "targets": (1, True)}
        for lengths in ({"inputs": 4096, "targets": 4096}, {"inputs": 24, "targets": 6}):
            src = GrainBatchSource([(TASK, ar, 1.0, eos)], lengths["inputs"], lengths["targets"], 8)
            mine = [tuple(tuple(x.tolist()) for x in src._post(0, f)) for f in got]
            seqio_ds = task.get_dataset(lengths, split, use_cached=True, shuffle=False)
            assert sorted(mine) == sorted((tuple(ex["inputs"].tolist()), tuple(ex["targets"].tolist()))
                                          for ex in seqio_ds.as_numpy_iterator())

    # Already cached: skipped, no pipeline. Unknown or uncacheable names: one-line errors.
    capsys.readouterr()
    assert cli.main(["cache", f"--tasks={TASK}", f"--output_cache_dir={cache_dir}"]) == 0
    assert "already cached" in capsys.readouterr().out
    assert cli.main(["cache", "--tasks=local_nope", f"--output_cache_dir={cache_dir}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ext5: error: --tasks=local_nope") and "\n" not in err

    # From here on the task's own data source is unreadable: only the cache can feed training.
    def unreadable(split, shuffle_files, seed=None):
        raise SourceRead(f"{TASK} source read although USE_CACHED_TASKS=True")
    monkeypatch.setattr(seqio.TaskRegistry.get(TASK).source, "_dataset_fn", unreadable)
    seqio.set_global_cache_dirs([])
    seqio.TaskRegistry.get(TASK)._cache_dir = None
    with pytest.raises(UsageError, match=f"{TASK} is not cached .*--seqio_additional_cache_dirs=DIR"):
        check_cached(TASK)
    with pytest.raises(SourceRead):  # what training without USE_CACHED_TASKS would read
        next(iter(seqio.get_mixture_or_task(TASK).get_dataset({"inputs": 64, "targets": 8}, use_cached=False)))
    base = ["train", "--gin_file=local_tiny.gin", *SMALL]

    model_dir = tmp_path / "cached"
    assert cli.main(base + [f"--gin.MODEL_DIR='{model_dir}'", "--gin.USE_CACHED_TASKS=True",
                            f"--seqio_additional_cache_dirs={cache_dir}"]) == 0
    assert seqio.TaskRegistry.get(TASK).cache_dir == str(out)
    assert "data pipeline: grain over ArrayRecord" in capsys.readouterr().out  # cached: the grain path runs
    check_cached(TASK)  # what `ext5 train` can check up front (see docs/caching.md)
    assert (model_dir / "checkpoint_2").exists()
    assert "USE_CACHED_TASKS = True" in (model_dir / "config.gin").read_text()

