"""Train the local SentencePiece model on the generated corpus (deterministic).

    python -m ext5.tasks.local.make_vocab            # rewrites tasks/local/data/sentencepiece.model
    python tasks/local/make_vocab.py --check         # exit 1 if the committed model is stale

T5 conventions: unigram model, pad=0, eos=1, unk=2, no bos; byte fallback so any text round-trips.
The 100 sentinel ids are not in the model: seqio's SentencePieceVocabulary(extra_ids=100) appends
them. Single-threaded training over the whole corpus in a fixed order keeps it byte-identical for one
sentencepiece version (other versions train different models, hence the exact pin in setup.py).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys

import sentencepiece as spm

VOCAB_SIZE = 1000
MODEL_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "sentencepiece.model")


def _corpus() -> list[str]:
    # Import by path so this script runs without importing ext5.tasks (which registers tasks).
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import generate  # pylint: disable=import-outside-toplevel
    return generate.corpus_text()


def train_model(vocab_size: int = VOCAB_SIZE) -> bytes:
    """Returns the serialized SentencePiece model proto trained on the local corpus."""
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()),
        model_writer=out,
        model_type="unigram",
        vocab_size=vocab_size,
        character_coverage=1.0,
        byte_fallback=True,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
        num_threads=1,
        shuffle_input_sentence=False,
        input_sentence_size=0,
        max_sentence_length=4096,
        split_digits=True,  # years and prices become digit sequences: no memorised numbers
        minloglevel=2,
    )
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare with the committed model")
    parser.add_argument("--output", default=MODEL_PATH)
    args = parser.parse_args(argv)
    model = train_model()
    digest = hashlib.sha256(model).hexdigest()[:16]
    if args.check:
        with open(args.output, "rb") as f:
            same = f.read() == model
        print(f"{'up to date' if same else 'STALE'}: {args.output} (fresh sha256 {digest})")
        return 0 if same else 1
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "wb") as f:
        f.write(model)
    print(f"wrote {args.output}: {len(model)} bytes, vocab {VOCAB_SIZE}, sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
