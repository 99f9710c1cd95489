#!/usr/bin/env bash
# Bring up a real single-node SLURM cluster on this machine (Debian/Ubuntu packages slurm-wlm and munge,
# optionally slurmdbd + MariaDB for accounting), without systemd. Used by tests/test_slurm.py and for
# trying cluster sweeps locally. Run as root. Recipe: docs/sweeps.md.
#
# Nothing under /etc/slurm is touched: the configuration, spool, state, logs and pid files live under
# $RLREG_SLURM_DIR (default /tmp/rlreg-slurm) and clients find the cluster through SLURM_CONF:
#     scripts/slurm/up.sh && export SLURM_CONF=/tmp/rlreg-slurm/etc/slurm.conf
# Stop everything it started with scripts/slurm/down.sh (by PID).
#
# Environment:
#   RLREG_SLURM_DIR   state folder (default /tmp/rlreg-slurm)
#   WITH_ACCOUNTING   1 (default): MariaDB + slurmdbd, so sacct and submitit's job states work
#   NCPUS             CPUs of the node (default: nproc)
#   NODE_MEM_MB       memory of the node in MB (default: 80% of MemTotal)
#   CRED_EXPIRE       seconds a requeued job waits before it may start again (default 5; SLURM's is 120)
#   NO_INSTALL        1: never call apt-get (fail with exit code 3 if packages are missing)
# Exit codes: 0 the node is idle, 2 not root, 3 packages missing and not installable, 4 a daemon failed.
set -euo pipefail

DIR=${RLREG_SLURM_DIR:-/tmp/rlreg-slurm}
WITH_ACCOUNTING=${WITH_ACCOUNTING:-1}
NCPUS=${NCPUS:-$(nproc)}
NODE_MEM_MB=${NODE_MEM_MB:-$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.8}' /proc/meminfo)}
CRED_EXPIRE=${CRED_EXPIRE:-5}
CLUSTER=rlreg
NODE=$(hostname -s)
CONF=$DIR/etc/slurm.conf

say() { echo "[slurm-up] $*"; }
die() { local code=$1; shift; echo "[slurm-up] error: $*" >&2; exit "$code"; }
alive() { [ -s "$1" ] && [ "$(cat "/proc/$(cat "$1")/comm" 2>/dev/null)" = "$2" ]; }  # alive <pidfile> <comm>
wait_for() { local tries=$1; shift; for _ in $(seq "$tries"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done; return 1; }

[ "$(id -u)" = 0 ] || die 2 "must run as root (slurmctld/slurmd/munged are started directly)"

# --- packages ------------------------------------------------------------------------------------
need=()
for bin in munged slurmctld slurmd sbatch; do
  command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || need+=("$bin")
done
PKGS="munge slurm-wlm slurmctld slurmd slurm-client"
if [ "$WITH_ACCOUNTING" = 1 ]; then
  { [ -x /usr/sbin/slurmdbd ] && [ -x /usr/sbin/mariadbd ]; } || need+=(slurmdbd mariadbd)
  PKGS="$PKGS slurmdbd mariadb-server"
fi
if [ ${#need[@]} -gt 0 ]; then
  [ "${NO_INSTALL:-0}" = 1 ] && die 3 "missing ${need[*]} and NO_INSTALL=1"
  command -v apt-get >/dev/null 2>&1 || die 3 "missing ${need[*]} and no apt-get to install $PKGS"
  say "installing $PKGS"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends $PKGS >/dev/null; } \
    || die 3 "apt-get could not install $PKGS"
fi

mkdir -p "$DIR"/{etc,run,log,state,spool}
: > "$DIR/started"   # daemons this script started (down.sh stops only these)

# --- munge (system-wide; reused when it already runs) --------------------------------------------
if alive /run/munge/munged.pid munged; then
  say "munged already running (pid $(cat /run/munge/munged.pid)), reusing it"
else
  if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --force 2>/dev/null || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 2>/dev/null
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  fi
  mkdir -p /run/munge && chown munge:munge /run/munge && chmod 0755 /run/munge
  runuser -u munge -- /usr/sbin/munged || die 4 "munged did not start"
  echo "/run/munge/munged.pid munged" >> "$DIR/started"
fi
wait_for 20 bash -c 'munge -n | unmunge' || die 4 "munge does not work"

# --- accounting: MariaDB + slurmdbd (optional) ---------------------------------------------------
ACCT="AccountingStorageType=accounting_storage/none"
FIRST_JOB_ID=1
if [ "$WITH_ACCOUNTING" = 1 ]; then
  if ! mariadb -u root -e 'select 1' >/dev/null 2>&1; then
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
    # mariadbd runs as mysql, so its pid file stays in /run/mysqld
    /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 --pid-file=/run/mysqld/mysqld.pid \
      >"$DIR/log/mariadb.log" 2>&1 &
    wait_for 120 mariadb -u root -e 'select 1' || die 4 "MariaDB did not start (see $DIR/log/mariadb.log)"
    echo "/run/mysqld/mysqld.pid mariadbd" >> "$DIR/started"
  fi
  mariadb -u root -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmpw';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  # slurmctld starts with a clean state (-i); continue the job ids the accounting database already
  # holds, or sacct would mix old records into new jobs' states.
  last=$(mariadb -N -u root -e "SELECT COALESCE(MAX(id_job), 0) FROM slurm_acct_db.${CLUSTER}_job_table" 2>/dev/null || echo 0)
  FIRST_JOB_ID=$((last + 1))
  cat > "$DIR/etc/slurmdbd.conf" <<EOC
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
LogFile=$DIR/log/slurmdbd.log
PidFile=$DIR/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3306
StorageUser=slurm
StoragePass=slurmpw
StorageLoc=slurm_acct_db
EOC
  chmod 600 "$DIR/etc/slurmdbd.conf"
  ACCT="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819"
fi

cat > "$CONF" <<EOC
# written by scripts/slurm/up.sh
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=$CRED_EXPIRE
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
$ACCT
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.log
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
FirstJobId=$FIRST_JOB_ID
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldPort=6817
SlurmdPort=6818
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$NCPUS RealMemory=$NODE_MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOC
export SLURM_CONF=$CONF

for d in slurmdbd slurmctld slurmd; do
  alive "$DIR/run/$d.pid" "$d" && die 4 "$d already running (pid $(cat "$DIR/run/$d.pid")); run scripts/slurm/down.sh first"
done
if [ "$WITH_ACCOUNTING" = 1 ]; then
  /usr/sbin/slurmdbd || die 4 "slurmdbd did not start (see $DIR/log/slurmdbd.log)"
  echo "$DIR/run/slurmdbd.pid slurmdbd" >> "$DIR/started"
  wait_for 60 sacctmgr -n show cluster || die 4 "slurmdbd does not answer (see $DIR/log/slurmdbd.log)"
  sacctmgr -n show cluster format=cluster | grep -qw "$CLUSTER" || sacctmgr -i add cluster "$CLUSTER" >/dev/null
fi
/usr/sbin/slurmctld -i -f "$CONF" || die 4 "slurmctld did not start (see $DIR/log/slurmctld.log)"
echo "$DIR/run/slurmctld.pid slurmctld" >> "$DIR/started"
/usr/sbin/slurmd -f "$CONF" || die 4 "slurmd did not start (see $DIR/log/slurmd.log)"
echo "$DIR/run/slurmd.pid slurmd" >> "$DIR/started"
wait_for 60 bash -c 'sinfo -h -o %t | grep -q idle' || die 4 "node $NODE did not become idle (see $DIR/log/)"
say "node $NODE idle with $NCPUS CPUs, ${NODE_MEM_MB} MB; accounting: $([ "$WITH_ACCOUNTING" = 1 ] && echo on || echo off)"
echo "SLURM_CONF=$CONF"
