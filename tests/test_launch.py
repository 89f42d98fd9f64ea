"""launch/*.sh (Cloud TPU scripts) and kdjax.presets (mesh presets, TPU slice table).

The scripts are checked three ways: the `--dry-run` output names the exact gcloud commands and
flags; the remote command lines they build are valid bash; and, through a fake `gcloud` that
runs `tpu-vm ssh --command` locally in one directory per "worker", setup copies the project
and run/status/tail/stop really start, detach, log and signal a process on every worker.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from kdjax.errors import ConfigError
from kdjax.presets import (
    PRESETS,
    SLICES,
    apply_preset,
    check_mesh,
    mesh_for,
    mesh_for_slice,
    overrides,
    slice_info,
)

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
SCRIPTS = ["tpu.sh", "setup.sh", "run.sh", "worker.sh", "common.sh"]
# A `gcloud` first on PATH that fails: no test may reach the real one (a --dry-run that
# forgot to be dry would otherwise try to create TPUs).
_GUARD = Path(tempfile.mkdtemp(prefix="kdjax-launch-guard-"))
(_GUARD / "gcloud").write_text("#!/bin/sh\necho 'test_launch: real gcloud called' >&2\nexit 99\n")
(_GUARD / "gcloud").chmod(0o755)
BASE_ENV = {"PATH": f"{_GUARD}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": os.environ.get("HOME", "/")}


def sh(script: str, *args: str, env: dict | None = None, check: bool = True,
       timeout: int = 60) -> subprocess.CompletedProcess:
    """Run launch/SCRIPT with a clean environment (no TPU_* / KDJAX_* leaking in)."""
    proc = subprocess.run(["bash", str(LAUNCH / script), *args], capture_output=True, text=True,
                          env={**BASE_ENV, **(env or {})}, timeout=timeout, cwd=ROOT)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def dry(script: str, *args: str, env: dict | None = None) -> list[list[str]]:
    """The commands a --dry-run prints, each split into words as bash would."""
    out = sh(script, "--dry-run", *args, env=env).stdout
    return [shlex.split(line) for line in out.splitlines() if line.strip()]


def option(words: list[str], name: str) -> str:
    """The value of `--name=value` in a command."""
    values = [w.split("=", 1)[1] for w in words if w.startswith(name + "=")]
    assert len(values) == 1, (name, words)
    return values[0]


# -- tpu.sh ---------------------------------------------------------------------------------
def test_tpu_create_queued_resource_spot():
    cmds = dry("tpu.sh", "create", "--zone", "us-central2-b", "--project=my-proj",
               "--name", "kd", "--accelerator", "v4-32")
    assert cmds == [[
        "gcloud", "compute", "tpus", "queued-resources", "create", "kd-qr", "--node-id=kd",
        "--zone=us-central2-b", "--accelerator-type=v4-32",
        "--runtime-version=tpu-ubuntu2204-base", "--project=my-proj", "--spot",
    ]]


@pytest.mark.parametrize("flags, tier, alpha", [
    (["--reserved"], "--reserved", False),
    (["--provisioning", "best-effort"], "--best-effort", True),  # alpha-only flag
    (["--guaranteed"], "--guaranteed", False),
    (["--on-demand"], None, False),
])
def test_tpu_create_provisioning_models(flags, tier, alpha):
    (cmd,) = dry("tpu.sh", "create", "--zone=z", *flags)
    prefix = ["gcloud", *(["alpha"] if alpha else []), "compute", "tpus", "queued-resources",
              "create", "kdjax-tpu-qr"]
    assert cmd[:len(prefix)] == prefix
    tiers = {"--spot", "--reserved", "--best-effort", "--guaranteed"} & set(cmd)
    assert tiers == ({tier} if tier else set())


def test_tpu_settings_from_environment_and_extras():
    env = {"TPU_ZONE": "us-east5-b", "TPU_NAME": "t6", "TPU_ACCELERATOR": "v6e-16",
           "TPU_PROJECT": "p", "TPU_QR_NAME": "q6", "TPU_VALID_UNTIL": "6h"}
    (cmd,) = dry("tpu.sh", "create", "--async", "--create-arg=--network=my-net", env=env)
    assert cmd[5] == "q6" and option(cmd, "--node-id") == "t6"
    assert option(cmd, "--zone") == "us-east5-b" and option(cmd, "--project") == "p"
    assert option(cmd, "--runtime-version") == "v2-alpha-tpuv6e"
    assert option(cmd, "--valid-until-duration") == "6h"
    assert {"--async", "--spot", "--network=my-net"} <= set(cmd)
    # a flag wins over the environment
    (cmd,) = dry("tpu.sh", "create", "--zone", "other", env=env)
    assert option(cmd, "--zone") == "other"


@pytest.mark.parametrize("slice_name", SLICES)
def test_tpu_runtime_versions_match_the_slice_table(slice_name):
    (cmd,) = dry("tpu.sh", "create", "--zone=z", "--accelerator", slice_name)
    assert option(cmd, "--runtime-version") == slice_info(slice_name).runtime_version


def test_tpu_vm_mode_delete_status_list():
    (cmd,) = dry("tpu.sh", "create", "--mode", "vm", "--zone=z", "--accelerator=v5e-8",
                 "--runtime=custom-rt")
    assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "kdjax-tpu"]
    assert option(cmd, "--accelerator-type") == "v5litepod-8"  # v5e alias -> API name
    assert option(cmd, "--version") == "custom-rt" and "--spot" in cmd
    (cmd,) = dry("tpu.sh", "delete", "--zone=z")
    assert cmd[:6] == ["gcloud", "compute", "tpus", "queued-resources", "delete", "kdjax-tpu-qr"]
    assert {"--force", "--quiet"} <= set(cmd)  # --force: also deletes the node
    (cmd,) = dry("tpu.sh", "delete", "--zone=z", "--mode=vm")
    assert cmd[3:6] == ["tpu-vm", "delete", "kdjax-tpu"]
    (cmd,) = dry("tpu.sh", "status", "--zone=z")
    assert cmd[3:6] == ["queued-resources", "describe", "kdjax-tpu-qr"]
    cmds = dry("tpu.sh", "list", "--zone=z")
    assert [c[3:5] for c in cmds] == [["queued-resources", "list"], ["tpu-vm", "list"]]


# -- setup.sh -------------------------------------------------------------------------------
def test_setup_copies_and_installs_on_all_workers():
    cmds = dry("setup.sh", "--zone=z", "--name=kd", "--stage", "gs://b/kr-electra=teachers/kr",
               "--check")
    archive, scp, unpack, stage, install, check = cmds
    if (ROOT / ".git").exists():  # tracked files, with uncommitted edits
        assert archive[:4] == ["git", "-C", str(ROOT), "archive"]
    else:  # not a git checkout: everything but .git / .venv / caches
        assert archive[:3] == ["tar", "-C", str(ROOT)] and "--exclude=.venv" in archive
    assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
    assert scp[6] == "kd:kdjax-src.tar.gz" and "--worker=all" in scp
    for cmd in (unpack, stage, install, check):
        assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "kd"]
        assert "--worker=all" in cmd and option(cmd, "--zone") == "z"
    assert "tar -xzf kdjax-src.tar.gz -C kdjax" in option(unpack, "--command")
    assert "gcloud storage rsync --recursive gs://b/kr-electra teachers/kr" in option(
        stage, "--command")
    remote = option(install, "--command")
    assert "uv venv -q --python 3.11 .venv" in remote
    assert "[ -x .venv/bin/python ] ||" in remote  # idempotent: an existing venv is reused
    assert "pip install -q --python .venv/bin/python -e '.[tpu]'" in remote
    assert "jax.distributed.initialize()" in option(check, "--command")


def test_setup_git_source_and_pip_installer():
    cmds = dry("setup.sh", "--zone=z", "--repo", "https://example.com/kdjax.git", "--ref=v1",
               "--installer", "pip", "--extra", "cuda", "--remote-dir", "src/kd")
    clone, install = (option(c, "--command") for c in cmds)
    assert "git clone -q https://example.com/kdjax.git src/kd" in clone
    assert "git -C src/kd fetch" in clone and "checkout -q --detach v1" in clone
    assert "python3.11 -m venv .venv" in install
    assert ".venv/bin/python -m pip install -q -e '.[cuda]'" in install


# -- run.sh ---------------------------------------------------------------------------------
RUN = ["run", "distill", "--zone=z", "--name=kd", "--config", "launch/configs/kr_electra_lf_v3.py",
       "--workdir", "gs://bucket/runs/lf3"]


def test_run_starts_the_same_detached_command_on_every_worker():
    (cmd,) = dry("run.sh", *RUN, "--env", "KDJAX_COMPILATION_CACHE=/tmp/xla", "--",
                 "--config.teacher.path=teachers/kr", "--config.mesh.shape=(16,1,1)")
    assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "kd"]
    assert "--worker=all" in cmd
    remote = option(cmd, "--command")
    log = '"$HOME/kdjax-logs/distill.$(hostname).log"'  # one log per worker (host)
    assert f"launch/worker.sh check --log {log}" in remote  # refuse a second concurrent run
    assert f"setsid nohup launch/worker.sh run --log {log}" in remote
    assert ">/dev/null 2>&1 </dev/null &" in remote  # detached: survives the ssh session
    assert "--upload gs://bucket/runs/lf3/logs" in remote
    kdjax = remote.split(" -- ", 1)[1].split(" >/dev/null")[0]
    assert shlex.split(kdjax) == [
        "env", "KDJAX_COMPILATION_CACHE=/tmp/xla", ".venv/bin/python", "-m", "kdjax.cli",
        "distill", "--config", "launch/configs/kr_electra_lf_v3.py",
        "--workdir", "gs://bucket/runs/lf3", "--distributed", "--no_progress",
        "--config.teacher.path=teachers/kr", "--config.mesh.shape=(16,1,1)",
    ]


def test_run_tail_status_stop():
    (cmd,) = dry("run.sh", "tail", "--zone=z", "--run-name=distill", "--worker", "2")
    assert "--worker=2" in cmd
    assert "worker.sh tail --log \"$HOME/kdjax-logs/distill.$(hostname).log\" --lines 100 " \
           "--follow" in option(cmd, "--command")
    (cmd,) = dry("run.sh", "status", "--zone=z", "--run-name=distill")
    assert "--worker=all" in cmd and "worker.sh status" in option(cmd, "--command")
    (cmd,) = dry("run.sh", "stop", "--zone=z", "--run-name", "distill", "--wait", "120")
    assert "--worker=all" in cmd
    assert "worker.sh stop --log \"$HOME/kdjax-logs/distill.$(hostname).log\" --signal TERM " \
           "--wait 120" in option(cmd, "--command")


def test_remote_command_lines_are_valid_bash():
    lines = [c for c in dry("run.sh", *RUN, "--", "--config.x='a b'", "--config.y=it's")]
    lines += dry("setup.sh", "--zone=z", "--stage", "gs://b/c d=data/c d", "--check")
    lines += dry("run.sh", "stop", "--zone=z", "--run-name=pretrain")
    remotes = [option(c, "--command") for c in lines if "ssh" in c]
    assert len(remotes) == 6
    for remote in remotes:
        proc = subprocess.run(["bash", "-n", "-c", remote], capture_output=True, text=True)
        assert proc.returncode == 0, (remote, proc.stderr)


@pytest.mark.parametrize("script, args, message", [
    ("tpu.sh", ["create"], "--zone is required (or set TPU_ZONE)"),
    ("tpu.sh", ["--zone=z"], "give a command"),
    ("tpu.sh", ["create", "--zone=z", "--mode=vm", "--best-effort"], "needs a queued resource"),
    ("tpu.sh", ["create", "--zone=z", "--accelerator=x9-8"], "no default runtime version"),
    ("tpu.sh", ["create", "--zone=z", "--bogus"], "unknown argument '--bogus'"),
    ("tpu.sh", ["create", "--zone"], "--zone needs a value"),
    ("setup.sh", [], "--zone is required"),
    ("setup.sh", ["--zone=z", "--source=git"], "--repo is required (or set SETUP_GIT_URL)"),
    ("setup.sh", ["--zone=z", "--stage=gs://b/x"], "--stage wants SRC=DST"),
    ("run.sh", ["run", "distill", "--zone=z", "--workdir=gs://b/r"], "--config is required"),
    ("run.sh", ["run", "distill", "--zone=z", "--config=c"], "--workdir is required"),
    ("run.sh", ["run", "distill", "--zone=z", "--config=c", "--workdir=/tmp/r"],
     "--workdir must be gs://"),
    ("run.sh", ["stop", "--zone=z"], "--run-name is required"),
    ("run.sh", ["run", "--zone=z", "--config=c", "--workdir=gs://b"], "is required"),
    ("run.sh", ["tail", "--zone=z", "--run-name=../x"], "must be a plain relative name"),
])
def test_missing_or_bad_settings_fail_with_one_line(script, args, message):
    proc = sh(script, *args, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{script}: error: "), proc.stderr
    assert message in lines[0]


@pytest.mark.parametrize("script", ["tpu.sh", "setup.sh", "run.sh"])
def test_help(script):
    proc = sh(script, "--help")
    assert proc.stdout.startswith(f"usage: launch/{script}")
    assert "--dry-run" in proc.stdout and "--zone ZONE" in proc.stdout


def test_scripts_are_strict_bash():
    for name in SCRIPTS:
        text = (LAUNCH / name).read_text()
        if name != "common.sh":
            assert text.startswith("#!/usr/bin/env bash\n"), name
            assert "set -euo pipefail" in text, name
            assert os.access(LAUNCH / name, os.X_OK), name


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_shellcheck():
    proc = subprocess.run(["shellcheck", "-x", *SCRIPTS], cwd=LAUNCH, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- the scripts against a fake gcloud: workers are local directories ------------------------
FAKE_GCLOUD = r'''
"""Fake gcloud: `compute tpus tpu-vm ssh|scp ... --worker=W` on local "workers" (one HOME each
under $FAKE_ROOT, $FAKE_WORKERS of them, hostname worker-I); every call is logged."""
import json, os, shutil, subprocess, sys, time

root, n = os.environ["FAKE_ROOT"], int(os.environ.get("FAKE_WORKERS", "2"))
args = sys.argv[1:]
with open(os.path.join(root, "calls.jsonl"), "a") as f:
    f.write(json.dumps(args) + "\n")
opts = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)
worker = opts.get("worker", "0")
workers = range(n) if worker == "all" else [int(worker)]
delay = float(os.environ.get("FAKE_WORKER_DELAY", "0"))
if args[:4] == ["compute", "tpus", "tpu-vm", "ssh"]:
    rc = 0
    for i in workers:
        home = os.path.join(root, f"worker{i}")
        os.makedirs(home, exist_ok=True)
        env = {**os.environ, "HOME": home, "FAKE_HOSTNAME": f"worker-{i}",
               "PATH": os.path.join(root, "bin") + os.pathsep + os.environ["PATH"],
               "KDJAX_PROCESS_ID": str(i), **json.loads(os.environ.get("FAKE_WORKER_ENV", "{}"))}
        rc |= subprocess.call(["bash", "-c", opts["command"]], cwd=home, env=env)
        if delay and i != workers[-1]:
            time.sleep(delay)
    sys.exit(rc)
if args[:4] == ["compute", "tpus", "tpu-vm", "scp"]:
    src, dest = args[4], args[5].split(":", 1)[1]
    for i in workers:
        target = os.path.join(root, f"worker{i}", dest)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy(src, target)
    sys.exit(0)
sys.exit(f"fake gcloud: unsupported {args}")
'''


@pytest.fixture
def fake_tpu(tmp_path):
    """(env for the scripts, root): GCLOUD = the fake, 2 workers under root/worker0..1."""
    root = tmp_path / "tpu"
    (root / "bin").mkdir(parents=True)
    gcloud = root / "bin" / "gcloud"
    gcloud.write_text(f"#!{sys.executable}\n{FAKE_GCLOUD}")
    hostname = root / "bin" / "hostname"
    hostname.write_text('#!/bin/sh\necho "${FAKE_HOSTNAME:-worker}"\n')
    for f in (gcloud, hostname):
        f.chmod(f.stat().st_mode | stat.S_IEXEC)
    env = {"GCLOUD": str(gcloud), "FAKE_ROOT": str(root), "FAKE_WORKERS": "2",
           "TPU_ZONE": "fake-zone", "TPU_NAME": "fake"}
    return env, root


def calls(root: Path) -> list[list[str]]:
    return [json.loads(line) for line in (root / "calls.jsonl").read_text().splitlines()]


def _toy_repo(path: Path) -> Path:
    """A git checkout with the launch scripts and a committed + an edited + a new file."""
    shutil.copytree(LAUNCH, path / "launch")
    (path / "pyproject.toml").write_text("[project]\nname = 'toy'\n")
    (path / "kdjax").mkdir()
    (path / "kdjax" / "cli.py").write_text("committed\n")
    git = ["git", "-C", str(path), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "toy"], check=True)
    (path / "kdjax" / "cli.py").write_text("edited, not committed\n")
    (path / "scratch.txt").write_text("untracked\n")
    return path


def test_setup_puts_the_project_on_every_worker(fake_tpu, tmp_path):
    env, root = fake_tpu
    repo = _toy_repo(tmp_path / "repo")
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "config.json").write_text("{}")
    setup = [str(repo / "launch" / "setup.sh"), "--no-install", "--stage",
             f"{teacher}=teachers/kr"]
    proc = subprocess.run(["bash", *setup], capture_output=True, text=True, timeout=60,
                          env={**BASE_ENV, **env})
    assert proc.returncode == 0, proc.stderr
    assert "not copied (untracked; git add them to include): scratch.txt" in proc.stderr
    for i in range(2):
        code = root / f"worker{i}" / "kdjax"
        assert (code / "pyproject.toml").is_file()
        assert (code / "kdjax" / "cli.py").read_text() == "edited, not committed\n"
        assert not (code / "scratch.txt").exists()
        assert os.access(code / "launch" / "worker.sh", os.X_OK)
        assert (code / "teachers" / "kr" / "config.json").read_text() == "{}"
        assert not list((root / f"worker{i}").glob("*.tar.gz"))  # cleaned up
    assert all("--worker=all" in c for c in calls(root))
    assert subprocess.run(["git", "-C", str(repo), "stash", "list"], capture_output=True,
                          text=True).stdout == ""  # the user's repository is left alone
    # idempotent: running it again refreshes the copy
    proc = subprocess.run(["bash", *setup], capture_output=True, text=True, timeout=60,
                          env={**BASE_ENV, **env})
    assert proc.returncode == 0, proc.stderr


FAKE_KDJAX = """#!/usr/bin/env bash
# stands in for .venv/bin/python: prints its arguments, "trains" until SIGTERM
echo "argv: $*"
echo "process ${KDJAX_PROCESS_ID:-?} on $(hostname)"
trap 'echo "signal: checkpoint saved at step 7"; exit 0' TERM
for _ in $(seq 600); do sleep 0.05; done
echo "finished"
"""


def _wait(predicate, timeout: float = 15.0) -> None:
    end = time.time() + timeout
    while not predicate():
        assert time.time() < end, "timed out"
        time.sleep(0.05)


def test_run_status_tail_stop_on_fake_workers(fake_tpu):
    env, root = fake_tpu
    for i in range(2):
        code = root / f"worker{i}" / "kdjax"
        (code / ".venv" / "bin").mkdir(parents=True)
        (code / "launch").symlink_to(LAUNCH)
        python = code / ".venv" / "bin" / "python"
        python.write_text(FAKE_KDJAX)
        python.chmod(0o755)
    logs = [root / f"worker{i}" / "kdjax-logs" / f"distill.worker-{i}.log" for i in range(2)]
    pids = [log.with_suffix(".pid") for log in logs]

    out = sh("run.sh", "run", "distill", "--config", "c.py", "--workdir", "/shared/w",
             "--allow-local-workdir", "--", "--config.train.steps=9", env=env).stdout
    assert "worker-0: started distill" in out and "worker-1: started distill" in out
    _wait(lambda: all(p.exists() for p in pids) and all("process" in lg.read_text()
                                                        for lg in logs))
    for i, log in enumerate(logs):
        text = log.read_text()
        assert "argv: -m kdjax.cli distill --config c.py --workdir /shared/w --distributed " \
               "--no_progress --config.train.steps=9" in text
        assert f"process {i} on worker-{i}" in text
    # detached: the ssh "session" (fake gcloud) has returned, the runs are alive
    assert "running (pid" in sh("run.sh", "status", "--run-name=distill", env=env).stdout
    again = sh("run.sh", "run", "distill", "--config", "c.py", "--workdir", "/shared/w",
               "--allow-local-workdir", env=env, check=False)
    assert again.returncode != 0 and "already running" in again.stderr
    tail = sh("run.sh", "tail", "--run-name=distill", "--worker=1", "--no-follow", env=env)
    assert "process 1 on worker-1" in tail.stdout

    stop = sh("run.sh", "stop", "--run-name=distill", "--wait", "10", env=env).stdout
    assert stop.count("sent SIGTERM") == 2 and stop.count(": stopped;") == 2
    for log, pid in zip(logs, pids):
        text = log.read_text()
        assert "signal: checkpoint saved at step 7" in text
        assert re.search(r"\[launch\] \S+ worker-\d: exit status 0", text)
        assert not pid.exists()
    status = sh("run.sh", "status", "--run-name=distill", env=env).stdout
    assert status.count("not running") == 2
    assert "not running" in sh("run.sh", "stop", "--run-name=distill", env=env).stdout


# -- kdjax.presets ----------------------------------------------------------------------------
def test_mesh_presets():
    assert mesh_for("data", 16) == {"shape": (16, 1, 1), "rules": "replicated"}
    assert mesh_for("fsdp", 16) == {"shape": (1, 16, 1), "rules": "fsdp"}
    assert mesh_for("data_fsdp", 16, local_devices=4) == {"shape": (4, 4, 1), "rules": "fsdp"}
    assert mesh_for("data_fsdp:8", 16)["shape"] == (2, 8, 1)
    assert mesh_for("data_fsdp", 8)["shape"] == (1, 8, 1)  # no host size: one group
    assert mesh_for("data_tensor", 16) == {"shape": (4, 1, 4), "rules": "tensor"}
    assert mesh_for("data_tensor:2", 8)["shape"] == (4, 1, 2)
    assert mesh_for("data_tensor", 2)["shape"] == (1, 1, 2)  # default T capped at N
    assert mesh_for("fsdp_tensor:4", 32) == {"shape": (1, 8, 4), "rules": "tensor"}
    assert mesh_for("data", 1)["shape"] == (1, 1, 1)
    for name in PRESETS:
        for n in (1, 4, 8, 16, 64):
            shape = mesh_for(name if name in ("data", "fsdp") else f"{name}:1", n)["shape"]
            assert check_mesh(shape, n) == shape


@pytest.mark.parametrize("spec, n, message", [
    ("data_tensor:3", 16, "tensor=3 does not divide the 16 devices; use one of 1, 2, 4, 8, 16"),
    ("data_fsdp:32", 16, "fsdp=32 does not divide the 16 devices"),
    ("data_tensor", 6, "tensor=4 does not divide the 6 devices"),
    ("data_tensor:x", 8, "is not an integer"),
    ("data:2", 8, "takes no size"),
    ("pipeline", 8, "unknown mesh preset 'pipeline'; choose one of data, fsdp"),
    ("data", 0, "num_devices must be >= 1"),
])
def test_mesh_preset_errors(spec, n, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        mesh_for(spec, n)


@pytest.mark.parametrize("name, chips, hosts, runtime", [
    ("v4-8", 4, 1, "tpu-ubuntu2204-base"),
    ("v4-32", 16, 4, "tpu-ubuntu2204-base"),
    ("v4-128", 64, 16, "tpu-ubuntu2204-base"),
    ("v5p-8", 4, 1, "v2-alpha-tpuv5"),
    ("v5p-16", 8, 2, "v2-alpha-tpuv5"),
    ("v5litepod-8", 8, 1, "v2-alpha-tpuv5-lite"),
    ("v5e-16", 16, 4, "v2-alpha-tpuv5-lite"),
    ("v5litepod-256", 256, 64, "v2-alpha-tpuv5-lite"),
    ("v6e-8", 8, 1, "v2-alpha-tpuv6e"),
    ("v6e-16", 16, 4, "v2-alpha-tpuv6e"),
    ("v3-32", 16, 4, "tpu-ubuntu2204-base"),
])
def test_slice_table(name, chips, hosts, runtime):
    info = slice_info(name)
    assert (info.chips, info.hosts, info.runtime_version) == (chips, hosts, runtime)
    assert info.chips_per_host * info.hosts == info.chips


def test_every_listed_slice_parses_and_bad_names_fail():
    for name in SLICES:
        info = slice_info(name)
        assert info.name == name and info.chips >= info.hosts >= 1
    for bad in ("v4", "v4-7", "x1-8", "v5litepod-12", "v6e-512", "v5e-2x2", "tpu"):
        with pytest.raises(ConfigError):
            slice_info(bad)


def test_presets_for_slices_and_config_overrides():
    assert mesh_for_slice("data", "v4-32")["shape"] == (16, 1, 1)
    assert mesh_for_slice("data_fsdp", "v4-32")["shape"] == (4, 4, 1)  # FSDP within a host
    assert mesh_for_slice("fsdp", "v5litepod-16")["shape"] == (1, 16, 1)
    flags = overrides("data_tensor:2", "v6e-8")
    assert flags == ["--config.mesh.shape=(4,1,2)", "--config.mesh.rules=tensor"]
    import ml_collections

    from kdjax.cli import split_overrides
    from kdjax.config_lib import apply_overrides, mesh_config

    config = ml_collections.ConfigDict({"mesh": mesh_config()})
    mesh = apply_overrides(config, split_overrides(flags)[1]).mesh  # the CLI accepts them
    assert tuple(mesh.shape) == (4, 1, 2) and mesh.rules == "tensor"
    cfg = mesh_config()
    with cfg.unlocked():
        cfg.preset = "fsdp"
    apply_preset(cfg, 8)
    assert tuple(cfg.shape) == (1, 8, 1) and cfg.rules == "fsdp"


def test_check_mesh_matches_make_mesh_rules():
    assert check_mesh((-1, 1, 1), 16) == (16, 1, 1)
    assert check_mesh((2, -1, 2), 16) == (2, 4, 2)
    with pytest.raises(ConfigError, match=r"needs 8 devices but 16 are available"):
        check_mesh((8, 1, 1), 16)
    with pytest.raises(ConfigError, match="not divisible by 3"):
        check_mesh((3, -1, 1), 16)
    with pytest.raises(ConfigError, match="3 entries"):
        check_mesh((16, 1), 16)


def test_presets_command_line(capsys):
    from kdjax.presets import main

    assert main(["v4-32", "data_fsdp"]) == 0  # python -m kdjax.presets v4-32 data_fsdp
    out = json.loads(capsys.readouterr().out)
    assert (out["chips"], out["hosts"], out["chips_per_host"]) == (16, 4, 4)
    assert out["overrides"] == "--config.mesh.shape=(4,4,1) --config.mesh.rules=fsdp"
    assert main(["v4-32", "data_tensor:3"]) == 2
    assert capsys.readouterr().err.startswith("kdjax: error: mesh preset 'data_tensor:3'")


def test_launch_recipe_config():
    from kdjax.config_lib import load_config
    from kdjax.models.size import param_report

    cfg = load_config(str(LAUNCH / "configs" / "kr_electra_lf_v3.py"),
                      ["mesh.shape=(16,1,1)", "teacher.path=/models/kr"])
    assert param_report(cfg.student.model)["params"] == 4_462_337  # LF-V3, 17.9 MB
    assert param_report(cfg.teacher.model)["params"] == 109_082_113  # KR-ELECTRA-base
    assert tuple(cfg.mesh.shape) == (16, 1, 1) and cfg.teacher.path == "/models/kr"
    assert cfg.train.batch_size % 16 == 0  # divisible by the v4-32's 16 chips
    assert "launch/configs/kr_electra_lf_v3.py" in (LAUNCH / "README.md").read_text()


def test_launch_recipes_use_the_recommended_meshes():
    """The launch recipes' meshes are presets.RECOMMENDED (what `kdjax compile` showed) on a
    v4-32, so the README's commands run what docs/scale.md recommends."""
    from kdjax.config_lib import load_config
    from kdjax.presets import RECOMMENDED, apply_preset, mesh_for_slice

    for name, kind in (("kr_electra_pretrain.py", "pretrain"), ("kr_electra_lf_v3.py",
                                                                 "distill")):
        mesh = load_config(str(LAUNCH / "configs" / name)).mesh
        apply_preset(mesh, 16, local_devices=4)
        want = mesh_for_slice(RECOMMENDED[kind], "v4-32")
        got = tuple(16 if d == -1 else d for d in mesh.shape)
        assert (got, mesh.rules) == (want["shape"], want["rules"]), name
    assert RECOMMENDED["pretrain"] == "data_fsdp" and RECOMMENDED["distill"] == "data"


def test_readme_commands_use_existing_flags():
    """Every launch/{tpu,setup,run}.sh command of launch/README.md passes --dry-run with the
    README's exported settings."""
    text = (LAUNCH / "README.md").read_text()
    env: dict[str, str] = {}
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith("export "):
                env.update(w.split("=", 1) for w in shlex.split(line)[1:])
            elif re.match(r"launch/(tpu|setup|run)\.sh ", line):
                commands.append(shlex.split(line))
    assert env.get("TPU_ZONE") and len(commands) >= 9
    for words in commands:
        script, args = words[0].removeprefix("launch/"), words[1:]
        proc = sh(script, "--dry-run", *args, env=env, check=False)
        assert proc.returncode == 0, (words, proc.stderr)
        assert proc.stdout.strip(), words
