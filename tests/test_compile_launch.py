"""launch/run.sh --compile-check: the run's step is compiled for the slice on this machine
(`kdjax compile --require_fit`) before anything starts on the TPU VMs.

Checked with a fake gcloud (every call logged, none may happen when the pre-flight refuses)
and a stand-in local python; one test runs the real `kdjax compile` (needs libtpu; skipped
locally without it, failed under CI's KDJAX_REQUIRE_LIBTPU=1)."""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "launch" / "run.sh"
BASE = ["run", "distill", "--zone=z", "--name=kd", "--config", "configs/debug_distill.py",
        "--workdir", "gs://b/r", "--compile-check", "--accelerator", "v5litepod-4"]


@pytest.fixture
def fake(tmp_path):
    """(env, calls file): a gcloud that only logs its arguments."""
    calls = tmp_path / "calls.jsonl"
    gcloud = tmp_path / "gcloud"
    gcloud.write_text(f"#!{sys.executable}\nimport json, sys\n"
                      f"open({str(calls)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n")
    gcloud.chmod(0o755)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
           "GCLOUD": str(gcloud)}
    return env, calls


def local_python(tmp_path: Path, rc: int, line: str) -> Path:
    """A stand-in for the local python: records its arguments, prints `line`, exits `rc`."""
    py = tmp_path / "python"
    py.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path}/preflight_args\necho '{line}' >&2\n"
                  f"exit {rc}\n")
    py.chmod(0o755)
    return py


def run(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(RUN), *args], capture_output=True, text=True, env=env,
                          timeout=900, cwd=ROOT)


def calls(path: Path) -> list[list[str]]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_dry_run_prints_the_preflight_first(fake):
    env, _ = fake
    proc = run("--dry-run", *BASE, "--", "--config.train.batch_size=16",
               "--config.teacher.path=teachers/kr", "--no_progress", env=env)
    assert proc.returncode == 0, proc.stderr
    first, ssh = proc.stdout.strip().splitlines()
    assert first.startswith(f"(cd {ROOT} && python3 -m kdjax.cli compile ")
    words = shlex.split(first.split("&& ", 1)[1].rstrip(")"))
    assert words == ["python3", "-m", "kdjax.cli", "compile", "--config",
                     "configs/debug_distill.py", "--topology", "v5litepod-4", "--kind",
                     "distill", "--require_fit", "--config.train.batch_size=16",
                     "--config.teacher.path=teachers/kr"]  # only the config overrides
    assert "tpu-vm ssh kd" in ssh


def test_refuses_to_start_when_the_step_does_not_fit(fake, tmp_path):
    env, log = fake
    py = local_python(tmp_path, 2, "kdjax: error: the distill step for v5e:2x2 needs 56 GiB")
    proc = run(*BASE, "--local-python", str(py), "--", "--config.train.batch_size", "64",
               env=env)
    assert proc.returncode == 2
    assert "kdjax: error: the distill step" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "run.sh: error: pre-flight: the distill step does not compile or fit on v5litepod-4")
    assert calls(log) == []  # nothing was started on the TPU VMs
    args = (tmp_path / "preflight_args").read_text().split()
    assert args[-1] == "--config.train.batch_size=64"  # `--config.x v` passed as one word


def test_starts_when_it_fits(fake, tmp_path):
    env, log = fake
    py = local_python(tmp_path, 0, "fits")
    proc = run(*BASE, "--local-python", str(py), env=env)
    assert proc.returncode == 0, proc.stderr
    (ssh,) = calls(log)
    assert ssh[:5] == ["compute", "tpus", "tpu-vm", "ssh", "kd"]


def test_compile_check_needs_the_slice(fake):
    env, log = fake
    args = [a for a in BASE if a not in ("--accelerator", "v5litepod-4")]
    proc = run(*args, env=env)
    assert proc.returncode == 2 and calls(log) == []
    assert proc.stderr.strip() == ("run.sh: error: --compile-check needs the slice: "
                                   "--accelerator v4-32 (or set TPU_ACCELERATOR)")


def test_real_preflight(fake):
    """The real `kdjax compile` behind --compile-check: the debug recipe fits a v5litepod-4
    and starts; a teacher with a 70M-row embedding does not, and nothing starts."""
    if importlib.util.find_spec("libtpu") is None:
        if os.environ.get("KDJAX_REQUIRE_LIBTPU", "") not in ("", "0"):
            pytest.fail("KDJAX_REQUIRE_LIBTPU is set but libtpu is not installed")
        pytest.skip("libtpu is not installed (pip install -e '.[tpu]')")
    env, log = fake
    env = {**env, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    py = ["--local-python", sys.executable]
    proc = run(*BASE, *py, "--", "--config.train.batch_size=16", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fits" in proc.stderr and len(calls(log)) == 1
    proc = run(*BASE, *py, "--", "--config.teacher.model.vocab_size=70000000", env=env)
    assert proc.returncode == 2 and len(calls(log)) == 1
    assert "chip has 15.75 GiB of HBM" in proc.stderr
