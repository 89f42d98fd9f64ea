"""Files kdjax writes: one lock per workdir, atomic writes, one line per storage fault.

* `workdir_lock(WORKDIR)`: every command that writes a workdir takes it first, before it
  creates or moves anything (an advisory `flock` on WORKDIR/.kdjax.lock, held by process 0;
  the OS drops it when the process dies). Re-entrant within a process: `kdjax finetune`
  holds its WORKDIR while each stage's trainer takes it again, `kdjax evaluate` holds its
  WORKDIR while runs lock WORKDIR/runs/NAME/TASK.
* `atomic_write_bytes` / `atomic_write_text` / `atomic_write_json`: write a temporary file in
  the same directory, fsync it, rename it over the target: a reader sees the old file or the
  new one, never a truncated one. `Staging` does the same for a set of files (a model or
  tokenizer directory): everything is written into a hidden folder inside the target first,
  so a full disk fails before any file is replaced, then each file is renamed into place.
* `read_json`: a JSON file kdjax owns, absent (None) or broken (one `StorageError` line naming
  the file and the way to recover).
* Every `OSError` of these becomes `StorageError`: one `kdjax: error:` line on the command
  line. `LibraryLog` keeps library tracebacks (Orbax's background threads, asyncio's
  "Event loop is closed" at exit) off the terminal and in WORKDIR/kdjax.log.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
import shutil
import socket
import sys
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from kdjax.errors import ConfigError, StorageError
from kdjax.paths import is_remote

log = logging.getLogger(__name__)

LOCK_FILE = ".kdjax.lock"
LOG_FILE = "kdjax.log"
_TMP_SUFFIX = ".kdjax-tmp"
_STAGING_PREFIX = ".kdjax-staging-"


def describe(e: BaseException) -> str:
    """`No space left on device (ENOSPC)` for an OSError, else `Type: message`."""
    if isinstance(e, OSError) and e.errno is not None:
        name = errno.errorcode.get(e.errno, str(e.errno))
        return f"{e.strerror or os.strerror(e.errno)} ({name})"
    text = str(e).splitlines()[0][:200] if str(e) else ""
    if is_io_failure(e):  # a library's wrapper: its message is the cause
        return text.removeprefix("Error while serializing: ").removeprefix("I/O error: ")
    return f"{type(e).__name__}: {text}"


def is_io_failure(e: BaseException) -> bool:
    """An OSError, or a library's wrapper of one (safetensors' "I/O error ... os error 28")."""
    if isinstance(e, OSError):
        return True
    text = str(e).lower()
    return not isinstance(e, StorageError) and ("i/o error" in text or "os error" in text)


def storage_error(path: Any, e: BaseException, doing: str = "writing") -> StorageError:
    """The one-line error of a failed write or read of `path`."""
    hint = ("nothing was replaced; free some space (or fix the permissions) and run the same "
            "command again") if doing == "writing" else "check the disk and run again"
    return StorageError(f"{doing} {path} failed: {describe(e)}; {hint}")


# -- the workdir lock ---------------------------------------------------------------------------
_held: dict[str, list[Any]] = {}  # real path -> [open lock file, depth]
_held_guard = threading.Lock()


def _process_index() -> int:
    if "jax" not in sys.modules:  # no JAX yet: a single-process command
        return 0
    import jax

    return jax.process_index()


@contextlib.contextmanager
def workdir_lock(workdir: Any) -> Iterator[None]:
    """Hold WORKDIR/.kdjax.lock for the block: one kdjax run per workdir at a time.

    Taken before anything else is written (the workdir is created for it). A second process
    gets one `ConfigError` line naming the holder; the same process may nest it. Only process
    0 locks (the others write nothing a second run could tear); remote (gs://) workdirs are not
    locked.
    """
    if is_remote(workdir) or _process_index() != 0:
        yield
        return
    import fcntl

    root = Path(os.fspath(workdir)).expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise storage_error(root, e, "creating") from e
    key = os.path.realpath(root)
    with _held_guard:
        entry = _held.get(key)
        if entry is not None:
            entry[1] += 1
    if entry is None:
        try:
            f: IO[str] = open(root / LOCK_FILE, "a+")  # noqa: SIM115 (held past this block)
        except OSError as e:
            raise storage_error(root / LOCK_FILE, e, "creating") from e
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise ConfigError(f"{root} is in use by another kdjax run ({holder}); wait for "
                              "it to finish or stop it, or use another --workdir") from None
        with contextlib.suppress(OSError):  # who holds it: a courtesy, not a requirement
            f.seek(0)
            f.truncate()
            f.write(f"pid {os.getpid()} on {socket.gethostname()}")
            f.flush()
        with _held_guard:
            _held[key] = entry = [f, 1]
    try:
        yield
    finally:
        with _held_guard:
            entry[1] -= 1
            last = entry[1] == 0
            if last:
                del _held[key]
        if last:
            with contextlib.suppress(OSError):
                fcntl.flock(entry[0], fcntl.LOCK_UN)
            entry[0].close()


# -- atomic writes --------------------------------------------------------------------------------
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}{_TMP_SUFFIX}")


@contextlib.contextmanager
def atomic_path(path: Any) -> Iterator[Path]:
    """Yields a temporary path beside `path`; write it completely inside the block, and it is
    renamed over `path` at the end (mode 0666 minus the umask, like an ordinary file). On an
    error the temporary file is removed and `path` is untouched (`StorageError` for OSError)."""
    path = Path(os.fspath(path))
    tmp = _tmp_path(path)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if is_io_failure(e):
            raise storage_error(path, e) from e
        raise


def atomic_write_bytes(path: Any, data: bytes) -> None:
    """Write `data` to `path` atomically (see the module doc); gs:// paths are written whole
    (an object store replaces an object atomically)."""
    if is_remote(path):
        from etils import epath

        epath.Path(path).write_bytes(data)
        return
    with atomic_path(path) as tmp:
        _write_file(tmp, data)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())  # a full disk may only report itself here


def atomic_write_text(path: Any, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Any, obj: Any, indent: int | None = 2) -> None:
    """`json.dumps(obj, indent, ensure_ascii=False)` + newline, atomically."""
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False, default=str)
                      + "\n")


def read_json(path: Any, fix: str) -> Any:
    """A JSON file kdjax wrote: its content, None when it does not exist, one `StorageError`
    line naming the file and `fix` (how to recover) when it cannot be read or parsed."""
    from etils import epath

    p = epath.Path(path)
    try:
        if not p.exists():
            return None
        return json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise StorageError(f"{p} is unreadable ({describe(e)}): it was probably cut short by "
                           f"a crash or a full disk; {fix}") from e


# -- several files at once ------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _remove_stale(out: Path) -> None:
    """Remove staging folders and temporary files that a killed kdjax process left in `out`."""
    for p in out.iterdir():
        name = p.name
        if name.startswith(_STAGING_PREFIX):
            pid = name[len(_STAGING_PREFIX):].split("-")[0]
        elif name.startswith(".") and name.endswith(_TMP_SUFFIX):
            pid = name[: -len(_TMP_SUFFIX)].rsplit(".", 1)[-1]
        else:
            continue
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            with contextlib.suppress(OSError):
                shutil.rmtree(p) if p.is_dir() else p.unlink()


def is_scratch(name: str) -> bool:
    """Whether a file name is one of kdjax's temporary files or staging folders."""
    return name.startswith(_STAGING_PREFIX) or (name.startswith(".")
                                                and name.endswith(_TMP_SUFFIX))


class Staging:
    """Files written into a hidden folder inside `out` (same filesystem), then renamed into
    `out` one by one by `commit`: a write that fails (full disk) fails while staging and
    replaces nothing; the renames cannot run out of space.

        with Staging(out) as stage:
            write files into stage.dir
            stage.commit(last=("kdjax_model.json",))

    Without `commit` (or on an error) the staged files are removed. An `OSError` inside the
    block becomes one `StorageError` naming `out`.
    """

    def __init__(self, out: Any):
        self.out = Path(os.fspath(out)).expanduser()
        self.dir = self.out / f"{_STAGING_PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
        self._created = False

    def __enter__(self) -> Staging:
        try:
            self._created = not self.out.exists()
            self.out.mkdir(parents=True, exist_ok=True)
            _remove_stale(self.out)
            self.dir.mkdir()
        except OSError as e:
            raise storage_error(self.out, e) from e
        return self

    def names(self) -> list[str]:
        """The staged entries (file names, sorted)."""
        return sorted(p.name for p in self.dir.iterdir())

    def commit(self, last: Sequence[str] = ()) -> list[str]:
        """Rename every staged file into `out` (the names in `last` at the end, in that order:
        e.g. the file whose presence marks the directory complete). Returns the names."""
        names = self.names()
        order = [n for n in names if n not in last] + [n for n in last if n in names]
        for name in order:
            src, dst = self.dir / name, self.out / name
            if src.is_dir() and dst.is_dir():
                shutil.rmtree(dst)
            os.replace(src, dst)
        return order

    def __exit__(self, kind: Any, e: BaseException | None, tb: Any) -> None:
        with contextlib.suppress(OSError):
            shutil.rmtree(self.dir)
        if e is not None and self._created:  # leave no empty directory behind
            with contextlib.suppress(OSError):
                self.out.rmdir()
        if isinstance(e, StorageError):  # name the directory, not the staging folder
            raise StorageError(str(e).replace(str(self.dir), str(self.out))) from e
        if e is not None and is_io_failure(e):
            raise storage_error(self.out, e) from e


def save_tokenizer(tokenizer: Any, out_dir: Any, extra: dict[str, str] | None = None) -> None:
    """`tokenizer.save_pretrained(out_dir)` (+ `extra` {file name: text}) through `Staging`:
    tokenizer.json, whose presence marks a complete tokenizer, is renamed last."""
    with Staging(out_dir) as stage:
        tokenizer.save_pretrained(str(stage.dir))
        for name, text in (extra or {}).items():
            (stage.dir / name).write_text(text, encoding="utf-8")
        stage.commit(last=("tokenizer.json",))


# -- library noise --------------------------------------------------------------------------------
# Loggers whose records carry library internals (Orbax's commit threads, tensorstore, asyncio).
NOISY_LOGGERS = ("absl", "orbax", "asyncio", "etils", "tensorstore", "concurrent.futures",
                 "jax._src.distributed")


class LibraryLog(logging.Handler):
    """Receives what libraries report while a command runs - warnings and errors of
    `NOISY_LOGGERS`, exceptions of background threads and "Exception ignored" reports (e.g.
    asyncio's "Event loop is closed" at exit) - and appends them to a file instead of the
    terminal. The file is opened on the first record; when it cannot be written (the disk that
    failed), the record is dropped: the command's one error line says what went wrong."""

    def __init__(self, path: Any = None):
        super().__init__(logging.DEBUG)
        self.path: Path | None = None if path is None else Path(os.fspath(path))
        self.records = 0
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def set_path(self, path: Any) -> None:
        self.path = None if path is None else Path(os.fspath(path))

    def emit(self, record: logging.LogRecord) -> None:
        self.write(self.format(record))

    def write(self, text: str) -> None:
        self.records += 1
        if self.path is None or not self.path.parent.is_dir():
            return
        with contextlib.suppress(OSError, ValueError):
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(text.rstrip("\n") + "\n")

    def handleError(self, record: logging.LogRecord) -> None:  # never print "Logging error"
        pass

    def thread_hook(self, args: Any) -> None:
        import traceback

        name = getattr(args.thread, "name", "?")
        self.write(f"exception in thread {name}:\n" + "".join(traceback.format_exception(
            args.exc_type, args.exc_value, args.exc_traceback)))

    def unraisable_hook(self, unraisable: Any) -> None:
        import traceback

        text = f"{unraisable.err_msg or 'Exception ignored in'}: {unraisable.object!r}\n"
        if unraisable.exc_type is not None:
            text += "".join(traceback.format_exception(
                unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback))
        self.write(text)


class _NotNoisy(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(record.name == n or record.name.startswith(n + ".")
                       for n in NOISY_LOGGERS)


_NOT_NOISY = _NotNoisy()


def quiet_libraries(handler: LibraryLog, terminal: Iterable[logging.Handler]) -> None:
    """Route library reports to `handler` (see `LibraryLog`) and keep them off the
    `terminal` handlers. Stays installed until the interpreter exits (asyncio's noise comes at
    exit); calling it again (another command in the same process) replaces the handler."""
    for h in terminal:
        if _NOT_NOISY not in h.filters:
            h.addFilter(_NOT_NOISY)
    for name in NOISY_LOGGERS:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if isinstance(h, LibraryLog)]:
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(min(logger.level or logging.WARNING, logging.WARNING))
    threading.excepthook = handler.thread_hook
    sys.unraisablehook = handler.unraisable_hook


__all__ = ["LOCK_FILE", "LibraryLog", "Staging", "atomic_path", "atomic_write_bytes",
           "atomic_write_json", "atomic_write_text", "describe", "is_scratch",
           "quiet_libraries", "read_json", "save_tokenizer", "storage_error", "workdir_lock"]
