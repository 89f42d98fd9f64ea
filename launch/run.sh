#!/usr/bin/env bash
# Start a kdjax run on all workers of a TPU slice at once, follow its logs, stop it.
#
#   launch/run.sh run distill --config FILE --workdir gs://BUCKET/RUN [-- --config.a.b=v ...]
#   launch/run.sh tail [--worker N]      the log of one worker (default 0)
#   launch/run.sh status                 running or not, last log line, on every worker
#   launch/run.sh stop                   SIGTERM on every worker: kdjax saves a checkpoint at
#                                        the current step and exits; `run` again resumes
#   launch/run.sh run ... --compile-check --accelerator v4-32
#                                        first compile the step for the slice HERE (kdjax
#                                        compile, libtpu): refuse to start when it does not fit
#
# Every worker runs the same command (`python -m kdjax.cli KIND ... --distributed`):
# jax.distributed.initialize() finds the coordinator and the process ids itself on Cloud TPU.
# The process is detached (`setsid nohup`), so it outlives the ssh session; its output goes to
# ~/LOG_DIR/RUN.<hostname>.log on each worker (and to WORKDIR/logs/ when it ends, for gs://
# workdirs). launch/worker.sh is the worker side (copied there by launch/setup.sh).
#
# gcloud: `gcloud compute tpus tpu-vm ssh NAME --zone Z --worker=all --command=...`
#   https://cloud.google.com/sdk/gcloud/reference/compute/tpus/tpu-vm/ssh
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
PROG=run.sh

KDJAX_KIND=${KDJAX_KIND:-}
KDJAX_CONFIG=${KDJAX_CONFIG:-}
KDJAX_WORKDIR=${KDJAX_WORKDIR:-}
KDJAX_RUN_NAME=${KDJAX_RUN_NAME:-}
KDJAX_LOG_DIR=${KDJAX_LOG_DIR:-kdjax-logs}
KDJAX_REMOTE_DIR=${KDJAX_REMOTE_DIR:-kdjax}
KDJAX_PYTHON=${KDJAX_PYTHON:-.venv/bin/python}
KDJAX_UPLOAD_LOGS=${KDJAX_UPLOAD_LOGS:-auto}
KDJAX_ALLOW_LOCAL_WORKDIR=${KDJAX_ALLOW_LOCAL_WORKDIR:-0}
KDJAX_SIGNAL=${KDJAX_SIGNAL:-TERM}
KDJAX_STOP_WAIT=${KDJAX_STOP_WAIT:-0}
KDJAX_LINES=${KDJAX_LINES:-100}
KDJAX_FOLLOW=${KDJAX_FOLLOW:-1}
KDJAX_COMPILE_CHECK=${KDJAX_COMPILE_CHECK:-0}
KDJAX_LOCAL_PYTHON=${KDJAX_LOCAL_PYTHON:-python3}
TPU_ACCELERATOR=${TPU_ACCELERATOR:-}
WORKER=${WORKER:-}
ENVS=()
if [[ -n ${KDJAX_ENV:-} ]]; then
  read -r -a ENVS <<<"$KDJAX_ENV"
fi
KDJAX_ARGS=()

usage() {
  cat <<'EOF'
usage: launch/run.sh run KIND --config FILE --workdir gs://... [flags] [-- KDJAX_ARGS...]
       launch/run.sh tail|status|stop [flags]

  run KIND   start `python -m kdjax.cli KIND --config FILE --workdir WORKDIR --distributed
             KDJAX_ARGS` on every worker, detached (KIND: distill, pretrain, finetune, ...);
             refuses to start where the previous run is still alive
  tail       print (and follow) one worker's log
  status     on every worker: running or not, and the last lines of the log
  stop       send SIGTERM to the run on every worker: kdjax finishes the current step,
             writes a checkpoint and exits; `run` with the same workdir resumes from it

flags (environment variable, default):
  --name NAME         TPU_NAME (kdjax-tpu)
  --zone ZONE         TPU_ZONE (required)
  --project PROJECT   TPU_PROJECT (gcloud config)
  --config FILE       KDJAX_CONFIG (required for run)  relative to the remote dir, or a
                                                       bundled name (lf_v3, debug_distill)
  --workdir URL       KDJAX_WORKDIR (required for run) gs://BUCKET/PATH: checkpoints, metrics,
                                                       TensorBoard, shared by all workers
  --allow-local-workdir  KDJAX_ALLOW_LOCAL_WORKDIR=1   accept a non-gs:// workdir (one host)
  --run-name NAME     KDJAX_RUN_NAME (KIND)            names the log: ~/LOG_DIR/NAME.<host>.log
  --log-dir DIR       KDJAX_LOG_DIR (kdjax-logs)       relative to the remote home
  --remote-dir DIR    KDJAX_REMOTE_DIR (kdjax)         where setup.sh put the code
  --python PATH       KDJAX_PYTHON (.venv/bin/python)  relative to the remote dir
  --env K=V           KDJAX_ENV (space-separated)      environment of the run (repeatable)
  --upload-logs | --no-upload-logs  KDJAX_UPLOAD_LOGS (auto: on for gs:// workdirs)
                                                       copy each log to WORKDIR/logs/ at exit
  --worker W          WORKER (all; tail: 0)
  --signal SIG        KDJAX_SIGNAL (TERM)              stop: the signal to send
  --wait SECONDS      KDJAX_STOP_WAIT (0)              stop: wait for the runs to exit
  --lines N           KDJAX_LINES (100)                tail: lines to show
  --no-follow         KDJAX_FOLLOW=0                   tail: print and return
  --ssh-arg ARG       TPU_SSH_ARGS                     extra flag for gcloud ssh (repeatable)
  --compile-check     KDJAX_COMPILE_CHECK=1            run: pre-flight on this machine first:
                                                       `kdjax compile` of the run for the
                                                       slice's topology (needs libtpu here:
                                                       pip install -e ".[tpu]"); refuses to
                                                       start when the step does not fit HBM
  --accelerator TYPE  TPU_ACCELERATOR                  the slice (v4-32, v5litepod-16, ...)
                                                       the pre-flight compiles for
  --local-python PATH KDJAX_LOCAL_PYTHON (python3)     the pre-flight's python (with kdjax)
  --dry-run           DRY_RUN=1                        print the gcloud commands, run nothing
  -h, --help
Everything after `--` goes to kdjax unchanged, e.g. -- --config.teacher.path=teachers/kr
--config.mesh.shape='(16,1,1)' --config.train.steps=100000
EOF
}

CMD=""
split_args "$@"
set -- ${ARGS[@]+"${ARGS[@]}"}
while (($#)); do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --name) need "$@"; TPU_NAME=$2; shift 2 ;;
    --zone) need "$@"; TPU_ZONE=$2; shift 2 ;;
    --project) need "$@"; TPU_PROJECT=$2; shift 2 ;;
    --kind) need "$@"; KDJAX_KIND=$2; shift 2 ;;
    --config) need "$@"; KDJAX_CONFIG=$2; shift 2 ;;
    --workdir) need "$@"; KDJAX_WORKDIR=$2; shift 2 ;;
    --allow-local-workdir) KDJAX_ALLOW_LOCAL_WORKDIR=1; shift ;;
    --run-name) need "$@"; KDJAX_RUN_NAME=$2; shift 2 ;;
    --log-dir) need "$@"; KDJAX_LOG_DIR=$2; shift 2 ;;
    --remote-dir) need "$@"; KDJAX_REMOTE_DIR=$2; shift 2 ;;
    --python) need "$@"; KDJAX_PYTHON=$2; shift 2 ;;
    --env) need "$@"; ENVS+=("$2"); shift 2 ;;
    --upload-logs) KDJAX_UPLOAD_LOGS=1; shift ;;
    --no-upload-logs) KDJAX_UPLOAD_LOGS=0; shift ;;
    --worker) need "$@"; WORKER=$2; shift 2 ;;
    --signal) need "$@"; KDJAX_SIGNAL=$2; shift 2 ;;
    --wait) need "$@"; KDJAX_STOP_WAIT=$2; shift 2 ;;
    --lines) need "$@"; KDJAX_LINES=$2; shift 2 ;;
    --follow) KDJAX_FOLLOW=1; shift ;;
    --no-follow) KDJAX_FOLLOW=0; shift ;;
    --ssh-arg) need "$@"; SSH_EXTRA+=("$2"); shift 2 ;;
    --compile-check) KDJAX_COMPILE_CHECK=1; shift ;;
    --accelerator | --accelerator-type) need "$@"; TPU_ACCELERATOR=$2; shift 2 ;;
    --local-python) need "$@"; KDJAX_LOCAL_PYTHON=$2; shift 2 ;;
    --) shift; KDJAX_ARGS=("$@"); break ;;
    run | tail | status | stop)
      [[ -z $CMD ]] || die "one command at a time (got $CMD and $1)"
      CMD=$1; shift
      if [[ $CMD == run && $# -gt 0 && $1 != -* ]]; then
        KDJAX_KIND=$1; shift
      fi ;;
    *) die "unknown argument '$1' (see --help; kdjax arguments go after --)" ;;
  esac
done

[[ -n $CMD ]] || die "give a command: run, tail, status or stop (see --help)"
require TPU_ZONE --zone
require TPU_NAME --name
KDJAX_RUN_NAME=${KDJAX_RUN_NAME:-${KDJAX_KIND:-}}
require KDJAX_RUN_NAME --run-name
for v in KDJAX_RUN_NAME KDJAX_LOG_DIR KDJAX_REMOTE_DIR; do
  [[ ${!v} =~ ^[A-Za-z0-9_][A-Za-z0-9_./-]*$ && ${!v} != *..* ]] ||
    die "$v='${!v}' must be a plain relative name (letters, digits, _ . - /)"
done
[[ $KDJAX_SIGNAL =~ ^[A-Z0-9]+$ ]] || die "--signal wants a name like TERM or INT"
gcloud_args

# preflight: compile the run's step for the slice on this machine (kdjax compile, libtpu) and
# stop here, before anything starts on the TPU VMs, when it does not fit a chip's HBM.
preflight() {
  [[ -n $TPU_ACCELERATOR ]] ||
    die "--compile-check needs the slice: --accelerator v4-32 (or set TPU_ACCELERATOR)"
  local overrides=() i=0 a
  local args=(${KDJAX_ARGS[@]+"${KDJAX_ARGS[@]}"})
  while ((i < ${#args[@]})); do  # the --config.* overrides (kdjax's other flags stay out)
    a=${args[i]}
    if [[ $a == --config.*=* ]]; then
      overrides+=("$a")
    elif [[ $a == --config.* && $((i + 1)) -lt ${#args[@]} ]]; then
      overrides+=("$a=${args[i + 1]}")
      i=$((i + 1))
    fi
    i=$((i + 1))
  done
  local check=("$KDJAX_LOCAL_PYTHON" -m kdjax.cli compile --config "$KDJAX_CONFIG"
    --topology "$TPU_ACCELERATOR" --kind "$KDJAX_KIND" --require_fit
    ${overrides[@]+"${overrides[@]}"})
  if [[ $DRY_RUN == 1 ]]; then
    printf '(cd %s && %s)\n' "$(shquote "$REPO_ROOT")" "$(shjoin "${check[@]}")"
    return 0
  fi
  info "pre-flight: compiling the $KDJAX_KIND step for $TPU_ACCELERATOR on this machine"
  if ! (cd "$REPO_ROOT" && "${check[@]}" >&2); then
    die "pre-flight: the $KDJAX_KIND step does not compile or fit on $TPU_ACCELERATOR" \
      "(see above); nothing was started"
  fi
}

RDIR=$(shquote "$KDJAX_REMOTE_DIR")
# expanded on the worker: one log per host
LOGPATH="\$HOME/$KDJAX_LOG_DIR/$KDJAX_RUN_NAME.\$(hostname).log"
LOGFILE="\"$LOGPATH\""

case $CMD in
  run)
    require KDJAX_KIND "the kind (run distill|pretrain|finetune|...)"
    [[ $KDJAX_KIND =~ ^[a-z_]+$ ]] || die "unknown kind '$KDJAX_KIND'"
    require KDJAX_CONFIG --config
    require KDJAX_WORKDIR --workdir
    if [[ $KDJAX_WORKDIR != gs://* && $KDJAX_ALLOW_LOCAL_WORKDIR != 1 ]]; then
      die "--workdir must be gs://... (all hosts write one checkpoint there); pass" \
        "--allow-local-workdir for a single-host slice"
    fi
    if [[ $KDJAX_UPLOAD_LOGS == auto ]]; then
      KDJAX_UPLOAD_LOGS=0
      if [[ $KDJAX_WORKDIR == gs://* ]]; then KDJAX_UPLOAD_LOGS=1; fi
    fi
    upload=()
    if [[ $KDJAX_UPLOAD_LOGS == 1 ]]; then
      upload=(--upload "${KDJAX_WORKDIR%/}/logs")
    fi
    envs=()
    if ((${#ENVS[@]})); then
      for e in "${ENVS[@]}"; do
        [[ $e =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env wants NAME=VALUE, got '$e'"
      done
      envs=(env "${ENVS[@]}")
    fi
    if [[ $KDJAX_COMPILE_CHECK == 1 ]]; then
      preflight
    fi
    kdjax=(${envs[@]+"${envs[@]}"} "$KDJAX_PYTHON" -m kdjax.cli "$KDJAX_KIND"
      --config "$KDJAX_CONFIG" --workdir "$KDJAX_WORKDIR" --distributed --no_progress
      ${KDJAX_ARGS[@]+"${KDJAX_ARGS[@]}"})
    remote="cd $RDIR && mkdir -p \"\$HOME/$KDJAX_LOG_DIR\" && launch/worker.sh check --log $LOGFILE"
    remote+=" && { setsid nohup launch/worker.sh run --log $LOGFILE"
    remote+=" $(shjoin ${upload[@]+"${upload[@]}"} -- "${kdjax[@]}") >/dev/null 2>&1 </dev/null &"
    remote+=" } && echo \"\$(hostname): started $KDJAX_KIND, log $LOGPATH\""
    tpu_ssh "${WORKER:-all}" "$remote"
    if [[ $DRY_RUN != 1 ]]; then
      info "follow it: launch/run.sh tail --name $TPU_NAME --zone $TPU_ZONE" \
        "--run-name $KDJAX_RUN_NAME; metrics: $KDJAX_WORKDIR/metrics.jsonl"
    fi ;;
  tail)
    follow=()
    if [[ $KDJAX_FOLLOW == 1 ]]; then follow=(--follow); fi
    tpu_ssh "${WORKER:-0}" "cd $RDIR && launch/worker.sh tail --log $LOGFILE \
--lines $(shquote "$KDJAX_LINES") ${follow[*]-}" ;;
  status)
    tpu_ssh "${WORKER:-all}" "cd $RDIR && launch/worker.sh status --log $LOGFILE" ;;
  stop)
    tpu_ssh "${WORKER:-all}" "cd $RDIR && launch/worker.sh stop --log $LOGFILE \
--signal $KDJAX_SIGNAL --wait $(shquote "$KDJAX_STOP_WAIT")" ;;
esac
