"""Advice for XLA:CPU's per-step temporaries when the host heap is not retained."""

import logging

import jax
import jax.numpy as jnp

from kdjax.train import host_memory
from kdjax.train.host_memory import ADVICE_MIN_TEMP_BYTES, huge_page_advice, thp_mode


def test_thp_mode_reads_the_bracketed_mode(tmp_path):
    f = tmp_path / "enabled"
    f.write_text("always [madvise] never\n")
    assert thp_mode(f) == "madvise"
    f.write_text("[always] madvise never\n")
    assert thp_mode(f) == "always"
    f.write_text("garbage\n")
    assert thp_mode(f) == ""
    assert thp_mode(tmp_path / "missing") == ""


def test_advice_only_for_big_cpu_temporaries_without_thp():
    big = 1 << 30
    line = huge_page_advice(big, "cpu", "madvise")
    assert line is not None and "1024 MB" in line and "'madvise'" in line and "always" in line
    assert "KDJAX_HOST_HEAP=on" in line and "import kdjax before" in line
    assert huge_page_advice(big, "cpu", "madvise", heap="on") is None  # the heap keeps it
    assert huge_page_advice(big, "cpu", "never") is not None
    assert huge_page_advice(big, "cpu", "always") is None
    assert huge_page_advice(big, "cpu", "") is None  # not Linux / unknown
    assert huge_page_advice(big, "gpu", "madvise") is None
    assert huge_page_advice(ADVICE_MIN_TEMP_BYTES - 1, "cpu", "madvise") is None


def test_advise_on_compiled_logs_once(monkeypatch, caplog):
    monkeypatch.setattr(host_memory, "_advised", False)
    monkeypatch.setattr(host_memory, "thp_mode", lambda: "madvise")
    monkeypatch.setattr(host_memory, "ADVICE_MIN_TEMP_BYTES", 0)
    monkeypatch.setattr(host_memory.host_heap, "status", lambda: "not applied (test)")
    compiled = jax.jit(lambda x: jnp.sin(x) @ x.T).lower(jnp.ones((64, 64))).compile()
    with caplog.at_level(logging.INFO, logger="kdjax.train.host_memory"):
        first = host_memory.advise_on_compiled(compiled, "cpu")
        second = host_memory.advise_on_compiled(compiled, "cpu")
    assert first is not None and second is None
    assert sum("transparent huge pages" in r.message for r in caplog.records) == 1
    assert host_memory.advise_on_compiled(compiled, "tpu") is None
