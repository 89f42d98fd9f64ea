# shellcheck shell=bash
# Helpers shared by launch/tpu.sh, launch/setup.sh and launch/run.sh (sourced, never run).
#
# Conventions of every launch script:
#   - each setting is a flag (`--zone us-central2-b` or `--zone=us-central2-b`) or an
#     environment variable (TPU_ZONE=...); the flag wins; most have a default;
#   - `--dry-run` (or DRY_RUN=1) prints the exact commands, one per line, instead of running
#     them (copy-paste-able: words are quoted for bash only where needed);
#   - a missing required setting prints one line `NAME: error: ...` and exits with status 2.
#
# Settings shared by all scripts (the TPU to talk to):
#   TPU_NAME      --name       the TPU VM (node) name              default: kdjax-tpu
#   TPU_ZONE      --zone       its zone                            required
#   TPU_PROJECT   --project    GCP project                         default: gcloud's core/project
#   TPU_SSH_ARGS  --ssh-arg    extra flag for `tpu-vm ssh/scp`, e.g. --internal-ip or
#                              --tunnel-through-iap (repeatable; env: space-separated)
#   GCLOUD                     the gcloud binary                   default: gcloud

GCLOUD=${GCLOUD:-gcloud}
DRY_RUN=${DRY_RUN:-0}
TPU_NAME=${TPU_NAME:-kdjax-tpu}
TPU_ZONE=${TPU_ZONE:-}
TPU_PROJECT=${TPU_PROJECT:-}
SSH_EXTRA=()
if [[ -n ${TPU_SSH_ARGS:-} ]]; then
  read -r -a SSH_EXTRA <<<"$TPU_SSH_ARGS"
fi
PROJ=()
# shellcheck disable=SC2034  # used by the scripts that source this file
LAUNCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck disable=SC2034
REPO_ROOT=$(cd "$LAUNCH_DIR/.." && pwd)

die() {
  printf '%s: error: %s\n' "${PROG:-launch}" "$*" >&2
  exit 2
}

info() { printf '%s: %s\n' "${PROG:-launch}" "$*" >&2; }

# shquote WORD: WORD quoted for bash where needed (plain words stay readable).
shquote() {
  local s=$1
  if [[ -n $s && $s =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
    printf '%s' "$s"
  elif [[ $s =~ ^(--[A-Za-z0-9_.-]+=)(.*)$ ]]; then  # --flag='value with spaces'
    local rest=${BASH_REMATCH[2]}
    printf "%s'%s'" "${BASH_REMATCH[1]}" "${rest//\'/\'\\\'\'}"
  else
    printf "'%s'" "${s//\'/\'\\\'\'}"
  fi
}

# shjoin WORD...: the words as one bash command line.
shjoin() {
  local out="" w
  for w in "$@"; do
    out+="${out:+ }$(shquote "$w")"
  done
  printf '%s' "$out"
}

# run CMD...: run CMD, or print it under --dry-run.
run() {
  if [[ $DRY_RUN == 1 ]]; then
    printf '%s\n' "$(shjoin "$@")"
    return 0
  fi
  "$@"
}

# split_args ARG...: ARGS=(the arguments with `--flag=value` split into `--flag value`);
# everything after a bare `--` is kept as is.
split_args() {
  ARGS=()
  local a rest=0
  for a in "$@"; do
    if ((rest)); then
      ARGS+=("$a")
      continue
    fi
    case $a in
      --) rest=1; ARGS+=("$a") ;;
      --*=*) ARGS+=("${a%%=*}" "${a#*=}") ;;
      *) ARGS+=("$a") ;;
    esac
  done
}

# need FLAG [VALUE...]: fail unless FLAG is followed by a value.
need() {
  (($# >= 2)) || die "$1 needs a value"
}

# require VAR FLAG: fail with one line unless the setting VAR is non-empty.
require() {
  [[ -n ${!1:-} ]] || die "$2 is required (or set $1)"
}

# The scripts run on the user's machine: keep to bash 3.2 (macOS), i.e. no mapfile, no
# associative arrays, and empty arrays expanded as ${A[@]+"${A[@]}"} (set -u).

# gcloud_args: PROJ=(--project=... when a project is set); call after parsing the flags.
gcloud_args() {
  PROJ=()
  if [[ -n $TPU_PROJECT ]]; then
    PROJ=("--project=$TPU_PROJECT")
  fi
}

# tpu_ssh WORKER COMMAND: run COMMAND (a bash command line) on WORKER (N or all).
tpu_ssh() {
  run "$GCLOUD" compute tpus tpu-vm ssh "$TPU_NAME" --zone="$TPU_ZONE" ${PROJ[@]+"${PROJ[@]}"} \
    --worker="$1" ${SSH_EXTRA[@]+"${SSH_EXTRA[@]}"} --command="$2"
}

# tpu_scp WORKER SRC DEST: copy the local file SRC to DEST (relative to the remote home).
tpu_scp() {
  run "$GCLOUD" compute tpus tpu-vm scp "$2" "$TPU_NAME:$3" --zone="$TPU_ZONE" \
    ${PROJ[@]+"${PROJ[@]}"} --worker="$1" ${SSH_EXTRA[@]+"${SSH_EXTRA[@]}"}
}
