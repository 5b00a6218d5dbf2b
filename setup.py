"""ext5: extreme multi-task T5 training (ExT5, T0) on JAX/Flax, speaking t5x's and seqio's language."""
from setuptools import setup

setup(
    name="ext5",
    version="0.1.0",
    description="Extreme multi-task T5 training (ExT5 / T0) on JAX, Flax, optax, orbax and seqio",
    python_requires=">=3.10",
    # ext5.tasks lives in the top-level tasks/ folder and the gin files in gin/ (design card layout).
    packages=["ext5", "ext5.commands", "ext5.data", "ext5.eval", "ext5.experiments", "ext5.interop", "ext5.model",
              "ext5.train", "ext5.tasks", "ext5.tasks.local", "ext5.tasks.exmix", "ext5.tasks.t0", "ext5.gin"],
    package_dir={"ext5": "ext5", "ext5.tasks": "tasks", "ext5.gin": "gin"},
    package_data={"ext5.gin": ["*.gin", "models/*.gin", "runs/*.gin", "experiments/*.gin"],
                  "ext5.tasks.local": ["data/*"],
                  "ext5.tasks.exmix": ["*.csv"],
                  "ext5.tasks.t0": ["data/*.csv"]},
    install_requires=[
        "jax>=0.4.35",
        "flax>=0.10",
        "optax>=0.2.3",
        "orbax-checkpoint>=0.9",
        "clu>=0.0.10",
        "gin-config>=0.5",
        "numpy>=1.26",
        "safetensors>=0.4",
        "tensorstore>=0.1.40",  # t5x checkpoint import
        "matplotlib>=3.7",
        "tensorboard>=2.15",
        # The data pipeline (not the model/trainer core) needs these.
        "seqio>=0.0.18",
        "tensorflow>=2.15",
        "tensorflow-text>=2.15",
        "tensorflow-datasets>=4.9",
        "grain==0.2.18",  # cached tasks: index-based pipeline over ArrayRecord (docs/data_at_scale.md)
        # 0.2.3 ships protobuf-7 generated code and Apache Beam needs protobuf<7; pinned exactly because
        # tasks/local/make_vocab.py --check retrains the committed model byte for byte.
        "sentencepiece==0.2.2",
        # T0 prompts (promptsource itself is installed by the Makefile: its sdist pins ancient tools) and
        # Hugging Face dataset sources.
        "datasets>=2.14",
        "jinja2>=3",
        "pandas>=1.5",
        "pyyaml>=6",
        "setuptools<82",  # promptsource imports pkg_resources
    ],
    extras_require={
        # Offline task caching (`ext5 cache`, seqio_cache_tasks) runs on Apache Beam.
        # google-crc32c: Beam's TFRecord writer needs a CRC-32C library.
        "cache": ["apache-beam>=2.50", "google-crc32c>=1.5"],
        # Ahead-of-time compiles for TPU slices (`ext5 plan`) on any machine, and training on Cloud TPU:
        # libtpu at the version jax's own `tpu` extra pins for jax 0.10.2.
        "tpu": ["jax[tpu]==0.10.2", "libtpu==0.0.42.*"],
        "test": ["pytest>=7", "torch==2.13.0", "transformers>=4.40", "apache-beam>=2.50",
                 "google-crc32c>=1.5", "nbclient>=0.7", "nbformat>=5", "ipykernel>=6"],
    },
    entry_points={"console_scripts": ["ext5=ext5.cli:main", "t5x=ext5.cli:main"]},
)
