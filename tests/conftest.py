"""Shared fixtures. Tests run on CPU in fp32 with full matmul precision."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may reach a hub

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

import pytest  # noqa: E402


@pytest.hookimpl(trylast=True)  # after pytest's tmp_path plugin has made its factory
def pytest_configure(config: pytest.Config) -> None:
    """Every cache the tests fill lives in pytest's temporary directory, not in the user's home:
    kdjax's XLA compilation cache (`kdjax.cli.main` in-process and CLI subprocesses read
    KDJAX_COMPILATION_CACHE; a path you set is kept), and, through XDG_CACHE_HOME / HF_HOME,
    transformers' remote-code modules, matplotlib's font list and onnxruntime's device id. Set
    here, before any test module imports transformers (it reads HF_HOME at import)."""
    caches = config._tmp_path_factory.mktemp("caches", numbered=False)
    os.environ.setdefault("KDJAX_COMPILATION_CACHE", str(caches / "kdjax-xla"))
    os.environ["XDG_CACHE_HOME"] = str(caches)
    os.environ["HF_HOME"] = str(caches / "huggingface")


@pytest.fixture(scope="module")
def xla_cache(tmp_path_factory):
    """A persistent XLA compilation cache for one test module, in-process and for subprocesses.

    Sets `KDJAX_COMPILATION_CACHE` (read by `kdjax.cli.enable_compilation_cache` and by CLI
    subprocesses) and restores jax's cache settings afterwards.
    """
    from jax.experimental.compilation_cache import compilation_cache

    from kdjax.cli import enable_compilation_cache

    path = tmp_path_factory.mktemp("xla_cache")
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
    saved = {n: getattr(jax.config, n) for n in names}
    old_env = os.environ.get("KDJAX_COMPILATION_CACHE")
    os.environ["KDJAX_COMPILATION_CACHE"] = str(path)
    enable_compilation_cache()
    compilation_cache.reset_cache()  # earlier tests may have initialised it without a dir
    yield path
    for n, v in saved.items():
        jax.config.update(n, v)
    compilation_cache.reset_cache()
    if old_env is None:
        os.environ.pop("KDJAX_COMPILATION_CACHE", None)
    else:
        os.environ["KDJAX_COMPILATION_CACHE"] = old_env
