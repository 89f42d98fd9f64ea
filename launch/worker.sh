#!/usr/bin/env bash
# The worker side of launch/run.sh: runs ON each TPU VM worker (run.sh calls it through
# `gcloud compute tpus tpu-vm ssh --worker=...`); it also runs anywhere else, e.g. on a GPU
# workstation, to get the same detached run + log + stop behaviour.
#
#   worker.sh check  --log FILE                 fail if a run with this log is still alive
#   worker.sh run    --log FILE [--upload URL] -- CMD...
#                    run CMD with stdout+stderr appended to FILE, its pid in FILE's .pid;
#                    when CMD ends: a status line in FILE, FILE copied to URL/ (gs://), pid
#                    file removed. run.sh detaches it with `setsid nohup ... &`.
#   worker.sh stop   --log FILE [--signal TERM] [--wait SECONDS]
#                    send the signal to CMD (kdjax checkpoints on SIGTERM and exits)
#   worker.sh status --log FILE                 running or not, and the last log line
#   worker.sh tail   --log FILE [--lines N] [--follow]
set -euo pipefail
PROG=worker.sh

die() {
  printf '%s: error: %s\n' "$PROG" "$*" >&2
  exit 2
}

CMD=${1:-}
[[ -n $CMD ]] || die "usage: worker.sh check|run|stop|status|tail --log FILE [...] (see header)"
shift
LOG=""
UPLOAD=""
SIGNAL=TERM
WAIT=0
LINES=100
FOLLOW=0
while (($#)); do
  case $1 in
    --log) LOG=${2:?--log needs a value}; shift 2 ;;
    --upload) UPLOAD=${2-}; shift 2 ;;
    --signal) SIGNAL=${2:?--signal needs a value}; shift 2 ;;
    --wait) WAIT=${2:?--wait needs a value}; shift 2 ;;
    --lines) LINES=${2:?--lines needs a value}; shift 2 ;;
    --follow) FOLLOW=1; shift ;;
    --) shift; break ;;
    *) die "unknown argument '$1'" ;;
  esac
done
[[ -n $LOG ]] || die "--log FILE is required"
PIDFILE=${LOG%.log}.pid
HOST=$(hostname)

alive() {  # prints the pid of the live run, or fails
  local pid
  [[ -s $PIDFILE ]] || return 1
  pid=$(cat "$PIDFILE")
  kill -0 "$pid" 2>/dev/null || return 1
  printf '%s\n' "$pid"
}

stamp() { date -u +%Y-%m-%dT%H:%M:%SZ; }

case $CMD in
  check)
    if pid=$(alive); then
      echo "$HOST: already running (pid $pid, log $LOG); stop it first (launch/run.sh stop)" >&2
      exit 1
    fi ;;
  run)
    (($#)) || die "run needs a command after --"
    if pid=$(alive); then
      die "$HOST: already running (pid $pid)"
    fi
    mkdir -p "$(dirname "$LOG")"
    printf '[launch] %s %s: %s\n' "$(stamp)" "$HOST" "$*" >>"$LOG"
    "$@" >>"$LOG" 2>&1 </dev/null &
    child=$!
    echo "$child" >"$PIDFILE"
    # A signal sent to this wrapper (e.g. by a VM shutdown) goes on to the run, and the
    # wrapper keeps waiting for it to write its checkpoint.
    trap 'kill -TERM "$child" 2>/dev/null || true' TERM INT HUP
    rc=0
    wait "$child" || rc=$?
    while kill -0 "$child" 2>/dev/null; do  # the wait was interrupted by a trapped signal
      rc=0
      wait "$child" || rc=$?
    done
    printf '[launch] %s %s: exit status %s\n' "$(stamp)" "$HOST" "$rc" >>"$LOG"
    if [[ $UPLOAD == gs://* ]]; then
      gcloud storage cp "$LOG" "${UPLOAD%/}/" >/dev/null 2>&1 || true
    fi
    rm -f "$PIDFILE"
    exit "$rc" ;;
  stop)
    if ! pid=$(alive); then
      echo "$HOST: not running"
      exit 0
    fi
    kill -s "$SIGNAL" "$pid"
    echo "$HOST: sent SIG$SIGNAL to pid $pid (kdjax saves a checkpoint, then exits)"
    ticks=0  # of 0.2 s
    while ((ticks < WAIT * 5)) && kill -0 "$pid" 2>/dev/null; do
      sleep 0.2
      ticks=$((ticks + 1))
    done
    if ((WAIT > 0)); then
      if kill -0 "$pid" 2>/dev/null; then
        echo "$HOST: still running after ${WAIT}s"
        exit 1
      fi
      echo "$HOST: stopped; $(tail -n 1 "$LOG" 2>/dev/null || true)"
    fi ;;
  status)
    if pid=$(alive); then
      echo "$HOST: running (pid $pid), log $LOG"
    else
      echo "$HOST: not running, log $LOG"
    fi
    if [[ -f $LOG ]]; then
      tail -n 2 "$LOG"
    fi ;;
  tail)
    [[ -f $LOG ]] || die "$HOST: no log $LOG (started with launch/run.sh run?)"
    if ((FOLLOW)); then
      exec tail -n "$LINES" -F "$LOG"
    fi
    tail -n "$LINES" "$LOG" ;;
  *) die "unknown command '$CMD' (check, run, stop, status, tail)" ;;
esac
