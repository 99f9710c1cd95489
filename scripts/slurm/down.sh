#!/usr/bin/env bash
# Cancel the cluster's remaining jobs, then stop the daemons scripts/slurm/up.sh started, by PID, newest
# first (slurmd, slurmctld, slurmdbd, MariaDB, munged). Daemons it found already running are left alone. A pid is only signalled when
# /proc/<pid>/comm still names the expected daemon, so a stale pid file cannot hit another process.
set -uo pipefail
DIR=${RLREG_SLURM_DIR:-/tmp/rlreg-slurm}
[ -f "$DIR/started" ] || { echo "[slurm-down] nothing to stop ($DIR/started not found)"; exit 0; }

stop() {  # stop <pidfile> <comm>
  local file=$1 want=$2 pid
  [ -s "$file" ] || return 0
  pid=$(cat "$file")
  if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$want" ]; then
    kill "$pid" && echo "[slurm-down] stopped $want ($pid)"
    for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -0 "$pid" 2>/dev/null && { kill -KILL "$pid"; echo "[slurm-down] killed $want ($pid)"; }
  fi
  case "$file" in "$DIR"/*) rm -f "$file" ;; esac
}

# Cancel the jobs still queued or running and let them end while slurmd is up, so that no slurmstepd
# (and no job process) outlives the cluster.
if [ -s "$DIR/run/slurmctld.pid" ] && [ "$(cat "/proc/$(cat "$DIR/run/slurmctld.pid")/comm" 2>/dev/null)" = slurmctld ]; then
  export SLURM_CONF=$DIR/etc/slurm.conf
  jobs=$(squeue -h -o %A 2>/dev/null | sort -u)
  if [ -n "$jobs" ]; then
    echo "[slurm-down] cancelling jobs: $(echo $jobs)"
    scancel $jobs 2>/dev/null
    for _ in $(seq 120); do [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.5; done
  fi
fi

tac "$DIR/started" | while read -r file comm; do stop "$file" "$comm"; done
rm -f "$DIR/started"
