"""Experiments built on the trainer and the task registry (`ext5 experiment ...`), and the mixture
introspection they share with `ext5 inspect` (mixture_info)."""
