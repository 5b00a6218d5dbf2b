"""Decoding and scoring: exact beam search, cached greedy, sampling, shared-encoder scoring, sharding."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _util import random_params

from ext5.model import configs
from ext5.model.decoding import beam_search, brevity_penalty, decode, greedy_decode
from ext5.model.scoring import score, score_choices
from ext5.model.sharding import standard_logical_axis_rules
from ext5.model.t5 import Transformer, unscanned_to_scan
from ext5.train.partitioning import make_mesh

# Tiny vocabulary so that every sequence up to length 3 can be enumerated (8**3 = 512).
SMALL = configs.get_config("tiny", vocab_size=8, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=24,
                           num_encoder_layers=2, num_decoder_layers=2, dtype="float32")
CFG = configs.get_config("tiny", vocab_size=64, emb_dim=32, num_heads=2, head_dim=8, mlp_dim=48,
                         num_encoder_layers=2, num_decoder_layers=2, dtype="float32")
EOS = 1


@pytest.fixture(scope="module")
def small_params():
    # Large norm noise: peakier, input-dependent next-token distributions.
    return random_params(SMALL, 5, 0.5)


@pytest.fixture(scope="module")
def params():
    return random_params(CFG, 1, 0.1)


@jax.jit
def _small_logits(p, enc, dec):
    return Transformer(SMALL).apply({"params": p}, enc, dec, enable_dropout=False)


def _forward(cfg, p, enc, dec):
    return Transformer(cfg).apply({"params": p}, enc, dec, enable_dropout=False)


_forward_jit = jax.jit(_forward, static_argnums=0)


def _shift(t):
    return np.concatenate([np.zeros(t.shape[:-1] + (1,), t.dtype), t[..., :-1]], axis=-1)


@pytest.fixture(scope="module")
def exhaustive(small_params):
    """Per-position log p of every length-3 sequence for 3 inputs: ([3, 512, 3] log p, [512, 3] seqs)."""
    rng = np.random.RandomState(0)
    enc = rng.randint(2, SMALL.vocab_size, (3, 6)).astype(np.int32)
    enc[2, 3:] = 0
    seqs = np.array(list(itertools.product(range(SMALL.vocab_size), repeat=3)), np.int32)
    n = len(seqs)
    logits = _small_logits(small_params, np.repeat(enc, n, axis=0), np.tile(_shift(seqs), (3, 1)))
    logp = jax.nn.log_softmax(np.asarray(logits), axis=-1)
    tok = np.take_along_axis(np.asarray(logp), np.tile(seqs, (3, 1))[..., None], axis=-1)[..., 0]
    return enc, seqs, tok.reshape(3, n, 3)


def _best_finished(seqs, tok_logp, alpha):
    """Max over sequences ending at their first EOS of log p / brevity_penalty(len); (seq, score)."""
    best = (None, -np.inf)
    for s, lp in zip(seqs, tok_logp):
        ends = np.flatnonzero(s == EOS)
        if not len(ends):
            continue
        length = ends[0] + 1
        sc = lp[:length].sum() / float(brevity_penalty(alpha, length))
        if sc > best[1]:
            best = (np.concatenate([s[:length], np.zeros(3 - length, np.int32)]), sc)
    return best


@pytest.mark.parametrize("alpha", [0.6, 3.0])
def test_beam_search_matches_exhaustive(small_params, exhaustive, alpha):
    enc, seqs, tok = exhaustive
    # 196 beams (2k >= 8 * 7**2 extensions at the last step) make the search exact on this space.
    out, scores = beam_search(Transformer(SMALL), small_params, enc, max_decode_length=3, num_beams=196,
                              alpha=alpha, eos_id=EOS)
    lengths = []
    for r in range(3):
        want, want_score = _best_finished(seqs, tok[r], alpha)
        np.testing.assert_array_equal(out[r], want)
        np.testing.assert_allclose(scores[r], want_score, rtol=1e-5, atol=1e-5)
        lengths.append(int(np.argmax(want == EOS)) + 1)
    if alpha == 3.0:
        # A strong brevity penalty must favour longer sequences than plain log p would here.
        plain = [int(np.argmax(_best_finished(seqs, tok[r], 0.0)[0] == EOS)) + 1 for r in range(3)]
        assert sum(lengths) > sum(plain), (lengths, plain)


def test_default_beam_returns_a_scored_finished_sequence(small_params, exhaustive):
    enc, seqs, tok = exhaustive
    out, scores = beam_search(Transformer(SMALL), small_params, enc, max_decode_length=3, eos_id=EOS)
    assert out.shape == (3, 3) and out.dtype == np.int32
    np.testing.assert_array_equal(
        decode(Transformer(SMALL), small_params, {"encoder_input_tokens": enc}, max_decode_length=3,
               method="beam", eos_id=EOS), out)
    # Scanned layers keep the self-attention cache with a leading layer axis; beam reordering follows.
    scanned = Transformer(SMALL.replace(scan_layers=True))
    out_scan, scores_scan = beam_search(scanned, unscanned_to_scan(small_params), enc, max_decode_length=3,
                                        eos_id=EOS)
    np.testing.assert_array_equal(out_scan, out)
    np.testing.assert_allclose(scores_scan, scores, rtol=1e-5)
    for r in range(3):
        length = int(np.argmax(out[r] == EOS)) + 1
        assert out[r, length - 1] == EOS and (out[r, length:] == 0).all()
        full = out[r] if length == 3 else np.concatenate([out[r, :length], [0] * (3 - length)])
        row = int(np.flatnonzero((seqs == full).all(axis=1))[0])
        want = tok[r, row, :length].sum() / float(brevity_penalty(0.6, length))
        np.testing.assert_allclose(scores[r], want, rtol=1e-5)
        assert scores[r] <= _best_finished(seqs, tok[r], 0.6)[1] + 1e-5


@jax.jit
def _uncached_greedy(p, enc):
    """No cache: the full forward pass re-run at every step, argmax of the newest position (no EOS)."""
    length = 18  # > 16 steps: logarithmic causal buckets

    def body(t, out):
        logits = _forward(CFG, p, enc, jnp.pad(out, ((0, 0), (1, 0)))[:, :-1])
        nxt = jnp.argmax(jax.lax.dynamic_index_in_dim(logits, t, axis=1, keepdims=False), axis=-1)
        return out.at[:, t].set(nxt.astype(jnp.int32))

    return jax.lax.fori_loop(0, length, body, jnp.zeros((enc.shape[0], length), jnp.int32))


@pytest.fixture(scope="module")
def greedy_case(params):
    rng = np.random.RandomState(3)
    enc = rng.randint(2, CFG.vocab_size, (4, 10)).astype(np.int32)
    enc[1, 6:] = 0
    free = np.asarray(_uncached_greedy(params, enc))
    # An id row 0 emits early serves as EOS, so stopping and 0-padding after EOS are exercised; with
    # that EOS the greedy path is the free-running one cut after the first EOS.
    eos = int(free[0, 3])
    ref = free * (np.cumsum(np.cumsum(free == eos, axis=1), axis=1) <= 1)
    assert (ref[0, 4:] == 0).all() and ref[0, 3] == eos
    return enc, ref, eos


def test_cached_greedy_equals_uncached_argmax(params, greedy_case):
    enc, ref, eos = greedy_case
    out = decode(Transformer(CFG), {"params": params}, {"encoder_input_tokens": enc}, max_decode_length=18,
                 eos_id=eos)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(greedy_decode(Transformer(CFG), params, {"encoder_input_tokens": enc},
                                                max_decode_length=18, eos_id=eos), ref)


def test_sampling(params, greedy_case):
    enc, ref, eos = greedy_case
    model = Transformer(CFG)
    batch = {"encoder_input_tokens": enc}
    kw = dict(max_decode_length=18, method="sample", eos_id=eos)
    np.testing.assert_array_equal(decode(model, params, batch, top_k=1, seed=7, **kw), ref)
    np.testing.assert_array_equal(decode(model, params, batch, temperature=0.0, seed=7, **kw), ref)
    a = decode(model, params, batch, seed=1, **kw)
    np.testing.assert_array_equal(decode(model, params, batch, seed=1, **kw), a)
    assert (decode(model, params, batch, seed=2, **kw) != a).any()
    assert (a != ref).any()


def test_sampling_distribution_and_top_k(small_params):
    """First-token frequencies over many rows follow softmax(logits / T), restricted to the top k."""
    n = 4000
    enc = np.tile(np.array([[3, 4, 5, 0]], np.int32), (n, 1))
    logits = np.asarray(_small_logits(small_params, enc[:1], np.zeros((1, 1), np.int32)))[0, 0]
    model = Transformer(SMALL)
    for temperature, top_k in ((0.7, 0), (1.0, 3)):
        z = logits / temperature
        if top_k:
            z = np.where(z >= np.sort(z)[-top_k], z, -np.inf)
        probs = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        first = decode(model, small_params, {"encoder_input_tokens": enc}, max_decode_length=1,
                       method="sample", temperature=temperature, top_k=top_k, seed=0, eos_id=EOS)[:, 0]
        freq = np.bincount(first, minlength=SMALL.vocab_size) / n
        assert np.abs(freq - probs).max() < 0.035, (freq, probs)
        assert (freq[probs == 0] == 0).all()


def test_score_choices_equals_duplicated_scoring(params):
    rng = np.random.RandomState(4)
    b, c, t = 3, 4, 7
    enc = rng.randint(2, CFG.vocab_size, (b, 12)).astype(np.int32)
    enc[0, 5:] = 0
    tgt = rng.randint(2, CFG.vocab_size, (b, c, t)).astype(np.int32)
    tgt[0, 1, 3:] = 0
    tgt[1, 2, 1:] = 0
    tgt[2, 3] = 0  # a padding choice
    model = Transformer(CFG)
    flat = tgt.reshape(b * c, t)
    dup = {"encoder_input_tokens": np.repeat(enc, c, axis=0), "decoder_input_tokens": _shift(flat),
           "decoder_target_tokens": flat}
    for norm in (False, True):
        ref = score(model, params, dup, length_normalize=norm).reshape(b, c)
        got = score_choices(model, {"params": params}, enc, tgt, length_normalize=norm)
        assert got.shape == (b, c) and got.dtype == np.float32
        np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-5)
        assert got[2, 3] == 0.0
    # Against an independent computation from the logits of the full forward pass.
    logits = _forward_jit(CFG, params, dup["encoder_input_tokens"], _shift(flat))
    tok = np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), flat[..., None], axis=-1)[..., 0]
    mean = (tok * (flat > 0)).sum(-1) / np.maximum((flat > 0).sum(-1), 1)
    np.testing.assert_allclose(ref.reshape(-1), mean, atol=1e-5, rtol=1e-5)
    assert len(np.unique(np.round(ref[:, :3], 4))) == 9  # choices really differ
    # Scanned + rematerialised layers share keys/values the same way.
    scanned = Transformer(CFG.replace(scan_layers=True, remat_policy="full"))
    np.testing.assert_allclose(
        score_choices(scanned, unscanned_to_scan(params), enc, tgt, length_normalize=True), got,
        atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def mesh():
    m = make_mesh(num_partitions=2)  # ('data', 'model') = (4, 2) over the 8 CPU devices
    assert m.devices.size == 8 and m.shape["model"] == 2
    return m


def test_sharded_decoding_equals_one_device(params, small_params, greedy_case, exhaustive, mesh):
    enc, ref, eos = greedy_case
    rules = standard_logical_axis_rules()
    sharded = decode(Transformer(CFG), params, {"encoder_input_tokens": enc}, max_decode_length=18,
                     eos_id=eos, mesh=mesh, rules=rules)
    np.testing.assert_array_equal(sharded, ref)
    enc3 = exhaustive[0]  # 3 rows: padded to the 4 data-parallel replicas internally
    one = decode(Transformer(SMALL), small_params, {"encoder_input_tokens": enc3}, max_decode_length=3,
                 method="beam", eos_id=EOS)
    many = decode(Transformer(SMALL), small_params, {"encoder_input_tokens": enc3}, max_decode_length=3,
                  method="beam", eos_id=EOS, mesh=mesh)
    assert many.shape == (3, 3)
    np.testing.assert_array_equal(many, one)  # beams share grouped cross keys/values across 'data' too


def test_bad_arguments(params):
    model = Transformer(CFG)
    batch = {"encoder_input_tokens": np.ones((1, 4), np.int32)}
    with pytest.raises(ValueError, match="unknown decoding method"):
        decode(model, params, batch, max_decode_length=4, method="nucleus")
    with pytest.raises(ValueError, match=r"\[B, C, T\]"):
        score_choices(model, params, np.ones((2, 4), np.int32), np.ones((2, 4), np.int32))
