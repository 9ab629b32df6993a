#!/usr/bin/env bash
# Stop the cluster started by slurm_up.sh: cancel jobs, then stop each daemon
# by the pid in its pid file, in reverse order. Safe when nothing runs.
# Usage: bash scripts/slurm_down.sh [BASE_DIR]  (default /tmp/xpkit-slurm)
#        SLURM_CI_PURGE=1 also deletes BASE_DIR (state, logs, accounting db).
set -uo pipefail
BASE=${1:-/tmp/xpkit-slurm}
export SLURM_CONF=$BASE/slurm.conf

alive() {  # alive PIDFILE NAME: print the pid if it runs a process named NAME*
  [ -f "$1" ] || return 1
  local pid; pid=$(cat "$1" 2>/dev/null) || return 1
  [ -n "$pid" ] && grep -q "^$2" "/proc/$pid/comm" 2>/dev/null && echo "$pid"
}

if alive "$BASE/slurmctld.pid" slurmctld >/dev/null; then
  timeout 10 scancel --user=root 2>/dev/null || true
fi
stop() {  # stop NAME:PIDFILE...: TERM them together, wait, KILL the stuck ones
  local pids="" d f name pid
  for d in "$@"; do
    name=${d%%:*}; f=$BASE/${d#*:}
    pid=$(alive "$f" "$name") && { kill "$pid" 2>/dev/null; pids="$pids $pid"; }
  done
  for pid in $pids; do
    for _ in $(seq 1 80); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "slurm_down.sh: pid $pid still alive, sending KILL" >&2
      kill -9 "$pid" 2>/dev/null
    fi
  done
  for d in "$@"; do rm -f "$BASE/${d#*:}"; done
}
# reverse start order; slurmctld flushes to slurmdbd, slurmdbd to MariaDB
stop slurmd:slurmd.pid slurmctld:slurmctld.pid
stop slurmdbd:slurmdbd.pid
stop mariadbd:mysqld.pid munged:munge/munged.pid
rm -f "$BASE/ports"                          # the next start picks free ports again
if [ "${SLURM_CI_PURGE:-0}" = 1 ]; then
  rm -rf "$BASE"
fi
echo "slurm_down.sh: stopped ($BASE)" >&2
