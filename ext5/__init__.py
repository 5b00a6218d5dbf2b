"""ext5: extreme multi-task T5 (ExT5, T0) on JAX/Flax."""
