"""Test-wide setup: CPU only, 8 virtual devices (set before JAX initialises), quiet TensorFlow.

XLA's backend optimisation level 0 roughly halves compile time, which dominates these tiny-model tests;
numerics are compared within one process, so it changes no assertion.
"""
import os

os.environ.setdefault(
    "XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
