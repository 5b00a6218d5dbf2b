"""Hugging Face datasets as seqio data sources (the real `datasets.load_dataset`, called lazily).

`hf_data_source(dataset_id, subset)` is a `seqio.DataSource` whose `get_dataset(split)` calls
`datasets.load_dataset(dataset_id, subset, split=..., revision=...)` -- at get_dataset time, never when a
task is registered -- and yields a tf.data.Dataset of the dataset's columns: strings as tf.string, ints as
tf.int64, floats as tf.float32, bools as tf.bool, ClassLabel as tf.int64, lists as 1-D tensors, lists of
lists as ragged tensors, and lists of dicts column-wise (a dict of lists, as TFDS does).

Loading scripts. `datasets` >= 4 no longer runs dataset loading scripts, and many ids that promptsource
(and so T0) names were script datasets (e.g. `super_glue`, `anli`, `hellaswag`, `winogrande`, `wiki_qa`,
`bigscience/P3`). The Hub keeps an automatic Parquet export of such datasets on the git revision
`refs/convert/parquet` (one config per subset, the same split names), which `load_dataset` reads with
no script: pass `revision=PARQUET_REVISION`, or set `EXT5_HF_REVISION=refs/convert/parquet` to make it
the default for every source that does not name a revision. Datasets that need a manual download
(`story_cloze`) take `data_dir=`.

Local files (tests, offline machines). When `EXT5_HF_MIRROR` names a directory and
`$EXT5_HF_MIRROR/<dataset_id>` exists, that directory is loaded instead of the Hub, through the same
`datasets.load_dataset(path, subset, split=...)` call. Its layout mirrors a Hub data repo: Parquet files
`<subset>/<split>-00000-of-00001.parquet` (subset `default` when there is none) and a README.md whose YAML
header lists the configs and splits, as on the Hub. `write_mirror` writes such a directory.

The materialised P3 (`bigscience/P3`, one config per prompted task, columns `inputs_pretokenized`,
`targets_pretokenized`, `answer_choices`, and for `<task>_score_eval` configs `idx`, `is_correct`,
`weight`) is `p3_data_source(task_name)`, an `hf_data_source` on that id.
"""
from __future__ import annotations

import logging
import os
import random
from typing import Any, Callable, Iterator, Mapping, Sequence

import seqio
import tensorflow as tf

PARQUET_REVISION = "refs/convert/parquet"
MIRROR_ENV = "EXT5_HF_MIRROR"
REVISION_ENV = "EXT5_HF_REVISION"
P3_ID = "bigscience/P3"
DEFAULT_SPLITS = {"train": "train", "validation": "validation", "test": "test"}

Transform = Callable[[dict], "dict | None"]


# ============================================================================ locating the data
def local_path(dataset_id: str) -> str | None:
    """`$EXT5_HF_MIRROR/<dataset_id>` when that directory exists, else None (load from the Hub)."""
    root = os.environ.get(MIRROR_ENV)
    if not root:
        return None
    path = os.path.join(root, dataset_id)
    return path if os.path.isdir(path) else None


def load_split(dataset_id: str, subset: str | None, split: str, *, revision: str | None = None,
               data_dir: str | None = None):
    """`datasets.load_dataset(...)` for one split, from the local mirror if it has the id."""
    import datasets  # heavy; only when data is actually read

    path = local_path(dataset_id)
    if path is not None:
        return datasets.load_dataset(path, subset or "default", split=split)
    revision = revision or os.environ.get(REVISION_ENV) or None
    try:
        return datasets.load_dataset(dataset_id, subset, split=split, revision=revision,
                                     data_dir=data_dir)
    except RuntimeError as e:  # "Dataset scripts are no longer supported"
        if "script" in str(e).lower() and revision != PARQUET_REVISION:
            raise RuntimeError(
                f"{dataset_id}/{subset}: {e}; load its Parquet export with revision="
                f"{PARQUET_REVISION!r} (or set {REVISION_ENV}={PARQUET_REVISION})") from e
        raise


# ============================================================================ HF features -> tf
def _value_spec(dtype: str) -> tf.TensorSpec:
    if dtype in ("string", "large_string"):
        return tf.TensorSpec([], tf.string)
    if dtype == "bool":
        return tf.TensorSpec([], tf.bool)
    if dtype.startswith(("int", "uint")):
        return tf.TensorSpec([], tf.int64)
    if dtype.startswith(("float", "double")):
        return tf.TensorSpec([], tf.float32)
    raise ValueError(f"column type {dtype!r} has no tf equivalent here; drop the column first")


def _list_of(spec: Any) -> Any:
    """Spec of a list of `spec` values: a dict of lists for dicts, 1-D for scalars, ragged deeper."""
    if isinstance(spec, dict):
        return {k: _list_of(v) for k, v in spec.items()}
    if isinstance(spec, tf.TensorSpec) and spec.shape.rank == 0:
        return tf.TensorSpec([None], spec.dtype)
    rank = spec.shape.rank
    return tf.RaggedTensorSpec([None] * (rank + 1), spec.dtype, ragged_rank=rank)


def feature_spec(feature: Any) -> Any:
    """tf spec (nested dict of TensorSpec / RaggedTensorSpec) of a `datasets` feature."""
    import datasets

    if isinstance(feature, (dict, datasets.Features)):
        return {k: feature_spec(v) for k, v in feature.items()}
    if isinstance(feature, datasets.ClassLabel):
        return tf.TensorSpec([], tf.int64)
    if isinstance(feature, datasets.Value):
        return _value_spec(feature.dtype)
    if isinstance(feature, datasets.Translation):
        return {lang: tf.TensorSpec([], tf.string) for lang in feature.languages}
    inner = getattr(feature, "feature", None)
    if inner is not None:  # List / LargeList / legacy Sequence
        return _list_of(feature_spec(inner))
    raise ValueError(f"feature {feature!r} is not supported by hf_data_source; drop that column")


def _default(spec: tf.TensorSpec) -> Any:
    return {tf.string: "", tf.bool: False, tf.float32: float("nan")}.get(spec.dtype, -1)


def to_tf_value(value: Any, spec: Any) -> Any:
    """A python value from `datasets` converted to match `spec` (None -> "" / -1 / nan)."""
    if isinstance(spec, dict):
        if isinstance(value, list):  # list of dicts -> dict of lists
            return {k: to_tf_value([v.get(k) for v in value], s) for k, s in spec.items()}
        value = value or {}
        return {k: to_tf_value(value.get(k), s) for k, s in spec.items()}
    if isinstance(spec, tf.RaggedTensorSpec):
        if not value:  # an empty outer list: ragged_rank cannot be inferred from values
            empty = tf.zeros([0], spec.dtype)
            for _ in range(spec.ragged_rank):
                empty = tf.RaggedTensor.from_row_lengths(empty, tf.zeros([0], tf.int64))
            return empty
        return tf.ragged.constant(value, dtype=spec.dtype, ragged_rank=spec.ragged_rank)
    if spec.shape.rank == 1:
        value = [_default(tf.TensorSpec([], spec.dtype)) if v is None else v for v in (value or [])]
        return tf.constant(value, dtype=spec.dtype, shape=[len(value)])
    return _default(spec) if value is None else value


# ============================================================================ the data source
class HFDataSource(seqio.DataSource):
    """A seqio DataSource over one Hugging Face dataset (id, subset); see the module docstring."""

    def __init__(self, dataset_id: str, subset: str | None = None, *,
                 splits: Mapping[str, str] | None = None, revision: str | None = None,
                 num_input_examples: Mapping[str, int] | None = None, data_dir: str | None = None,
                 transform: Transform | None = None,
                 output_signature: Mapping[str, Any] | None = None):
        if transform is not None and output_signature is None:
            raise ValueError("hf_data_source(transform=...) also needs output_signature= "
                             "(the tf specs of what transform returns)")
        self.dataset_id, self.subset = dataset_id, subset
        self.split_map = dict(splits or DEFAULT_SPLITS)
        self.revision, self.data_dir = revision, data_dir
        self.transform, self.output_signature = transform, output_signature
        super().__init__(splits=tuple(self.split_map), num_input_examples=num_input_examples)

    def __repr__(self) -> str:
        return (f"HFDataSource({self.dataset_id!r}, {self.subset!r}, splits={self.split_map}, "
                f"revision={self.revision!r})")

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return True

    def num_input_examples(self, split: str) -> int | None:
        """Rows of `split` when given at construction (often only "train" is known), else None."""
        return (self._num_input_examples or {}).get(split)

    def list_shards(self, split: str) -> Sequence[str]:
        return [self.split_map[split]]

    def load(self, split: str):
        """The `datasets.Dataset` of seqio split `split` (calls the real load_dataset)."""
        if split not in self.split_map:
            raise ValueError(f"{self.dataset_id}/{self.subset} has no split {split!r}; "
                             f"splits: {sorted(self.split_map)}")
        return load_split(self.dataset_id, self.subset, self.split_map[split],
                          revision=self.revision, data_dir=self.data_dir)

    def get_dataset(self, split: str = "train", shuffle: bool = True, seed: int | None = None,
                    shard_info: seqio.ShardInfo | None = None, *,
                    sequence_length: Mapping[str, int] | None = None, use_cached: bool = False,
                    num_epochs: int | None = 1) -> tf.data.Dataset:
        del sequence_length, use_cached
        hf = self.load(split)
        if shard_info is not None and shard_info.num_shards > 1:
            hf = hf.shard(shard_info.num_shards, shard_info.index, contiguous=True)
        if shuffle:  # order of rows (index permutation; the Task's buffer shuffles further)
            hf = hf.shuffle(seed=seed if seed is not None else random.randrange(2**31))
        col_spec = feature_spec(hf.features)
        spec = self.output_signature if self.transform is not None else col_spec
        transform = self.transform

        def rows() -> Iterator[dict]:
            for row in hf:
                if transform is not None:
                    row = transform(row)
                    if row is None:
                        continue
                yield to_tf_value(row, spec)

        ds = tf.data.Dataset.from_generator(rows, output_signature=spec)
        return ds.repeat(num_epochs) if num_epochs != 1 else ds


def hf_data_source(dataset_id: str, subset: str | None = None, *,
                   splits: Mapping[str, str] | None = None, revision: str | None = None,
                   num_input_examples: Mapping[str, int] | None = None,
                   data_dir: str | None = None, transform: Transform | None = None,
                   output_signature: Mapping[str, Any] | None = None) -> seqio.DataSource:
    """A seqio DataSource over `datasets.load_dataset(dataset_id, subset)`, loaded lazily.

    Args:
      dataset_id, subset: as on the Hub (`"super_glue", "rte"`); subset None for datasets without one.
      splits: seqio split name -> dataset split (e.g. {"validation": "dev_r1"}); default
        train/validation/test as they are.
      revision: git revision, e.g. PARQUET_REVISION for ids whose Hub repo is a loading script.
      num_input_examples: seqio split -> row count, known without reading (mixing rates use it).
      data_dir: for datasets that need a manual download (story_cloze).
      transform: optional python function applied to each row (a dict of python values); it returns
        the output row or None to drop the example. With it, `output_signature` gives the tf specs of
        the rows it returns (ext5.data.prompts renders promptsource templates this way).
    """
    return HFDataSource(dataset_id, subset, splits=splits, revision=revision,
                        num_input_examples=num_input_examples, data_dir=data_dir,
                        transform=transform, output_signature=output_signature)


# P3's columns: (tf spec) for training configs and the extra rank-classification ones of _score_eval.
P3_FEATURES = {"inputs_pretokenized": tf.TensorSpec([], tf.string),
               "targets_pretokenized": tf.TensorSpec([], tf.string),
               "answer_choices": tf.TensorSpec([None], tf.string)}
P3_SCORE_EVAL_FEATURES = {**P3_FEATURES, "idx": tf.TensorSpec([None], tf.int64),
                          "is_correct": tf.TensorSpec([], tf.bool),
                          "weight": tf.TensorSpec([], tf.float32)}


def p3_data_source(task_name: str, *, splits: Mapping[str, str] | None = None,
                   revision: str | None = None,
                   num_input_examples: Mapping[str, int] | None = None) -> seqio.DataSource:
    """The materialised P3 config `task_name` (a T0 task name, e.g. `super_glue_rte_GPT_3_style` or
    its `_score_eval` twin) as a data source; columns P3_FEATURES (+ idx/is_correct/weight)."""
    return hf_data_source(P3_ID, task_name, splits=splits, revision=revision,
                          num_input_examples=num_input_examples)


# ============================================================================ local mirrors
def write_mirror(root: str, dataset_id: str, subset: str | None,
                 splits: Mapping[str, Sequence[Mapping[str, Any]]],
                 features: Any = None) -> str:
    """Write rows as a Hub-layout directory under `root` (Parquet + README.md config list).

    `splits` maps split name -> rows (dicts of python values). Other subsets already in the directory
    are kept (the README lists every `<subset>/` folder). `features` (a `datasets.Features`) pins the
    column types, e.g. ClassLabel; by default they are inferred. Returns the dataset directory.
    """
    import datasets

    path = os.path.join(root, dataset_id)
    config = subset or "default"
    os.makedirs(os.path.join(path, config), exist_ok=True)
    for split, rows in splits.items():
        ds = datasets.Dataset.from_list(list(rows), features=features)
        ds.to_parquet(os.path.join(path, config, f"{split}-00000-of-00001.parquet"))
    lines = ["---", "configs:"]
    for cfg in sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d))):
        lines += [f"- config_name: {cfg}", "  data_files:"]
        for f in sorted(os.listdir(os.path.join(path, cfg))):
            if f.endswith("-00000-of-00001.parquet"):
                split = f[: -len("-00000-of-00001.parquet")]
                lines += [f"  - split: {split}", f"    path: {cfg}/{split}-*.parquet"]
    lines.append("---")
    with open(os.path.join(path, "README.md"), "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    logging.debug("wrote local mirror of %s/%s at %s", dataset_id, subset, path)
    return path
