"""T5.1.1 model in t5x's language: configs, network, losses, decoding, scoring, FLOPs, sharding rules.

The bottom layer: imports nothing from ext5.data, train, eval, interop or commands (tests/test_layering.py).

Modules (import them directly; this package imports nothing heavy on its own):
  configs   T5Config, SIZES, get_config
  t5        Transformer, init_params, scan_to_unscanned, unscanned_to_scan
  losses    compute_loss (cross entropy + z-loss, t5x normalisations)
  decoding  decode (greedy/sample/beam; self-attention KV + cross-attention K/V cache), beam_search, greedy_decode
  scoring   score, score_choices (rank classification: one encoder pass + cross K/V shared by all choices)
  flops     forward_flops, train_flops_per_step, peak_flops_per_device
  sharding  standard_logical_axis_rules (t5x's table), param_shardings, abstract_params
"""
