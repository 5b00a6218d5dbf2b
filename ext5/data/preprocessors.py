"""Shared seqio preprocessors: parameter-driven text-to-text formatting and T5 span corruption.

Formatting is data, not code: a task is described by templates such as
``inputs_template="nli premise: {premise} hypothesis: {hypothesis}"`` so that the ExMIX catalogue
can add a task as a row. Span corruption is a port of T5's `span_corruption`
(t5.data.preprocessors; not installed here) with its exact defaults and seed use, so that
pretraining examples match T5's statistics.
"""
from __future__ import annotations

import functools
import string
from typing import Any, Callable, Mapping, Sequence

import seqio
import tensorflow as tf

NOISE_DENSITY = 0.15
MEAN_NOISE_SPAN_LENGTH = 3.0

# ============================================================================ formatting
FieldText = Callable[[Mapping[str, Any], str], tf.Tensor]


def _feature_text(template: str, ex: Mapping[str, tf.Tensor], field: str) -> tf.Tensor:
    """`ex[field]` as a string tensor (non-strings through tf.strings.as_string)."""
    if field not in ex:
        raise KeyError(f"template {template!r} needs feature {field!r}; example has {sorted(ex)}")
    v = ex[field]
    return v if v.dtype == tf.string else tf.strings.as_string(v)


def render_template(template: str, ex: Mapping[str, Any],
                    field_text: FieldText | None = None) -> tf.Tensor:
    """Fills the `{field}` slots of `template` from the example: the one template renderer.

    By default a slot reads the example's string (or int) feature of that name; `field_text(ex,
    field)` replaces that lookup (ExMIX's follows dotted paths and joins lists).
    """
    parts = []
    for literal, field, _, _ in string.Formatter().parse(template):
        if literal:
            parts.append(tf.constant(literal))
        if field:
            parts.append(field_text(ex, field) if field_text else _feature_text(template, ex, field))
    if not parts:
        return tf.constant("")
    return tf.strings.join(parts)


@seqio.map_over_dataset
def text_to_text(ex: Mapping[str, tf.Tensor], *, inputs_template: str, targets_template: str,
                 label_names: Sequence[str] | None = None, label_field: str = "label",
                 passthrough: Sequence[str] = ()) -> dict[str, tf.Tensor]:
    """Formats one example into {"inputs", "targets"} strings from templates.

    Args:
      inputs_template / targets_template: str.format-style templates over the example's features,
        e.g. "question: {question} context: {context}" and "{answer}".
      label_names: when given, an integer `label_field` is first mapped to its name, so
        "{label}" renders as e.g. "entailment" (as in GLUE-style TFDS datasets).
      passthrough: features kept unchanged next to inputs/targets (e.g. "answers" for SQuAD
        metrics, read by the postprocessor during evaluation).
    """
    ex = dict(ex)
    if label_names is not None and label_field in ex and ex[label_field].dtype != tf.string:
        ex[label_field] = tf.gather(tf.constant(list(label_names)), ex[label_field])
    out = {"inputs": render_template(inputs_template, ex), "targets": render_template(targets_template, ex)}
    for k in passthrough:
        out[k] = ex[k]
    return out


# ============================================================================ span corruption
def random_spans_helper(inputs_length: int, noise_density: float = NOISE_DENSITY,
                        mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
                        extra_tokens_per_span_inputs: int = 1,
                        extra_tokens_per_span_targets: int = 1) -> tuple[int, int]:
    """(tokens_length, targets_length): raw tokens that corrupt to exactly `inputs_length`
    inputs (incl. EOS), and the targets length this yields (T5's helper, same arithmetic)."""
    def _lengths(tokens_length: int) -> tuple[int, int]:
        num_noise_tokens = int(round(tokens_length * noise_density))
        num_nonnoise_tokens = tokens_length - num_noise_tokens
        num_noise_spans = int(round(num_noise_tokens / mean_noise_span_length))
        # +1 for EOS on each side.
        return (num_nonnoise_tokens + num_noise_spans * extra_tokens_per_span_inputs + 1,
                num_noise_tokens + num_noise_spans * extra_tokens_per_span_targets + 1)

    tokens_length = inputs_length - 1
    while _lengths(tokens_length + 1)[0] <= inputs_length:
        tokens_length += 1
    return tokens_length, _lengths(tokens_length)[1]


def random_spans_noise_mask(length: tf.Tensor, noise_density: float, seeds,
                            mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH) -> tf.Tensor:
    """Boolean [length] mask: round(length*density) noise tokens in round(n/mean) spans,
    noise and non-noise span lengths drawn as random segmentations (T5, no random roll)."""
    orig_length = length
    length = tf.maximum(length, 2)  # a length-1 sequence would otherwise have no non-noise span

    num_noise_tokens = tf.cast(tf.round(tf.cast(length, tf.float32) * noise_density), tf.int32)
    num_noise_tokens = tf.minimum(tf.maximum(num_noise_tokens, 1), length - 1)
    num_noise_spans = tf.cast(
        tf.round(tf.cast(num_noise_tokens, tf.float32) / mean_noise_span_length), tf.int32)
    num_noise_spans = tf.maximum(num_noise_spans, 1)
    num_nonnoise_tokens = length - num_noise_tokens

    def _random_segmentation(num_items, num_segments, seed):
        # Partition num_items into num_segments non-empty pieces uniformly at random.
        first_in_segment = tf.pad(
            seqio.utils.stateless_shuffle(
                tf.cast(tf.range(num_items - 1) < num_segments - 1, tf.int32), seed),
            [[1, 0]])
        segment_id = tf.cumsum(first_in_segment)
        return tf.math.segment_sum(tf.ones_like(segment_id), segment_id)

    noise_span_lengths = _random_segmentation(num_noise_tokens, num_noise_spans, seeds[0])
    nonnoise_span_lengths = _random_segmentation(num_nonnoise_tokens, num_noise_spans, seeds[1])
    interleaved = tf.reshape(tf.stack([nonnoise_span_lengths, noise_span_lengths], axis=1),
                             [num_noise_spans * 2])
    span_starts = tf.cumsum(interleaved)[:-1]
    span_start_indicator = tf.math.unsorted_segment_sum(
        tf.ones_like(span_starts), span_starts, length)
    span_num = tf.cumsum(span_start_indicator)
    is_noise = tf.equal(span_num % 2, 1)
    return is_noise[:orig_length]


def sentinel_id(vocabulary: seqio.Vocabulary) -> int:
    """First sentinel (<extra_id_0>) = the last id of the vocabulary, as in T5."""
    return vocabulary.vocab_size - 1


def noise_span_to_unique_sentinel(tokens: tf.Tensor, noise_mask: tf.Tensor,
                                  vocabulary: seqio.Vocabulary) -> tf.Tensor:
    """Replaces each noise span by one sentinel, counting down from vocab_size - 1."""
    prev_token_is_noise = tf.pad(noise_mask[:-1], [[1, 0]])
    first_noise_tokens = tf.logical_and(noise_mask, tf.logical_not(prev_token_is_noise))
    subsequent_noise_tokens = tf.logical_and(noise_mask, prev_token_is_noise)
    sentinel = sentinel_id(vocabulary) + 1 - tf.cumsum(tf.cast(first_noise_tokens, tokens.dtype))
    tokens = tf.where(first_noise_tokens, sentinel, tokens)
    return tf.boolean_mask(tokens, tf.logical_not(subsequent_noise_tokens))


def nonnoise_span_to_unique_sentinel(tokens: tf.Tensor, noise_mask: tf.Tensor,
                                     vocabulary: seqio.Vocabulary) -> tf.Tensor:
    return noise_span_to_unique_sentinel(tokens, tf.logical_not(noise_mask), vocabulary)


def split_tokens(dataset: tf.data.Dataset, max_tokens_per_segment: int,
                 feature_key: str = "targets") -> tf.data.Dataset:
    """Splits `feature_key` into consecutive pieces of at most max_tokens_per_segment tokens
    (T5's split_tokens without random offsets); other features are dropped."""
    def _split(ex):
        tokens = ex[feature_key]
        n = tf.size(tokens)
        num_segments = tf.maximum(1, (n + max_tokens_per_segment - 1) // max_tokens_per_segment)
        lengths = tf.concat([
            tf.fill([num_segments - 1], max_tokens_per_segment),
            [n - (num_segments - 1) * max_tokens_per_segment]], axis=0)
        return tf.data.Dataset.from_tensor_slices(
            {feature_key: tf.RaggedTensor.from_row_lengths(tokens, lengths)})

    def _densify(ex):
        return {k: v.to_tensor() if isinstance(v, tf.RaggedTensor) else v for k, v in ex.items()}

    return dataset.flat_map(_split).map(_densify)


def span_corruption(dataset: tf.data.Dataset, sequence_length: Mapping[str, int] | None,
                    output_features: Mapping[str, seqio.Feature], *,
                    noise_density: float = NOISE_DENSITY,
                    mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
                    split_long_documents: bool = True) -> tf.data.Dataset:
    """T5 span corruption on tokenized "targets" (e.g. after rekey({'targets': 'text'}) + tokenize).

    Long documents are first split into pieces that corrupt to sequence_length["inputs"]
    (minus EOS); then inputs = tokens with each noise span replaced by a sentinel and
    targets = sentinel + span pairs. Sentinels count down from vocab_size - 1 (the
    vocabulary's extra ids). Follow with seqio.preprocessors.append_eos_after_trim.
    Seeds come from seqio's map seed manager, so a fixed get_dataset(seed=...) is deterministic.
    """
    if split_long_documents and sequence_length and sequence_length.get("inputs"):
        tokens_length, _ = random_spans_helper(sequence_length["inputs"], noise_density,
                                               mean_noise_span_length)
        dataset = split_tokens(dataset, tokens_length)
    vocabulary = output_features["targets"].vocabulary
    return _denoise(dataset, vocabulary=vocabulary, noise_density=noise_density,
                    mean_noise_span_length=mean_noise_span_length)


@seqio.map_over_dataset(num_seeds=2)
def _denoise(ex: Mapping[str, tf.Tensor], seeds, *, vocabulary: seqio.Vocabulary,
             noise_density: float, mean_noise_span_length: float) -> dict[str, tf.Tensor]:
    tokens = ex["targets"]
    noise_mask = random_spans_noise_mask(tf.size(tokens), noise_density, seeds,
                                         mean_noise_span_length)
    return {"inputs": noise_span_to_unique_sentinel(tokens, noise_mask, vocabulary),
            "targets": nonnoise_span_to_unique_sentinel(tokens, noise_mask, vocabulary)}


# ============================================================================ task preprocessor lists
def task_preprocessors(*formatting: Callable, after_cache: Sequence[Callable] = ()) -> list:
    """A text task's seqio preprocessors: `formatting` (raw features -> "inputs"/"targets"), tokenize,
    the cache point, `after_cache` (random steps, fresh each epoch), then EOS after trimming."""
    return [*formatting, seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(), *after_cache,
            seqio.preprocessors.append_eos_after_trim]


def span_corruption_preprocessors() -> list:
    """T5 span corruption of a "text" feature (C4, the local corpus), corrupted after the cache point."""
    return task_preprocessors(
        functools.partial(seqio.preprocessors.rekey, key_map={"inputs": None, "targets": "text"}),
        after_cache=[span_corruption])
