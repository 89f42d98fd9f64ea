"""Shared fixtures. Tests run on CPU in fp32 with full matmul precision."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may reach a hub

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
