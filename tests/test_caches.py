"""The tests keep their caches in pytest's temporary directory, never in the user's home
(conftest.py's `pytest_configure`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HOME_CACHE = Path.home() / ".cache"


def _inside(path: str | os.PathLike, root: Path) -> bool:
    return Path(path).resolve().is_relative_to(root.resolve())


def test_cache_variables_point_into_pytests_temporary_directory(tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    for name in ("XDG_CACHE_HOME", "HF_HOME"):  # transformers, matplotlib, onnxruntime
        assert _inside(os.environ[name], base), name
    # kdjax's compilation cache: pytest's directory, or a path the user set (never ~/.cache)
    assert not _inside(os.environ["KDJAX_COMPILATION_CACHE"], HOME_CACHE)


def test_a_cli_subprocess_compiles_into_the_tests_cache():
    code = ("import jax, kdjax; from kdjax.cli import enable_compilation_cache; "
            "enable_compilation_cache(); print(jax.config.jax_compilation_cache_dir)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=300).stdout.strip().splitlines()[-1]
    assert out == os.environ["KDJAX_COMPILATION_CACHE"] and not _inside(out, HOME_CACHE)
