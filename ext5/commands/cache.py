"""`ext5 cache`: preprocess seqio tasks offline with Apache Beam, for training with USE_CACHED_TASKS=True.

    ext5 cache --tasks=local_nli,local_scan --output_cache_dir=/tmp/cache
    ext5 cache --tasks='exmix_.*' --output_cache_dir=gs://bucket/cache \
        --pipeline_options=--runner=DataflowRunner,--project=P,--region=us-central1,--temp_location=gs://bucket/tmp
    t5x train --gin_file=local_tiny.gin --gin.USE_CACHED_TASKS=True --seqio_additional_cache_dirs=/tmp/cache ...

The Beam graph is seqio's own (`seqio.scripts.cache_tasks_main.run_pipeline`, built from `seqio.beam_utils`):
each split of each task runs the preprocessors up to its `seqio.CacheDatasetPlaceholder`, and writes
`<dir>/<task>/<split>.tfrecord-*-of-*`, `<split>.info.json`, `<split>.stats.json` and finally `COMPLETED`,
which is what `seqio.Task.cache_dir` looks for. With --array_record (the default) the same examples are also
written as ArrayRecord shards with per-shard token lengths and a small index of counts per split
(ext5/data/array_cache.py), which training reads by index through grain (docs/data_at_scale.md); each shard's
records are sorted by content, so the cache, and the training stream read from it, do not depend on Beam's
ordering. It is rebuilt here (a few lines) rather than called, because
seqio's script reads its settings from absl's global FLAGS, which `ext5`'s own argparse flags never parse.

--tasks takes task names, mixture names (expanded to their tasks) or regular expressions matched against
the whole task name (seqio's convention).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import os
import re
import sys
import zlib
from typing import Iterable, Sequence

from ext5.errors import UsageError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ext5 cache", allow_abbrev=False,
        description="Cache seqio tasks offline with Apache Beam (seqio's format; read with USE_CACHED_TASKS=True).")
    p.add_argument("--tasks", action="append", default=[], required=True,
                   help="comma-separated task names, mixture names or regexes (repeatable)")
    p.add_argument("--excluded_tasks", action="append", default=[],
                   help="comma-separated task names or regexes to skip (repeatable)")
    p.add_argument("--output_cache_dir", required=True, help="directory (local or gs://) to write caches to")
    p.add_argument("--tasks_additional_cache_dirs", action="append", default=[],
                   help="other cache directories: tasks already cached there are skipped unless --overwrite")
    p.add_argument("--module_import", action="append", default=[],
                   help="module to import (registers tasks); ext5.tasks is always imported")
    p.add_argument("--pipeline_options", action="append", default=[],
                   help="comma-separated Beam pipeline options, e.g. --runner=DataflowRunner,--project=P "
                        "(default --runner=DirectRunner)")
    p.add_argument("--min_shards", type=int, default=64,
                   help="minimum number of output files per split (more = better file-level shuffling)")
    p.add_argument("--max_shards", type=int, default=0, help="maximum number of output files per split (0 = none)")
    p.add_argument("--array_record", action=argparse.BooleanOptionalAction, default=True,
                   help="also write ArrayRecord shards + index for the grain pipeline (default: on)")
    p.add_argument("--overwrite", action="store_true", help="re-cache tasks already cached in --output_cache_dir")
    p.add_argument("--base_seed", type=int, default=None, help="base seed for random pre-cache preprocessors")
    p.add_argument("--tfds_data_dir", default=None, help="TFDS data dir (seqio.set_tfds_data_dir_override)")
    return p


def _split_list(values: Iterable[str]) -> list[str]:
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def select_tasks(patterns: Sequence[str], excluded: Sequence[str] = ()) -> list[str]:
    """Task names (sorted, unique) named by `patterns`: task or mixture names, or full-match regexes.

    Raises UsageError for a pattern that matches nothing or is not a valid regex.
    """
    import seqio
    tasks = sorted(seqio.TaskRegistry.names())
    selected: list[str] = []
    for pattern in patterns:
        if pattern in seqio.MixtureRegistry.names():
            matched = [t.name for t in seqio.get_mixture_or_task(pattern).tasks]
        elif pattern in tasks:
            matched = [pattern]
        else:
            try:
                rx = re.compile(pattern)
            except re.error as e:
                raise UsageError(f"--tasks pattern {pattern!r} is not a valid regex ({e}); use task names "
                                 "or a regex such as 'local_.*'") from None
            matched = [t for t in tasks if rx.fullmatch(t)]
        if not matched:
            from ext5.data.pipeline import unknown_name_error
            raise UsageError(f"--tasks={pattern}: {unknown_name_error(pattern)}")
        selected += [t for t in matched if t not in selected]
    try:
        drop = [re.compile(p) for p in excluded]
    except re.error as e:
        raise UsageError(f"--excluded_tasks has an invalid regex ({e}); use task names or e.g. 'exmix_.*'") from None
    return sorted(t for t in selected if not any(rx.fullmatch(t) for rx in drop))


def ensure_tfrecord_crc32c() -> None:
    """Beam's TFRecord sink needs google-crc32c, python-snappy or crcmod; without one the DirectRunner fails at
    its first write with an obscure error, so say what to install up front."""
    import importlib.util
    if not any(importlib.util.find_spec(m) for m in ("google_crc32c", "snappy", "crcmod")):
        raise UsageError("ext5 cache needs a CRC-32C library for Beam's TFRecord writer; "
                         "pip install 'ext5[cache]' (or google-crc32c)")


def _preprocessors_seed(task_name: str, base_seed: int | None) -> int | None:
    """As seqio_cache_tasks: a deterministic per-task seed derived from --base_seed."""
    if base_seed is None or base_seed == -1:
        return None
    return int.from_bytes(hashlib.md5(task_name.encode()).digest(), "little") + base_seed


def _keyed_record(example: dict, num_shards: int) -> tuple[int, tuple[int, bytes]]:
    from ext5.data import array_cache
    rec = array_cache.encode(example)
    crc = zlib.crc32(rec)
    return crc % num_shards, (crc, rec)


def _write_array_record_shard(item: tuple[int, Iterable[tuple[int, bytes]]], out_dir: str, split: str,
                              num_shards: int) -> dict:
    """Writes one shard (records sorted by content: deterministic) and its lengths; returns its index entry."""
    import tempfile
    import numpy as np
    import tensorflow as tf
    from ext5.data import array_cache
    shard, keyed = item
    records = [rec for _, rec in sorted(keyed)]
    name = array_cache.shard_name(split, shard, num_shards)
    lengths_name = array_cache.lengths_name(split, shard, num_shards)
    with tempfile.TemporaryDirectory() as tmp:
        array_cache.write_shard(os.path.join(tmp, name), records)
        np.save(os.path.join(tmp, lengths_name), array_cache.record_lengths(records), allow_pickle=False)
        for f in (name, lengths_name):  # tf.io.gfile: local or gs:// alike
            tf.io.gfile.copy(os.path.join(tmp, f), os.path.join(out_dir, f), overwrite=True)
    return {"file": name, "examples": len(records)}


def _write_array_record_index(shards: list[dict], path: str) -> None:
    import json
    import tensorflow as tf
    from ext5.data import array_cache
    shards = sorted(shards, key=lambda s: s["file"])
    index = {"format": array_cache.FORMAT, "features": list(array_cache.FEATURES), "shards": shards,
             "examples": sum(s["examples"] for s in shards)}
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(json.dumps(index, indent=1))


def build_pipeline(pipeline, task_names: Sequence[str], cache_dir: str, *, min_shards: int = 64,
                   max_shards: int = 0, base_seed: int | None = None, tfds_data_dir: str | None = None,
                   modules_to_import: Sequence[str] = (), array_record: bool = True) -> list[str]:
    """Adds seqio's caching transforms for every split of `task_names` to `pipeline`; returns output dirs.

    Mirrors seqio.scripts.cache_tasks_main.run_pipeline (same files, same sharding and seeds); with
    `array_record`, also writes each split as ArrayRecord shards + lengths + index (ext5.data.array_cache).
    """
    import functools
    from ext5.data import array_cache
    import apache_beam as beam
    import seqio
    from seqio import beam_utils
    out_dirs = []
    for name in task_names:
        task = seqio.TaskRegistry.get(name)
        out_dir = os.path.join(cache_dir, seqio.get_task_dir_from_name(name))
        done = []
        for split in task.splits:
            label = f"{name}_{split}"
            pat = beam_utils.PreprocessTask(task, split, modules_to_import=list(modules_to_import),
                                            preprocessors_seed=_preprocessors_seed(name, base_seed),
                                            tfds_data_dir=tfds_data_dir)
            num_shards = max(len(pat.shards), min_shards) if min_shards > 0 else len(pat.shards)
            if max_shards > 0:
                num_shards = min(num_shards, max_shards)
            # The reshuffle shuffles examples globally across output files (seqio does the same).
            examples = pipeline | f"{label}_pat" >> pat | f"{label}_shuffle" >> beam.Reshuffle()
            done.append(examples | f"{label}_write" >> beam_utils.WriteExampleTfRecord(
                seqio.get_cached_tfrecord_prefix(out_dir, split), num_shards=num_shards))
            done.append(examples | f"{label}_info" >> beam_utils.GetInfo(num_shards)
                        | f"{label}_write_info" >> beam_utils.WriteJson(seqio.get_cached_info_path(out_dir, split)))
            done.append(examples | f"{label}_stats" >> beam_utils.GetStats(task.output_features)
                        | f"{label}_write_stats" >> beam_utils.WriteJson(seqio.get_cached_stats_path(out_dir, split)))
            if array_record:
                done.append(
                    examples
                    | f"{label}_ar_key" >> beam.Map(_keyed_record, num_shards=num_shards)
                    | f"{label}_ar_group" >> beam.GroupByKey()
                    | f"{label}_ar_write" >> beam.Map(functools.partial(
                        _write_array_record_shard, out_dir=out_dir, split=split, num_shards=num_shards))
                    | f"{label}_ar_list" >> beam.combiners.ToList()
                    | f"{label}_ar_index" >> beam.Map(_write_array_record_index,
                                                      path=array_cache.index_path(out_dir, split)))
        # COMPLETED is written only after every split's files: seqio treats its presence as "cache usable".
        _ = (done | f"{name}_flatten" >> beam.Flatten() | f"{name}_discard" >> beam.Filter(lambda _: False)
             | f"{name}_completed" >> beam.io.textio.WriteToText(
                 os.path.join(out_dir, "COMPLETED"), append_trailing_newlines=False, num_shards=1,
                 shard_name_template=""))
        out_dirs.append(out_dir)
    return out_dirs


def cache_tasks(task_patterns: Sequence[str], output_cache_dir: str, *, excluded: Sequence[str] = (),
                pipeline_options: Sequence[str] = ("--runner=DirectRunner",), additional_cache_dirs: Sequence[str] = (),
                module_import: Sequence[str] = (), min_shards: int = 64, max_shards: int = 0,
                overwrite: bool = False, base_seed: int | None = None, tfds_data_dir: str | None = None,
                array_record: bool = True, log=print) -> dict[str, str]:
    """Caches the selected tasks under `output_cache_dir`; returns {task: its cache dir} for all selected.

    Tasks already cached (in `output_cache_dir` or `additional_cache_dirs`) are skipped unless `overwrite`.
    Raises UsageError if a selected task cannot be cached (no seqio.CacheDatasetPlaceholder).
    """
    import apache_beam as beam
    import seqio
    import tensorflow as tf
    import ext5.tasks  # noqa: F401  registers ext5's tasks and mixtures
    for m in module_import:
        importlib.import_module(m)
    if tfds_data_dir:
        seqio.set_tfds_data_dir_override(tfds_data_dir)
    names = select_tasks(task_patterns, excluded)
    not_cacheable = [n for n in names if not seqio.TaskRegistry.get(n).supports_caching]
    if not_cacheable:
        raise UsageError(f"task(s) {', '.join(not_cacheable)} cannot be cached: add seqio.CacheDatasetPlaceholder() "
                         "to their preprocessors after the deterministic steps, or exclude them with --excluded_tasks")
    seqio.add_global_cache_dirs([output_cache_dir, *additional_cache_dirs])
    result, todo = {}, []
    for n in names:
        task = seqio.TaskRegistry.get(n)
        task._cache_dir = None  # seqio memoises the lookup; look again (a cache may have appeared or gone)
        out_dir = os.path.join(output_cache_dir, seqio.get_task_dir_from_name(n))
        if task.cache_dir and not (overwrite and task.cache_dir == out_dir):
            why = ("--overwrite only replaces caches in --output_cache_dir" if overwrite
                   else "--overwrite to redo")
            log(f"ext5 cache: {n} already cached at {task.cache_dir} (skipped; {why})")
            result[n] = task.cache_dir
            continue
        if tf.io.gfile.exists(out_dir):
            tf.io.gfile.rmtree(out_dir)  # an overwrite, or a partial cache from an interrupted run
        todo.append(n)
    if todo:
        log(f"ext5 cache: caching {len(todo)} task(s) to {output_cache_dir}: {', '.join(todo)}")
        tf.io.gfile.makedirs(output_cache_dir)
        ensure_tfrecord_crc32c()
        options = beam.options.pipeline_options.PipelineOptions(list(pipeline_options) or ["--runner=DirectRunner"])
        with beam.Pipeline(options=options) as pipeline:
            dirs = build_pipeline(pipeline, todo, output_cache_dir, min_shards=min_shards, max_shards=max_shards,
                                  base_seed=base_seed, tfds_data_dir=tfds_data_dir,
                                  modules_to_import=["ext5.tasks", *module_import], array_record=array_record)
        for n, d in zip(todo, dirs):
            seqio.TaskRegistry.get(n)._cache_dir = None
            result[n] = d
    return result


def check_cached(mixture_or_task: str) -> None:
    """Raises UsageError (one line: which tasks, where seqio looked, how to fix) unless every cacheable task of
    `mixture_or_task` has a completed cache; seqio itself would fail later with a bare AssertionError."""
    import seqio
    from ext5.data.pipeline import get_provider
    tasks = seqio.get_subtasks(get_provider(mixture_or_task))
    missing = [t.name for t in tasks if t.supports_caching and not t.cache_dir]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise UsageError(
            f"USE_CACHED_TASKS=True but {shown} {'is' if len(missing) == 1 else 'are'} not cached in "
            f"{seqio.get_global_cache_dirs() or 'any cache directory'}; run `ext5 cache --tasks={mixture_or_task} "
            f"--output_cache_dir=DIR` and pass --seqio_additional_cache_dirs=DIR")


def main(argv: list[str]) -> int:
    """Entry point of `ext5 cache`."""
    args = build_parser().parse_args(argv)
    if args.min_shards < 0 or args.max_shards < 0:
        raise UsageError("--min_shards and --max_shards must be >= 0")
    result = cache_tasks(
        _split_list(args.tasks), args.output_cache_dir, excluded=_split_list(args.excluded_tasks),
        pipeline_options=_split_list(args.pipeline_options), additional_cache_dirs=args.tasks_additional_cache_dirs,
        module_import=args.module_import, min_shards=args.min_shards, max_shards=args.max_shards,
        overwrite=args.overwrite, base_seed=args.base_seed, tfds_data_dir=args.tfds_data_dir,
        array_record=args.array_record)
    for name, path in result.items():
        print(f"{name}\t{path}")
    print(f"train with: --gin.USE_CACHED_TASKS=True --seqio_additional_cache_dirs={args.output_cache_dir}",
          file=sys.stderr)
    return 0
