"""T5.1.1 model in t5x's language: configs, network, losses, decoding, FLOPs, HF conversion.

Modules (import them directly; this package imports nothing heavy on its own):
  configs   T5Config, SIZES, get_config
  t5        Transformer, init_params, scan_to_unscanned, unscanned_to_scan
  losses    compute_loss (cross entropy + z-loss, t5x normalisations)
  decoding  decode (greedy/sample/beam; self-attention KV + cross-attention K/V cache), beam_search, greedy_decode
  scoring   score, score_choices (rank classification: one encoder pass + cross K/V shared by all choices)
  convert   import Hugging Face / t5x checkpoints, export Hugging Face
  flops     forward_flops, train_flops_per_step, peak_flops_per_device
  hf        to_hf_config, to_hf_state_dict, from_hf_state_dict, to_hf_model (torch imported lazily)
"""
