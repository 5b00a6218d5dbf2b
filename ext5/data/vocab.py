"""Vocabularies: T5's SentencePiece model for real runs, the packaged local model offline."""
from __future__ import annotations

import functools
import importlib.util
import os

import seqio

T5_SPM_PATH = "gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model"
EXTRA_IDS = 100
VOCAB_ENV = "EXT5_VOCABULARY"  # selects the vocabulary of the C4, ExMIX and T0 tasks (tests use "local")


def local_spm_path() -> str:
    """Path of the packaged tasks/local/data/sentencepiece.model.

    Resolved through the import system *without* importing ext5.tasks (importing it registers
    tasks, which themselves need this vocabulary), so it works for editable and wheel installs.
    """
    spec = importlib.util.find_spec("ext5.tasks")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package ext5.tasks not found; is ext5 installed?")
    for loc in spec.submodule_search_locations:
        path = os.path.join(loc, "local", "data", "sentencepiece.model")
        if os.path.exists(path):
            return path
    raise FileNotFoundError("tasks/local/data/sentencepiece.model missing; run "
                            "`python tasks/local/make_vocab.py`")


@functools.lru_cache(maxsize=None)
def get_vocabulary(name: str = "local") -> seqio.Vocabulary:
    """'local' | 't5' | a path to a SentencePiece .model file -> seqio vocabulary with 100 extra ids."""
    if name == "local":
        return seqio.SentencePieceVocabulary(local_spm_path(), extra_ids=EXTRA_IDS)
    if name == "t5":
        return seqio.SentencePieceVocabulary(T5_SPM_PATH, extra_ids=EXTRA_IDS)
    if name.endswith(".model"):
        return seqio.SentencePieceVocabulary(name, extra_ids=EXTRA_IDS)
    raise ValueError(f"unknown vocabulary {name!r}; use 'local', 't5' or a path to a .model file")


def selected_vocabulary(name: str | None = None) -> str:
    """The argument, else $EXT5_VOCABULARY, else "t5"."""
    return name or os.environ.get(VOCAB_ENV) or "t5"


def output_features(vocabulary: str, *, inputs_eos: bool = True) -> dict[str, seqio.Feature]:
    """seqio `inputs`/`targets` features over a get_vocabulary name; targets always end in EOS."""
    vocab = get_vocabulary(vocabulary)
    return {"inputs": seqio.Feature(vocabulary=vocab, add_eos=inputs_eos, required=True),
            "targets": seqio.Feature(vocabulary=vocab, add_eos=True)}


def padded_vocab_size(vocab: seqio.Vocabulary, multiple: int = 128) -> int:
    """vocab.vocab_size rounded up to a multiple of 128 (T5 uses 32100 -> 32128)."""
    return -(-vocab.vocab_size // multiple) * multiple
