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


class _FakeCompiled:
    def __init__(self, temp: int | None):
        self.temp = temp

    def memory_analysis(self):
        if self.temp is None:
            raise NotImplementedError("no memory analysis on this PjRt client")
        return type("Mem", (), {"temp_size_in_bytes": self.temp})()


def test_sync_each_step_only_for_big_cpu_temporaries():
    big = _FakeCompiled(ADVICE_MIN_TEMP_BYTES)
    assert host_memory.sync_each_step(big, "cpu")
    assert not host_memory.sync_each_step(_FakeCompiled(ADVICE_MIN_TEMP_BYTES - 1), "cpu")
    assert not host_memory.sync_each_step(big, "gpu")
    assert not host_memory.sync_each_step(big, "tpu")
    assert not host_memory.sync_each_step(_FakeCompiled(None), "cpu")


def _steps():
    from kdjax.train.trainer import CompiledSteps

    step = jax.jit(lambda state, frozen, batch: (state + batch["x"].sum(), {"loss": state}))
    batch = {"x": jnp.ones((4, 8))}
    return CompiledSteps(step, jnp.zeros(()), None, [], None, precompile=False), batch


def test_compiled_steps_wait_for_big_cpu_steps(monkeypatch):
    steps, batch = _steps()
    assert not steps.syncs(batch)  # a few bytes of temporaries: dispatched ahead
    waited = []
    monkeypatch.setattr(jax, "block_until_ready", lambda out: waited.append(out) or out)
    steps(jnp.zeros(()), None, batch)
    assert not waited

    monkeypatch.setattr(host_memory, "ADVICE_MIN_TEMP_BYTES", 0)
    steps, batch = _steps()
    assert steps.syncs(batch) == (jax.default_backend() == "cpu")
    state, metrics = steps(jnp.zeros(()), None, batch)
    assert float(state) == 32.0
    assert len(waited) == (1 if jax.default_backend() == "cpu" else 0)
