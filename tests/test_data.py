"""Local tasks, vocabulary, metrics, span corruption and the host batch pipeline."""
from __future__ import annotations

import importlib
import json
import subprocess
import sys

import numpy as np
import pytest
import seqio
import tensorflow as tf

import ext5.tasks
from ext5.data import packing, preprocessors, task_metrics as metrics
from ext5.data.pipeline import HostBatchIterator
from ext5.data.vocab import get_vocabulary, local_spm_path, padded_vocab_size
from ext5.tasks import local
from ext5.tasks.local import generate

LENGTHS = {"inputs": 128, "targets": 32}
TASKS = local.TASK_NAMES


def _examples(name: str, split: str, n: int | None = None) -> list[dict]:
    ds = seqio.get_mixture_or_task(name).get_dataset(
        sequence_length=LENGTHS, split=split, shuffle=False, seed=0, num_epochs=1)
    if n:
        ds = ds.take(n)
    return list(ds.as_numpy_iterator())


# ------------------------------------------------------------------ registry
def test_registration_is_idempotent_and_complete():
    importlib.reload(ext5.tasks)
    local.register()
    local.register()
    for name in TASKS:
        assert name in seqio.TaskRegistry.names()
    mix = seqio.get_mixture_or_task("local_default")
    assert sorted(t.name for t in mix.tasks) == sorted(TASKS)
    # Examples-proportional rates.
    for t in mix.tasks:
        assert mix.get_rate(t) == t.num_input_examples("train")


def test_sizes_and_held_out_validation():
    for fam in generate.FAMILIES:
        data = generate.generate(fam)
        assert 1000 <= len(data["train"]) <= 5000, fam
        assert 100 <= len(data["validation"]) <= 200, fam
        train = {json.dumps(ex, sort_keys=True) for ex in data["train"]}
        assert not any(json.dumps(ex, sort_keys=True) in train for ex in data["validation"]), fam
    # cbqa: validation asks about trained facts, with phrasings never used in training.
    cb = generate.generate("cbqa")
    train_q = {ex["question"] for ex in cb["train"]}
    train_a = {ex["answer"] for ex in cb["train"]}
    assert all(ex["question"] not in train_q and ex["answer"] in train_a
               for ex in cb["validation"])


# ------------------------------------------------------------------ tokenized examples
@pytest.mark.parametrize("name", TASKS)
def test_task_yields_valid_tokenized_examples(name):
    vocab = get_vocabulary("local")
    for split in ("train", "validation"):
        exs = _examples(name, split, n=64)
        assert len(exs) == 64
        for ex in exs:
            for feat in ("inputs", "targets"):
                tok = ex[feat]
                assert tok.dtype == np.int32 and tok.ndim == 1
                assert 2 <= tok.size <= LENGTHS[feat], (feat, tok.size)
                assert tok[-1] == vocab.eos_id and (tok[:-1] != vocab.eos_id).all()
                assert (tok > 0).all() and (tok < vocab.vocab_size).all()
            if "targets_pretokenized" in ex:  # text tasks: tokens decode back to the text
                assert vocab.decode(ex["targets"].tolist()) == ex["targets_pretokenized"].decode()


# ------------------------------------------------------------------ vocabulary
def test_vocabulary_ids_and_round_trip():
    vocab = get_vocabulary("local")
    assert (vocab.pad_id, vocab.eos_id, vocab.unk_id) == (0, 1, 2)
    assert vocab.extra_ids == 100 and vocab.vocab_size == 1100
    assert padded_vocab_size(vocab) == 1152 and padded_vocab_size(vocab) % 128 == 0
    import sentencepiece as spm  # the committed model itself, before seqio adds extra ids
    raw = spm.SentencePieceProcessor(model_file=local_spm_path())
    assert raw.bos_id() == -1 and raw.get_piece_size() == 1000
    assert [raw.id_to_piece(i) for i in range(3)] == ["<pad>", "</s>", "<unk>"]
    texts = []
    for fam in generate.FAMILIES:
        for ex in generate.generate(fam)["validation"][:30]:
            texts += [v for v in ex.values() if isinstance(v, str)]
    texts.append("Unseen ünïcode ☃ text, 2024!")  # byte fallback: still lossless
    for text in texts:
        ids = vocab.encode(text)
        assert vocab.unk_id not in ids
        assert vocab.decode(ids) == text


def test_committed_vocab_matches_generator():
    """The committed model is what make_vocab.py trains on today's corpus (deterministic)."""
    proc = subprocess.run([sys.executable, local_spm_path().replace(
        "data/sentencepiece.model", "make_vocab.py"), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------------------ metrics
@pytest.mark.parametrize("name", [n for n in TASKS if n != "local_span_corruption"])
def test_metrics_perfect_on_gold_and_not_on_wrong(name):
    task = seqio.get_mixture_or_task(name)
    exs = _examples(name, "validation")
    assert task.metric_fns
    raw = [ex["targets_pretokenized"].decode() for ex in exs]
    targets = [task.postprocess_fn(t, example=ex, is_target=True) for t, ex in zip(raw, exs)]
    gold = [task.postprocess_fn(t, example=ex, is_target=False) for t, ex in zip(raw, exs)]
    wrong = [task.postprocess_fn(t, example=ex, is_target=False)
             for t, ex in zip(raw[1:] + raw[:1], exs)]
    for fn in task.metric_fns:
        perfect = fn(targets, gold)
        assert perfect and all(v == pytest.approx(100.0) for v in perfect.values()), perfect
        assert any(v < 90.0 for v in fn(targets, wrong).values())


def test_metric_values():
    assert metrics.squad([["the Cat sat"]], ["cat sat."]) == {"em": 100.0, "f1": 100.0}
    f1 = metrics.squad([["red big dog"]], ["big dog"])["f1"]
    assert f1 == pytest.approx(100 * 0.8)
    r = metrics.rouge(["a b c d"], ["a b x d"])
    assert r["rouge1"] == pytest.approx(75.0) and r["rouge2"] == pytest.approx(100 / 3)
    assert metrics.accuracy(["x", "y"], ["x", "z"]) == {"accuracy": 50.0}


# ------------------------------------------------------------------ span corruption
def _corrupt(token_lists, seed, vocab, sequence_length=None):
    ds = tf.data.Dataset.from_generator(
        lambda: iter([{"targets": np.asarray(t, np.int32)} for t in token_lists]),
        output_signature={"targets": tf.TensorSpec([None], tf.int32)})
    feats = {"targets": seqio.Feature(vocab)}
    with seqio.map_seed_manager(seed):
        out = preprocessors.span_corruption(ds, sequence_length, feats)
    return list(out.as_numpy_iterator())


def _uncorrupt(inputs, targets, first_sentinel):
    """Rebuilds the original tokens by substituting each sentinel's span from the targets."""
    spans, sid = {}, None
    for t in targets:
        if t > first_sentinel - 100 and t <= first_sentinel:
            sid = int(t)
            spans[sid] = []
        else:
            spans[sid].append(int(t))
    out = []
    for t in inputs:
        out += spans[int(t)] if first_sentinel - 100 < t <= first_sentinel else [int(t)]
    return out


def test_span_corruption_density_sentinels_and_reconstruction():
    vocab = get_vocabulary("local")
    rng = np.random.default_rng(0)
    docs = [rng.integers(3, 1000, 2000) for _ in range(20)]  # long text: 40k tokens
    out = _corrupt(docs, seed=7, vocab=vocab)
    first = vocab.vocab_size - 1
    noise = total = spans = 0
    for doc, ex in zip(docs, out):
        sent_in = ex["inputs"][ex["inputs"] >= 1000]
        sent_tgt = ex["targets"][ex["targets"] >= 1000]
        # Sentinels count down from vocab_size - 1, in the same order on both sides.
        np.testing.assert_array_equal(sent_in, first - np.arange(sent_in.size))
        assert sent_tgt.size in (sent_in.size, sent_in.size + 1)
        assert _uncorrupt(ex["inputs"], ex["targets"], first) == doc.tolist()
        noise += ex["targets"].size - sent_tgt.size
        total += doc.size
        spans += sent_in.size
    density = noise / total
    print(f"noise density {density:.4f}, mean span {noise / spans:.2f}")
    assert abs(density - 0.15) <= 0.01
    assert 2.5 <= noise / spans <= 3.5
    # Seeded: same seed -> same corruption, other seed -> different.
    again = _corrupt(docs[:3], seed=7, vocab=vocab)
    other = _corrupt(docs[:3], seed=8, vocab=vocab)
    assert all(np.array_equal(a["inputs"], b["inputs"]) for a, b in zip(out, again))
    assert not all(np.array_equal(a["inputs"], b["inputs"]) for a, b in zip(out, other))


def test_span_corruption_splits_to_inputs_length():
    vocab = get_vocabulary("local")
    tokens_length, targets_length = preprocessors.random_spans_helper(128)
    out = _corrupt([np.arange(3, 1000)], seed=1, vocab=vocab, sequence_length=LENGTHS)
    assert len(out) == -(-997 // tokens_length)
    assert max(ex["inputs"].size for ex in out) == 127  # + EOS = 128: no trimming needed
    assert max(ex["targets"].size for ex in out) <= targets_length - 1


# ------------------------------------------------------------------ pipeline
def _batches(it, n):
    return [next(it) for _ in range(n)]


def _equal(a, b):
    return len(a) == len(b) and all(
        set(x) == set(y) and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b))


def test_pipeline_determinism_and_restore():
    kw = dict(task_feature_lengths=LENGTHS, host_batch_size=4, seed=5, pack_window=64)
    a = HostBatchIterator("local_default", **kw)
    first = _batches(a, 3)
    assert set(first[0]) == set(packing.PACKED_FEATURES)
    assert all(v.shape == (4, LENGTHS["inputs"] if k.startswith("encoder") else LENGTHS["targets"])
               and v.dtype == np.int32 for k, v in first[0].items())
    state = json.loads(json.dumps(a.state()))
    assert state["batches_emitted"] == 3
    following = _batches(a, 3)

    b = HostBatchIterator("local_default", **kw)
    assert _equal(_batches(b, 3), first)  # same args -> same stream
    b.restore(state)
    assert _equal(_batches(b, 3), following)  # restore continues exactly

    d = HostBatchIterator("local_default", **{**kw, "seed": 6})
    assert not _equal(_batches(d, 3), first)
    with pytest.raises(ValueError, match="fingerprint"):
        d.restore(state)


def test_pipeline_eval_shards_cover_split_once():
    kw = dict(task_feature_lengths=LENGTHS, host_batch_size=16, split="validation",
              shuffle=False, num_epochs=1, pack=False)
    full = [r for b in HostBatchIterator("local_nli", **kw)
            for r in b["encoder_input_tokens"] if r.any()]
    shards = [[r for b in HostBatchIterator("local_nli", shard_index=i, num_shards=2, **kw)
               for r in b["encoder_input_tokens"] if r.any()] for i in range(2)]
    key = lambda rows: sorted(tuple(r) for r in rows)  # noqa: E731
    assert len(full) == len(generate.generate("nli")["validation"])
    assert key(shards[0] + shards[1]) == key(full)
    assert not set(key(shards[0])) & set(key(shards[1]))


def test_unknown_name_error_is_one_line_with_suggestions():
    with pytest.raises(ValueError) as err:
        HostBatchIterator("local_defualt", LENGTHS, 2)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("mixture or task 'local_defualt' is not registered")
    assert "local_default" in msg and "import ext5.tasks" in msg


def test_eval_hosts_each_take_a_block_and_gathered_results_equal_one_host():
    """Each of H hosts decodes/scores its 1/H block of an eval split; the blocks' results, gathered, are the one-host
    results, and seqio computes the same metrics from them."""
    from _util import random_params
    from ext5.eval import evaluator as ev_lib
    from ext5.model import configs
    cfg = configs.get_config("tiny", vocab_size=padded_vocab_size(get_vocabulary("local")), emb_dim=32, num_heads=2,
                             head_dim=8, mlp_dim=48, num_encoder_layers=1, num_decoder_layers=1, dtype="float32")
    params = random_params(cfg, 0, 0.1)
    lengths = {"inputs": 64, "targets": 8}
    assert [ev_lib.host_block(7, h, 3) for h in range(3)] == [slice(0, 2), slice(2, 4), slice(4, 7)]
    for name, fn in (("local_nli_score_eval", "score_fn"), ("local_nli", "predict_fn")):
        conv = seqio.EncDecFeatureConverter(pack=False)(
            seqio.get_mixture_or_task(name).get_dataset(lengths, split="validation", shuffle=False).take(10), lengths)
        make = lambda shard: ev_lib.SeqioEvaluator(name, lengths, cfg, num_examples=10, batch_size=4, shard=shard,
                                                   max_decode_length=4)
        one = getattr(make((0, 1)), fn)(params, conv.enumerate())
        halves = [getattr(make((h, 2)), fn)(params, conv.enumerate()) for h in range(2)]
        assert len(one) == 10 and [len(h) for h in halves] == [5, 5]
        assert halves[0] + halves[1] == one  # bit for bit, in order

    # With a gather that supplies the other host's block, a host's metrics equal the one-host metrics.
    name = "local_nli_score_eval"
    other = ev_lib.SeqioEvaluator(name, lengths, cfg, num_examples=10, batch_size=4, shard=(1, 2))

    def gather(idx, values):
        ds = next(iter(other.evaluator._cached_model_datasets.values()))  # seqio's enumerated rows
        j, v = other._score_rows(params, other._my_rows(ds))
        return np.concatenate([idx, j]), np.concatenate([values, v])
    two = ev_lib.SeqioEvaluator(name, lengths, cfg, num_examples=10, batch_size=4, shard=(0, 2), gather=gather)
    one = ev_lib.SeqioEvaluator(name, lengths, cfg, num_examples=10, batch_size=4)
    assert two(params, 0) == one(params, 0)
