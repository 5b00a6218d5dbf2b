"""Checkpoint interop, one layer above `ext5.train`: Hugging Face and t5x in, Hugging Face out.

    Hugging Face dir (config.json + safetensors | flax_model.msgpack) ──┐
    t5x checkpoint_<step> (orbax, or msgpack + zarr) ──────────────────┴─► ext5 params (t5x names)
                                                                           ─► MODEL_DIR/checkpoint_<step>
    ext5 checkpoint ─► config.json + model.safetensors (T5ForConditionalGeneration.from_pretrained)

Modules (import them directly; this package imports nothing heavy on its own):
  params      ConversionError, parameter-tree shapes and checks, one-line model descriptions
  hf          ext5 <-> Hugging Face: config (tying and output scaling across transformers versions) and
              the tensor mapping; to_hf_model (torch imported lazily)
  hf_files    read Hugging Face directories (safetensors, sharded, flax msgpack), write an HF export
  t5x         read t5x checkpoints (legacy msgpack + zarr, orbax) and infer their config from shapes
  checkpoint  write an ext5 checkpoint from imported weights; read an ext5 checkpoint's config and params

Nothing here unpickles: safetensors and zarr are raw arrays, t5x's `checkpoint` file and HF's
flax_model.msgpack are msgpack (flax.serialization), orbax reads its own tensorstore layout; pickled
PyTorch files are refused. No TensorFlow is imported, and torch only by `hf.to_hf_model`.
"""
