"""C4 span corruption, T5's standard pre-training objective, on TFDS c4/en.

Task `c4_span_corruption`: text -> tokens -> (cache point) -> span corruption with noise density
0.15, mean noise span length 3 and sentinels counting down from the vocabulary's last id
(<extra_id_0>), as t5.data.preprocessors.span_corruption -> EOS. Long documents are split so
each piece corrupts to the inputs length. T5 used c4/en:3.0.1; TFDS 4.9 ships 3.1.0 (same text,
re-processed), which is used here.

The vocabulary of C4 and the ExMIX tasks (one, so that `ext5` can mix them) is chosen here:
`register(vocabulary=...)`, else $EXT5_VOCABULARY, else T5's ("t5";
gs://t5-data/vocabs/cc_all.32000.100extra). seqio loads it lazily: registering downloads nothing.
"""
from __future__ import annotations

import seqio

from ext5.data import preprocessors, registry
from ext5.data import vocab as vocab_lib
from ext5.errors import UsageError

ORIGIN = "ext5.tasks.c4"
TASK_NAME = "c4_span_corruption"
TFDS_NAME = "c4/en:3.1.0"


def output_features(vocabulary: str | None = None) -> dict[str, seqio.Feature]:
    """inputs/targets features (EOS appended) over the selected vocabulary (shared with ExMIX)."""
    return vocab_lib.output_features(vocab_lib.selected_vocabulary(vocabulary))


class PreparedTfdsSource(seqio.TfdsDataSource):
    """seqio.TfdsDataSource whose "dataset not prepared" failure is one line naming the fix
    (seqio's own is a KeyError on an empty `splits`). Shared by C4 and the ExMIX TFDS rows."""

    def _not_prepared(self, split: str, e: KeyError) -> UsageError:
        name = self.tfds_dataset.name
        builder = self.tfds_dataset.builder
        have = sorted(builder.info.splits.keys())
        if have:
            return UsageError(f"TFDS {name} has no split {self.tfds_dataset._map_split(split)!r} "
                              f"(has {have}); fix the task's splits")
        return UsageError(
            f"TFDS dataset {name} is not prepared in {builder.data_dir_root}: build it "
            f"(`tfds build {name.split(':')[0]}`) or pass --tfds_data_dir=DIR that has it")

    def num_input_examples(self, split: str):
        try:
            return super().num_input_examples(split)
        except KeyError as e:
            raise self._not_prepared(split, e) from e

    def list_shards(self, split: str):
        try:
            return super().list_shards(split)
        except KeyError as e:
            raise self._not_prepared(split, e) from e


def register(vocabulary: str | None = None,
             source: seqio.DataSource | None = None) -> seqio.Task:
    """(Re-)registers `c4_span_corruption`; `source` overrides TFDS c4/en (tests)."""
    return registry.add_task(
        TASK_NAME, origin=ORIGIN,
        source=source if source is not None else PreparedTfdsSource(
            tfds_name=TFDS_NAME, splits={"train": "train", "validation": "validation"}),
        preprocessors=preprocessors.span_corruption_preprocessors(),
        output_features=output_features(vocabulary),
        metric_fns=[])


register()
