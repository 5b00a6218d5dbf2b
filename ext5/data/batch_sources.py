"""One pipeline, two sources: the batch source a training run reads, and which one it is.

    tasks with ArrayRecord caches (USE_CACHED_TASKS=True, `ext5 cache`)  -> grain_pipeline.GrainBatchSource
    anything else (uncached tasks: the local demo, small runs)            -> pipeline.HostBatchIterator (tf.data)

Both emit the same host batches (seqio's packed or unpacked features, int32 [host_batch, length]) from the same
best-fit packer, and both follow the batch-source protocol: `__next__() -> dict[str, np.ndarray]`,
`state(directory) -> dict` (JSON-able), `restore(state, directory)`, `input_len`, `target_len`. The choice is
printed at start-up. Rates come from the seqio mixture itself (seqio.Mixture.get_rate, nested mixtures, T0's
caps and ExMIX's rate functions included), so both paths mix by the same rates.
"""
from __future__ import annotations

import importlib
from typing import Any

from ext5.errors import UsageError

PIPELINES = ("auto", "grain", "tf.data")


def mixture_tasks(name: str) -> list[tuple[Any, float]]:
    """(seqio.Task, rate) of every task in a mixture (rate 1 for a task), as seqio computes the rates."""
    import seqio
    from ext5.data import pipeline
    provider = pipeline.get_provider(name)
    if isinstance(provider, seqio.Task):
        return [(provider, 1.0)]
    return [(t, float(provider.get_rate(t))) for t in provider.tasks]


def post_cache_eos(task: Any) -> dict[str, tuple[int, bool]] | None:
    """The EOS that `task`'s preprocessors after its cache point add, as {feature: (eos_id, after_trim)}; None if
    they do more than append EOS (e.g. random span corruption), which only the tf.data path can run."""
    import seqio
    procs = list(task.preprocessors)
    marks = [i for i, p in enumerate(procs) if isinstance(p, seqio.CacheDatasetPlaceholder)]
    if not marks:
        return None
    spec: dict[str, tuple[int, bool]] = {}
    for p in procs[marks[0] + 1:]:
        fn = getattr(p, "func", p)
        if fn is seqio.preprocessors.append_eos_after_trim:
            after_trim = True
        elif fn is seqio.preprocessors.append_eos:
            after_trim = False
        else:
            return None
        for f in ("inputs", "targets"):
            feat = task.output_features.get(f)
            if feat is not None and feat.add_eos:
                spec[f] = (int(feat.vocabulary.eos_id), after_trim)
    return spec


def grain_blockers(name: str, split: str) -> list[str]:
    """Why tasks of `name` (with a positive rate) cannot be read by the grain pipeline: one phrase each."""
    from ext5.data import array_cache
    out = []
    for t, rate in mixture_tasks(name):
        if rate <= 0:
            continue
        if post_cache_eos(t) is None:
            out.append(f"{t.name} (preprocessors after its cache point other than append_eos)")
        elif not array_cache.has_index(t.cache_dir, split):
            out.append(f"{t.name} (no ArrayRecord cache for split '{split}')")
    return out


def grain_source(name: str, split: str, input_len: int, target_len: int, global_batch_size: int, *,
                 shard_index: int = 0, num_shards: int = 1, seed: int = 0, shuffle: bool = True, pack: bool = True,
                 pack_window: int = 512, workers: int = 0):
    """The grain batch source of a cached mixture/task (every task needs `ext5 cache`'s ArrayRecord files)."""
    from ext5.data.array_cache import CachedSplit
    from ext5.data.grain_pipeline import GrainBatchSource
    blockers = grain_blockers(name, split)
    if blockers:
        shown = ", ".join(blockers[:3]) + (f" and {len(blockers) - 3} more" if len(blockers) > 3 else "")
        raise UsageError(f"the grain pipeline cannot read {shown} of '{name}'; run `ext5 cache --tasks={name} "
                         f"--output_cache_dir=DIR` with --seqio_additional_cache_dirs=DIR, or use "
                         f"DatasetConfig.pipeline='tf.data'")
    tasks = [(t.name, CachedSplit(t.cache_dir, split, t.name), rate, post_cache_eos(t))
             for t, rate in mixture_tasks(name) if rate > 0]
    return GrainBatchSource(tasks, input_len, target_len, global_batch_size, shard_index=shard_index,
                            num_shards=num_shards, seed=seed, shuffle=shuffle, pack=pack, pack_window=pack_window,
                            workers=workers)


def choose(cfg: Any) -> tuple[str, str]:
    """("grain" | "tf.data", why) for a DatasetConfig."""
    want = getattr(cfg, "pipeline", "auto")
    if want not in PIPELINES:
        raise UsageError(f"DatasetConfig.pipeline={want!r}; use one of {', '.join(PIPELINES)}")
    if want == "tf.data":
        return "tf.data", "DatasetConfig.pipeline='tf.data'"
    if want == "grain":
        if cfg.packer != "best_fit":
            raise UsageError(f"DatasetConfig.pipeline='grain' packs with ext5's best-fit packer, not "
                             f"packer={cfg.packer!r}; drop one of the two settings")
        return "grain", "DatasetConfig.pipeline='grain'"
    if not cfg.use_cached:
        return "tf.data", "tasks read uncached (USE_CACHED_TASKS=False)"
    if cfg.packer != "best_fit":
        return "tf.data", f"packer={cfg.packer!r}"
    blockers = grain_blockers(cfg.mixture_or_task_name, cfg.split)
    if blockers:
        return "tf.data", f"the grain pipeline cannot read {len(blockers)} task(s), e.g. {blockers[0]}"
    return "grain", "every task has an ArrayRecord cache"


def make_batch_source(cfg: Any, shard_index: int, num_shards: int, host_batch_size: int, *, log=print):
    """This host's batch source for a trainer.DatasetConfig, opened (data errors surface before the model is
    built); says which pipeline runs and why."""
    if cfg.module:
        importlib.import_module(cfg.module)
    from ext5.data import pipeline
    pipeline.check_registered(cfg.mixture_or_task_name)
    kind, why = choose(cfg)
    lengths = dict(cfg.task_feature_lengths)
    seed = cfg.seed if cfg.seed is not None else 0
    if kind == "grain":
        src = grain_source(cfg.mixture_or_task_name, cfg.split, int(lengths["inputs"]), int(lengths["targets"]),
                           host_batch_size * num_shards, shard_index=shard_index, num_shards=num_shards, seed=seed,
                           shuffle=cfg.shuffle, pack=cfg.pack, pack_window=cfg.pack_window,
                           workers=getattr(cfg, "workers", 0))
        desc = src.describe()
    else:
        src = pipeline.HostBatchIterator(
            cfg.mixture_or_task_name, lengths, host_batch_size, split=cfg.split, shuffle=cfg.shuffle, seed=seed,
            shard_index=shard_index, num_shards=num_shards, pack=cfg.pack, use_cached=cfg.use_cached,
            packer=cfg.packer, pack_window=cfg.pack_window)
        desc = f"tf.data (seqio get_dataset, host shard {shard_index}/{num_shards})"
    if shard_index == 0:
        log(f"[ext5] data pipeline: {desc} -- {why}", flush=True)
    return src.open()
