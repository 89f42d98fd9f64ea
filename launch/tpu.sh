#!/usr/bin/env bash
# Create, delete, inspect and list the Cloud TPU that kdjax runs on: a queued resource (the
# default; the way to get spot / reserved / best-effort capacity) or a plain TPU VM.
#
# gcloud flags used (checked against the gcloud reference, 2025):
#   gcloud compute tpus queued-resources create QR --node-id --zone --accelerator-type
#     --runtime-version [--spot | --reserved | --guaranteed] [--valid-until-duration] [--project]
#     https://cloud.google.com/sdk/gcloud/reference/compute/tpus/queued-resources/create
#   --best-effort is not a GA flag: it exists only in `gcloud alpha compute tpus
#     queued-resources create` (the v2alpha1 API's BestEffort tier), so that tier uses alpha:
#     https://cloud.google.com/sdk/gcloud/reference/alpha/compute/tpus/queued-resources/create
#   gcloud compute tpus queued-resources delete QR --zone [--force] [--async]  (--force also
#     deletes the TPU VMs the request created)
#     https://cloud.google.com/sdk/gcloud/reference/compute/tpus/queued-resources/delete
#   gcloud compute tpus tpu-vm create NAME --zone --accelerator-type --version
#     [--spot | --preemptible | --reserved]
#     https://cloud.google.com/sdk/gcloud/reference/compute/tpus/tpu-vm/create
#   runtime versions for JAX: v6e v2-alpha-tpuv6e, v5p v2-alpha-tpuv5, v5e
#     v2-alpha-tpuv5-lite, v4 and older tpu-ubuntu2204-base
#     https://cloud.google.com/tpu/docs/runtimes
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
PROG=tpu.sh

TPU_MODE=${TPU_MODE:-queued}
TPU_ACCELERATOR=${TPU_ACCELERATOR:-v4-32}
TPU_RUNTIME=${TPU_RUNTIME:-}
TPU_PROVISIONING=${TPU_PROVISIONING:-spot}
TPU_QR_NAME=${TPU_QR_NAME:-}
TPU_VALID_UNTIL=${TPU_VALID_UNTIL:-}
TPU_ASYNC=${TPU_ASYNC:-0}
EXTRA=()
if [[ -n ${TPU_CREATE_ARGS:-} ]]; then
  read -r -a EXTRA <<<"$TPU_CREATE_ARGS"
fi

usage() {
  cat <<'EOF'
usage: launch/tpu.sh create|delete|status|list [flags]

  create   request the TPU (queued resource, or a TPU VM with --mode vm)
  delete   delete it (a queued resource with --force: its TPU VMs go too)
  status   describe it (queued resource state: WAITING_FOR_RESOURCES, ACTIVE, ...)
  list     list the queued resources and TPU VMs in the zone

flags (environment variable, default):
  --name NAME            TPU_NAME (kdjax-tpu)          TPU VM / node id, used by setup.sh, run.sh
  --zone ZONE            TPU_ZONE (required)           e.g. us-central2-b (v4), us-east5-b (v6e)
  --project PROJECT      TPU_PROJECT (gcloud config)
  --accelerator TYPE     TPU_ACCELERATOR (v4-32)       v4-32, v5litepod-16, v5p-8, v6e-8, ...
  --runtime VERSION      TPU_RUNTIME (from TYPE)       tpu-ubuntu2204-base for v4, v2-alpha-tpuv5
                                                       (v5p), v2-alpha-tpuv5-lite (v5e),
                                                       v2-alpha-tpuv6e (v6e)
  --mode queued|vm       TPU_MODE (queued)             queued resource or plain `tpu-vm create`
  --provisioning MODEL   TPU_PROVISIONING (spot)       spot | reserved | best-effort (queued,
                                                       via gcloud alpha) | guaranteed (queued)
                                                       | preemptible (vm) | on-demand
  --spot, --reserved, --best-effort, --on-demand       shortcuts for --provisioning
  --qr-name NAME         TPU_QR_NAME (NAME-qr)         queued resource id
  --valid-until D        TPU_VALID_UNTIL (none)        give up a queued request after D (6h, 2d)
  --create-arg ARG       TPU_CREATE_ARGS               extra flag for create (repeatable), e.g.
                                                       --create-arg=--network=my-net
  --ssh-arg ARG          TPU_SSH_ARGS                  (for setup.sh / run.sh)
  --async                TPU_ASYNC=1                   do not wait for create/delete
  --dry-run              DRY_RUN=1                     print the gcloud commands, run nothing
  -h, --help
EOF
}

default_runtime() {
  case $1 in
    v2-* | v3-* | v4-*) echo tpu-ubuntu2204-base ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v5litepod-*) echo v2-alpha-tpuv5-lite ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) echo "" ;;
  esac
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
    --accelerator | --accelerator-type) need "$@"; TPU_ACCELERATOR=$2; shift 2 ;;
    --runtime | --runtime-version | --version) need "$@"; TPU_RUNTIME=$2; shift 2 ;;
    --mode) need "$@"; TPU_MODE=$2; shift 2 ;;
    --provisioning) need "$@"; TPU_PROVISIONING=$2; shift 2 ;;
    --spot | --reserved | --best-effort | --on-demand | --guaranteed | --preemptible)
      TPU_PROVISIONING=${1#--}; shift ;;
    --qr-name) need "$@"; TPU_QR_NAME=$2; shift 2 ;;
    --valid-until) need "$@"; TPU_VALID_UNTIL=$2; shift 2 ;;
    --create-arg) need "$@"; EXTRA+=("$2"); shift 2 ;;
    --ssh-arg) need "$@"; SSH_EXTRA+=("$2"); shift 2 ;;
    --async) TPU_ASYNC=1; shift ;;
    create | delete | status | list)
      [[ -z $CMD ]] || die "one command at a time (got $CMD and $1)"
      CMD=$1; shift ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

[[ -n $CMD ]] || die "give a command: create, delete, status or list (see --help)"
require TPU_ZONE --zone
[[ $CMD == list ]] || require TPU_NAME --name
case $TPU_MODE in queued | vm) ;; *) die "--mode must be queued or vm, got '$TPU_MODE'" ;; esac
if [[ $TPU_ACCELERATOR == v5e-* ]]; then  # the API's name for v5e slices
  TPU_ACCELERATOR=v5litepod-${TPU_ACCELERATOR#v5e-}
fi
TPU_QR_NAME=${TPU_QR_NAME:-$TPU_NAME-qr}
gcloud_args
ASYNC=()
if [[ $TPU_ASYNC == 1 ]]; then
  ASYNC=(--async)
fi

create() {
  local runtime=${TPU_RUNTIME:-$(default_runtime "$TPU_ACCELERATOR")}
  [[ -n $runtime ]] || die "no default runtime version for '$TPU_ACCELERATOR'; pass --runtime"
  local tier=()
  case $TPU_MODE:$TPU_PROVISIONING in
    *:spot) tier=(--spot) ;;
    *:reserved) tier=(--reserved) ;;
    *:on-demand) ;;
    queued:best-effort) tier=(--best-effort) ;;
    queued:guaranteed) tier=(--guaranteed) ;;
    vm:preemptible) tier=(--preemptible) ;;
    vm:best-effort | vm:guaranteed)
      die "--provisioning $TPU_PROVISIONING needs a queued resource (--mode queued)" ;;
    queued:preemptible) die "--provisioning preemptible is for --mode vm; use spot" ;;
    *) die "unknown --provisioning '$TPU_PROVISIONING' (spot, reserved, best-effort," \
      "guaranteed, preemptible, on-demand)" ;;
  esac
  if [[ $TPU_MODE == vm ]]; then
    run "$GCLOUD" compute tpus tpu-vm create "$TPU_NAME" --zone="$TPU_ZONE" \
      --accelerator-type="$TPU_ACCELERATOR" --version="$runtime" ${PROJ[@]+"${PROJ[@]}"} \
      ${tier[@]+"${tier[@]}"} ${ASYNC[@]+"${ASYNC[@]}"} ${EXTRA[@]+"${EXTRA[@]}"}
    return
  fi
  local gc=("$GCLOUD")
  if [[ $TPU_PROVISIONING == best-effort ]]; then
    gc+=(alpha)
  fi
  local until=()
  if [[ -n $TPU_VALID_UNTIL ]]; then
    until=(--valid-until-duration="$TPU_VALID_UNTIL")
  fi
  run "${gc[@]}" compute tpus queued-resources create "$TPU_QR_NAME" --node-id="$TPU_NAME" \
    --zone="$TPU_ZONE" --accelerator-type="$TPU_ACCELERATOR" --runtime-version="$runtime" \
    ${PROJ[@]+"${PROJ[@]}"} ${tier[@]+"${tier[@]}"} ${until[@]+"${until[@]}"} \
    ${ASYNC[@]+"${ASYNC[@]}"} ${EXTRA[@]+"${EXTRA[@]}"}
  if [[ $DRY_RUN != 1 ]]; then
    info "requested $TPU_ACCELERATOR as queued resource $TPU_QR_NAME (node $TPU_NAME);" \
      "wait for state ACTIVE: launch/tpu.sh status --name $TPU_NAME --zone $TPU_ZONE"
  fi
}

case $CMD in
  create) create ;;
  delete)
    if [[ $TPU_MODE == vm ]]; then
      run "$GCLOUD" compute tpus tpu-vm delete "$TPU_NAME" --zone="$TPU_ZONE" \
        ${PROJ[@]+"${PROJ[@]}"} --quiet ${ASYNC[@]+"${ASYNC[@]}"}
    else
      run "$GCLOUD" compute tpus queued-resources delete "$TPU_QR_NAME" --zone="$TPU_ZONE" \
        ${PROJ[@]+"${PROJ[@]}"} --force --quiet ${ASYNC[@]+"${ASYNC[@]}"}
    fi ;;
  status)
    if [[ $TPU_MODE == vm ]]; then
      run "$GCLOUD" compute tpus tpu-vm describe "$TPU_NAME" --zone="$TPU_ZONE" \
        ${PROJ[@]+"${PROJ[@]}"}
    else
      run "$GCLOUD" compute tpus queued-resources describe "$TPU_QR_NAME" \
        --zone="$TPU_ZONE" ${PROJ[@]+"${PROJ[@]}"}
    fi ;;
  list)
    run "$GCLOUD" compute tpus queued-resources list --zone="$TPU_ZONE" ${PROJ[@]+"${PROJ[@]}"}
    run "$GCLOUD" compute tpus tpu-vm list --zone="$TPU_ZONE" ${PROJ[@]+"${PROJ[@]}"} ;;
esac
