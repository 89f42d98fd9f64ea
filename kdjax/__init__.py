"""kdjax: knowledge distillation and low-rank factorization of Korean ELECTRA models in JAX.

Public API:
  kdjax.from_hf(path) -> (config, params)      HF ELECTRA/BERT checkpoint -> Flax
  kdjax.build_model(config) -> flax Module     teacher or (factorized) student
  kdjax.to_hf(config, params, out_dir, ...)    Flax -> HF directory
  kdjax.distill.losses                          every distillation loss, as pure functions
"""

from __future__ import annotations

import logging
from typing import Any

from kdjax import cpu_compiler as _cpu_compiler
from kdjax import host_heap as _host_heap
from kdjax import host_platform as _host_platform

__version__ = "0.1.0"

# Before JAX is imported: an installed accelerator plugin with no accelerator attached (libtpu on
# a laptop) would make JAX probe for it on every run; run on the CPU JAX would end on anyway
# (kdjax/host_platform.py). First, so that the host heap below sees the CPU-only platform.
_host_platform.prefer_cpu_without_accelerator()
# Before anything imports JAX and starts XLA's threads: keep XLA:CPU's per-step buffers in the
# process's heap instead of mapping them from the OS every step (kdjax/host_heap.py).
_host_heap.retain_host_heap()
# Before XLA's first backend reads XLA_FLAGS: LLVM -O2 for CPU kernels, a third off a small
# model's compile at the same step speed (kdjax/cpu_compiler.py).
_cpu_compiler.prefer_quick_cpu_compile()


class _NoTorchNotice(logging.Filter):
    """Drop transformers' import-time "PyTorch was not found" advice: kdjax runs its models in
    JAX and uses transformers for tokenizers and configs only (torch is needed just for the
    optional parity checks), so for kdjax users the notice is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("PyTorch was not found")


logging.getLogger("transformers").addFilter(_NoTorchNotice())

# After the filter: these imports may pull in transformers.
from kdjax import distill  # noqa: E402
from kdjax.models.config import EncoderConfig  # noqa: E402
from kdjax.models.model import EncoderOutput, build_model, init_params  # noqa: E402

__all__ = [
    "EncoderConfig", "EncoderOutput", "build_model", "distill", "from_hf", "init_params", "to_hf",
]


def from_hf(path_or_hub_id: Any, **overrides: Any) -> tuple[EncoderConfig, dict]:
    """Load a HF ELECTRA/BERT checkpoint; see `kdjax.hf.from_hf`."""
    from kdjax.hf import from_hf as _from_hf

    return _from_hf(path_or_hub_id, **overrides)


def to_hf(config: Any, params: Any, out_dir: Any, **kwargs: Any) -> Any:
    """Export to a HF directory; see `kdjax.export_core.to_hf`."""
    from kdjax.export_core import to_hf as _to_hf

    return _to_hf(config, params, out_dir, **kwargs)
