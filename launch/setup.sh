#!/usr/bin/env bash
# Put kdjax on every worker of a TPU VM slice and install it with the TPU JAX extra, into
# ~/KDJAX_REMOTE_DIR/.venv on each worker. Idempotent: rerun it after a code change (the copy
# is refreshed, the venv and installed wheels are reused).
#
# gcloud flags used: `gcloud compute tpus tpu-vm scp SRC NAME:DEST --worker=all --zone` and
# `gcloud compute tpus tpu-vm ssh NAME --worker=all --command=...`
#   https://cloud.google.com/sdk/gcloud/reference/compute/tpus/tpu-vm/scp
#   https://cloud.google.com/sdk/gcloud/reference/compute/tpus/tpu-vm/ssh
# and, on the workers, `gcloud storage rsync SRC DST --recursive` for --stage gs://...
#   https://cloud.google.com/sdk/gcloud/reference/storage/rsync
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
PROG=setup.sh

SETUP_SOURCE=${SETUP_SOURCE:-copy}
SETUP_GIT_URL=${SETUP_GIT_URL:-}
SETUP_GIT_REF=${SETUP_GIT_REF:-origin/HEAD}
KDJAX_REMOTE_DIR=${KDJAX_REMOTE_DIR:-kdjax}
SETUP_EXTRA=${SETUP_EXTRA:-tpu}
SETUP_PYTHON=${SETUP_PYTHON:-3.11}
SETUP_INSTALLER=${SETUP_INSTALLER:-uv}
SETUP_INSTALL=${SETUP_INSTALL:-1}
SETUP_CHECK=${SETUP_CHECK:-0}
WORKER=${WORKER:-all}
STAGE=()
if [[ -n ${KDJAX_STAGE:-} ]]; then
  read -r -a STAGE <<<"$KDJAX_STAGE"
fi

usage() {
  cat <<'EOF'
usage: launch/setup.sh [flags]

Copies this checkout (or clones a git URL) to ~/REMOTE_DIR on every worker, creates
REMOTE_DIR/.venv (Python 3.11) and runs `pip install -e ".[tpu]"` in it; optionally stages
data / teacher directories next to it. Safe to rerun.

flags (environment variable, default):
  --name NAME          TPU_NAME (kdjax-tpu)
  --zone ZONE          TPU_ZONE (required)
  --project PROJECT    TPU_PROJECT (gcloud config)
  --worker W           WORKER (all)                 all, or one worker index
  --source copy|git    SETUP_SOURCE (copy)          copy: this checkout's files (git-tracked,
                                                    with uncommitted edits; untracked files are
                                                    not copied); git: clone --repo on workers
  --repo URL           SETUP_GIT_URL                required with --source git
  --ref REF            SETUP_GIT_REF (origin/HEAD)  commit, tag or origin/BRANCH to check out
  --remote-dir DIR     KDJAX_REMOTE_DIR (kdjax)     relative to the remote home
  --extra NAME         SETUP_EXTRA (tpu)            pip extra: tpu (TPU VMs), cuda, or "" (CPU)
  --python VERSION     SETUP_PYTHON (3.11)          the TPU images ship 3.10; kdjax needs 3.11+
  --installer uv|pip   SETUP_INSTALLER (uv)         uv fetches Python VERSION itself; pip needs
                                                    pythonVERSION installed on the workers
  --stage SRC=DST      KDJAX_STAGE (space-sep.)     also put SRC into REMOTE_DIR/DST on every
                                                    worker (repeatable): a gs:// prefix
                                                    (gcloud storage rsync, run on the workers)
                                                    or a local directory (copied with scp).
                                                    For the teacher, tokenizer and corpus: kdjax
                                                    reads them from local paths.
  --no-install         SETUP_INSTALL=0              only copy / stage
  --check              SETUP_CHECK=1                then run jax.distributed.initialize() on all
                                                    workers and print processes and devices
  --ssh-arg ARG        TPU_SSH_ARGS                 extra flag for gcloud ssh/scp (repeatable)
  --dry-run            DRY_RUN=1                    print the commands, run nothing
  -h, --help
EOF
}

split_args "$@"
set -- ${ARGS[@]+"${ARGS[@]}"}
while (($#)); do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --name) need "$@"; TPU_NAME=$2; shift 2 ;;
    --zone) need "$@"; TPU_ZONE=$2; shift 2 ;;
    --project) need "$@"; TPU_PROJECT=$2; shift 2 ;;
    --worker) need "$@"; WORKER=$2; shift 2 ;;
    --source) need "$@"; SETUP_SOURCE=$2; shift 2 ;;
    --repo) need "$@"; SETUP_GIT_URL=$2; SETUP_SOURCE=git; shift 2 ;;
    --ref) need "$@"; SETUP_GIT_REF=$2; shift 2 ;;
    --remote-dir) need "$@"; KDJAX_REMOTE_DIR=$2; shift 2 ;;
    --extra) need "$@"; SETUP_EXTRA=$2; shift 2 ;;
    --python) need "$@"; SETUP_PYTHON=$2; shift 2 ;;
    --installer) need "$@"; SETUP_INSTALLER=$2; shift 2 ;;
    --stage) need "$@"; STAGE+=("$2"); shift 2 ;;
    --no-install) SETUP_INSTALL=0; shift ;;
    --check) SETUP_CHECK=1; shift ;;
    --ssh-arg) need "$@"; SSH_EXTRA+=("$2"); shift 2 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

require TPU_ZONE --zone
require TPU_NAME --name
require KDJAX_REMOTE_DIR --remote-dir
case $SETUP_SOURCE in
  copy) ;;
  git) require SETUP_GIT_URL --repo ;;
  *) die "--source must be copy or git, got '$SETUP_SOURCE'" ;;
esac
case $SETUP_INSTALLER in uv | pip) ;; *) die "--installer must be uv or pip" ;; esac
for s in ${STAGE[@]+"${STAGE[@]}"}; do
  [[ $s == *=* && -n ${s%%=*} && -n ${s#*=} ]] || die "--stage wants SRC=DST, got '$s'"
  [[ ${s#*=} != /* && ${s#*=} != *..* ]] || die "--stage DST is relative to the remote dir" \
    "and stays inside it, got '${s#*=}'"
done
gcloud_args
RDIR=$(shquote "$KDJAX_REMOTE_DIR")
TMP=$(mktemp -d "${TMPDIR:-/tmp}/kdjax-setup.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

# 1. the code
if [[ $SETUP_SOURCE == copy ]]; then
  TARBALL=$TMP/kdjax-src.tar.gz
  if git -C "$REPO_ROOT" rev-parse --git-dir >/dev/null 2>&1; then
    # `git stash create` = a commit of the work tree's tracked files (HEAD when clean); no
    # ref or index changes.
    tree=$(git -C "$REPO_ROOT" stash create 2>/dev/null || true)
    run git -C "$REPO_ROOT" archive --format=tar.gz -o "$TARBALL" "${tree:-HEAD}"
    untracked=$(git -C "$REPO_ROOT" ls-files -o --exclude-standard | head -3 | tr '\n' ' ')
    if [[ -n $untracked ]]; then
      info "not copied (untracked; git add them to include): $untracked..."
    fi
  else
    run tar -C "$REPO_ROOT" --exclude=.git --exclude=.venv --exclude=__pycache__ \
      --exclude='*.egg-info' -czf "$TARBALL" .
  fi
  tpu_scp "$WORKER" "$TARBALL" kdjax-src.tar.gz
  tpu_ssh "$WORKER" "set -e; mkdir -p $RDIR; tar -xzf kdjax-src.tar.gz -C $RDIR; \
rm -f kdjax-src.tar.gz; echo \"\$(hostname): code in $RDIR\""
else
  url=$(shquote "$SETUP_GIT_URL")
  ref=$(shquote "$SETUP_GIT_REF")
  tpu_ssh "$WORKER" "set -e; if [ -d $RDIR/.git ]; then git -C $RDIR fetch -q --tags origin; \
else git clone -q $url $RDIR; fi; git -C $RDIR checkout -q --detach $ref; \
echo \"\$(hostname): $RDIR at \$(git -C $RDIR rev-parse --short HEAD)\""
fi

# 2. staged inputs (teacher, tokenizer, corpus)
n=0
for s in ${STAGE[@]+"${STAGE[@]}"}; do
  src=${s%%=*}
  dst=$(shquote "${s#*=}")
  if [[ $src == gs://* ]]; then
    tpu_ssh "$WORKER" "set -e; cd $RDIR; mkdir -p $dst; \
gcloud storage rsync --recursive $(shquote "$src") $dst"
  else
    [[ -d $src || $DRY_RUN == 1 ]] || die "--stage source '$src' is not a directory or gs:// URL"
    n=$((n + 1))
    run tar -C "$src" -czf "$TMP/stage$n.tar.gz" .
    tpu_scp "$WORKER" "$TMP/stage$n.tar.gz" "kdjax-stage$n.tar.gz"
    tpu_ssh "$WORKER" "set -e; cd $RDIR; mkdir -p $dst; tar -xzf ~/kdjax-stage$n.tar.gz -C $dst; \
rm -f ~/kdjax-stage$n.tar.gz"
  fi
done

# 3. the venv and the install (idempotent: an existing venv is reused)
if [[ $SETUP_INSTALL == 1 ]]; then
  spec=$(shquote ".${SETUP_EXTRA:+[$SETUP_EXTRA]}")
  py=$(shquote "$SETUP_PYTHON")
  if [[ $SETUP_INSTALLER == uv ]]; then
    install="export PATH=\"\$HOME/.local/bin:\$PATH\"; command -v uv >/dev/null 2>&1 || \
python3 -m pip install --user -q uv || curl -LsSf https://astral.sh/uv/install.sh | sh; \
[ -x .venv/bin/python ] || uv venv -q --python $py .venv; \
uv pip install -q --python .venv/bin/python -e $spec"
  else
    install="[ -x .venv/bin/python ] || python$py -m venv .venv; \
.venv/bin/python -m pip install -q --upgrade pip; .venv/bin/python -m pip install -q -e $spec"
  fi
  tpu_ssh "$WORKER" "set -e; cd $RDIR; $install; .venv/bin/python -c \
'import jax, kdjax, socket; print(socket.gethostname(), \"kdjax\", kdjax.__version__, \"jax\", jax.__version__)'"
fi

# 4. optional: every worker joins jax.distributed and sees the whole slice
if [[ $SETUP_CHECK == 1 ]]; then
  tpu_ssh "$WORKER" "cd $RDIR && .venv/bin/python -c 'import jax; jax.distributed.initialize(); \
print(f\"process {jax.process_index()}/{jax.process_count()}: {jax.local_device_count()} of \
{jax.device_count()} {jax.devices()[0].platform} devices\")'"
fi
