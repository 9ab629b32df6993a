#!/usr/bin/env bash
# Start a throw-away single-node Slurm cluster (with accounting) for tests.
# Runs as root on Debian 12, without systemd. Idempotent: a second call with the same
# BASE_DIR only starts what is not running and prints the same export line. Clusters in
# different BASE_DIRs run side by side: each has its own ports, state, logs and database.
#
# Usage: bash scripts/slurm_up.sh [BASE_DIR]      (default /tmp/xpkit-slurm)
#        eval "$(bash scripts/slurm_up.sh)"   (stdout is only the export line)
# Env:   SLURM_CI_CPUS=<n>        advertised CPUs (default max(nproc, 4))
#        SLURM_CI_ACCOUNTING=0    no slurmdbd/MariaDB (sacct then does not work)
#        SLURM_CI_PORTS="CTLD SLURMD DBD DB"   ports of slurmctld, slurmd, slurmdbd and
#                                 MariaDB (default: the first free ones from 6817 6818 6819
#                                 3307 up); kept in BASE_DIR/ports while the cluster runs
#        SLURM_CI_MAX_ARRAY_SIZE=<n>  MaxArraySize (default 8, so tests split arrays; Slurm's is 1001)
# Stop:  bash scripts/slurm_down.sh [BASE_DIR]
set -euo pipefail
BASE=${1:-/tmp/xpkit-slurm}
ACCT=${SLURM_CI_ACCOUNTING:-1}
export DEBIAN_FRONTEND=noninteractive
[ "$(id -u)" = 0 ] || { echo "slurm_up.sh: must run as root" >&2; exit 1; }

# one start at a time on this machine: two clusters starting at once would pick the same
# free ports, and apt-get would find dpkg locked. Daemons must not inherit the lock (9>&-).
exec 9>/tmp/xpkit-slurm.lock
flock 9

# alive PIDFILE NAME: the pid in PIDFILE runs a process whose name starts with NAME
alive() {
  [ -f "$1" ] || return 1
  local pid; pid=$(cat "$1" 2>/dev/null) || return 1
  [ -n "$pid" ] && grep -q "^$2" "/proc/$pid/comm" 2>/dev/null
}
wait_for() {  # wait_for SECONDS CMD...: retry CMD every 0.25 s
  local n=$(( $1 * 4 )); shift
  for _ in $(seq 1 "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.25; done
  return 1
}
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
refuse() { echo "slurm_up.sh: $*" >&2; exit 1; }  # bad settings: one line, nothing started
fail() {  # a daemon did not start: say which, with the end of the logs
  echo "slurm_up.sh: $*" >&2
  for f in "$BASE"/log/*.log "$BASE"/munge/munged.log; do
    [ -f "$f" ] && { echo "== $f" >&2; tail -n 15 "$f" >&2; }
  done
  exit 1
}
daemon() { "$@" </dev/null >/dev/null 2>&1 9>&-; }  # a daemon forks itself into the background

# 1. packages (Debian 12: Slurm 22.05, munge 0.5, MariaDB 10.11)
need="slurmctld slurmd slurm-client munge"
[ "$ACCT" = 1 ] && need="$need slurmdbd mariadb-server mariadb-client"
missing=""
for p in $need; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "installing:$missing" >&2
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

HOST=$(hostname -s)
NPROC=$(nproc)
CPUS=${SLURM_CI_CPUS:-$(( NPROC > 4 ? NPROC : 4 ))}
MEM=$(( $(awk '/MemTotal/{print $2}' /proc/meminfo) / 1024 * 9 / 10 ))
SOCK=$BASE/munge/munge.socket.2
mkdir -p "$BASE"/{munge,state,spool,log,db}
chmod 755 "$BASE" "$BASE/munge"            # munged: socket dir must be a+x
export SLURM_CONF=$BASE/slurm.conf

# ports: while a daemon of BASE runs, the ones it uses; else SLURM_CI_PORTS, or free ones
DAEMONS="slurmctld:slurmctld.pid slurmd:slurmd.pid slurmdbd:slurmdbd.pid mariadbd:mysqld.pid"
[ "$ACCT" = 1 ] || DAEMONS="slurmctld:slurmctld.pid slurmd:slurmd.pid"
running=""
for d in $DAEMONS; do alive "$BASE/${d#*:}" "${d%%:*}" && running="$running ${d%%:*}"; done
free_port() {  # free_port FROM TAKEN...: the first port from FROM on that nothing listens on
  local p=$1; shift
  while listening "$p" || [[ " $* " == *" $p "* ]]; do p=$((p + 1)); done
  echo "$p"
}
if [ -n "$running" ] && [ -f "$BASE/ports" ]; then
  read -r CTLD_PORT SLURMD_PORT DBD_PORT DB_PORT < "$BASE/ports"
elif [ -n "$running" ]; then  # started by a version of this script that had fixed ports
  read -r CTLD_PORT SLURMD_PORT DBD_PORT DB_PORT <<<"6817 6818 6819 3307"
elif [ -n "${SLURM_CI_PORTS:-}" ]; then
  read -r CTLD_PORT SLURMD_PORT DBD_PORT DB_PORT <<<"$SLURM_CI_PORTS"
  for p in $CTLD_PORT $SLURMD_PORT $DBD_PORT $DB_PORT; do
    [[ $p =~ ^[0-9]+$ ]] && [ "$p" -ge 1 ] && [ "$p" -le 65535 ] || DB_PORT=""
  done
  [ -n "$DB_PORT" ] ||
    refuse "SLURM_CI_PORTS='$SLURM_CI_PORTS': give 4 ports (slurmctld slurmd slurmdbd MariaDB)"
else
  CTLD_PORT=$(free_port 6817)
  SLURMD_PORT=$(free_port $((CTLD_PORT + 1)) "$CTLD_PORT")
  DBD_PORT=$(free_port $((SLURMD_PORT + 1)) "$CTLD_PORT" "$SLURMD_PORT")
  DB_PORT=$(free_port 3307 "$CTLD_PORT" "$SLURMD_PORT" "$DBD_PORT")
fi
# a daemon we have to start needs its port free
hint="choose others (SLURM_CI_PORTS), or stop the cluster using it with slurm_down.sh ITS_BASE_DIR"
[ -z "$running" ] || hint="stop this cluster with slurm_down.sh $BASE; a new start picks free ports"
for d in slurmctld:slurmctld.pid:$CTLD_PORT slurmd:slurmd.pid:$SLURMD_PORT \
         slurmdbd:slurmdbd.pid:$DBD_PORT mariadbd:mysqld.pid:$DB_PORT; do
  IFS=: read -r name pidf port <<<"$d"
  [[ " $DAEMONS " == *" $name:"* ]] || continue
  if ! alive "$BASE/$pidf" "$name" && listening "$port"; then
    refuse "port $port ($name) is taken: $hint"
  fi
done
echo "$CTLD_PORT $SLURMD_PORT $DBD_PORT $DB_PORT" > "$BASE/ports"

# 2. munge, with a private key and socket
if ! alive "$BASE/munge/munged.pid" munged; then
  if [ ! -f "$BASE/munge/munge.key" ]; then
    dd if=/dev/urandom of="$BASE/munge/munge.key" bs=1024 count=1 status=none
    chmod 400 "$BASE/munge/munge.key"
  fi
  rm -f "$SOCK" "$SOCK.lock"
  daemon munged --key-file="$BASE/munge/munge.key" --socket="$SOCK" \
    --pid-file="$BASE/munge/munged.pid" --log-file="$BASE/munge/munged.log" \
    --seed-file="$BASE/munge/munged.seed" || fail "munged did not start"
fi

# 3. configuration; a running controller re-reads it if it changed
cat > "$SLURM_CONF.new" <<EOF
ClusterName=xpkit
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCK,cred_expire=10
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool
SlurmctldPidFile=$BASE/slurmctld.pid
SlurmdPidFile=$BASE/slurmd.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
EnforcePartLimits=ALL
MinJobAge=600
MaxArraySize=${SLURM_CI_MAX_ARRAY_SIZE:-8}
KillWait=5
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
if [ "$ACCT" = 1 ]; then
  cat >> "$SLURM_CONF.new" <<EOF
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
AccountingStoragePass=$SOCK
EOF
fi
CHANGED=0
if cmp -s "$SLURM_CONF.new" "$SLURM_CONF"; then rm -f "$SLURM_CONF.new"
else mv "$SLURM_CONF.new" "$SLURM_CONF"; CHANGED=1; fi

if [ "$ACCT" = 1 ]; then
  cat > "$BASE/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$SOCK
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$BASE/slurmdbd.pid
LogFile=$BASE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurmpw
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$BASE/slurmdbd.conf"           # slurmdbd refuses a readable conf

  # 4. MariaDB on 127.0.0.1:$DB_PORT, data under $BASE/db
  db() { mariadb --no-defaults -S "$BASE/mysqld.sock" -u root "$@"; }
  if ! alive "$BASE/mysqld.pid" mariadbd; then
    if [ ! -d "$BASE/db/mysql" ]; then
      mariadb-install-db --user=root --datadir="$BASE/db" --skip-test-db \
        --auth-root-authentication-method=socket >"$BASE/log/mariadb-install.log" 2>&1 \
        || fail "mariadb-install-db failed"
    fi
    setsid mariadbd --no-defaults --user=root --datadir="$BASE/db" \
      --socket="$BASE/mysqld.sock" --pid-file="$BASE/mysqld.pid" --port="$DB_PORT" \
      --bind-address=127.0.0.1 --log-error="$BASE/log/mysqld.log" \
      --innodb-buffer-pool-size=64M </dev/null >/dev/null 2>&1 9>&- &
    mpid=$!
    for _ in $(seq 1 240); do
      db -e 'select 1' >/dev/null 2>&1 && break
      kill -0 "$mpid" 2>/dev/null || break
      sleep 0.25
    done
  fi
  db -e 'select 1' >/dev/null 2>&1 || fail "MariaDB did not start"
  db -e "
    CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurmpw';
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmpw';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
  if ! alive "$BASE/slurmdbd.pid" slurmdbd; then
    daemon slurmdbd                          # reads slurmdbd.conf next to $SLURM_CONF
  fi
  wait_for 30 timeout 5 sacctmgr -n list cluster || fail "slurmdbd did not answer"
fi

# 5. controller and node daemon
ping_up() { timeout 5 scontrol ping 2>/dev/null | grep -q UP; }
if ! alive "$BASE/slurmctld.pid" slurmctld; then
  daemon slurmctld
  wait_for 30 ping_up || fail "slurmctld did not answer"
elif [ "$CHANGED" = 1 ]; then
  wait_for 30 ping_up || fail "slurmctld did not answer"
  timeout 10 scontrol reconfigure || fail "scontrol reconfigure failed"
fi
if ! alive "$BASE/slurmd.pid" slurmd; then
  daemon slurmd
fi
state() { timeout 5 sinfo -h -n "$HOST" -o %T 2>/dev/null; }
for _ in $(seq 1 240); do
  case "$(state)" in
    idle|mixed|allocated|completing) break ;;
    # a node drained or down in the saved state (a job killed while the cluster stopped)
    drained*|draining*|down*) timeout 5 scontrol update NodeName="$HOST" State=RESUME || true ;;
  esac
  alive "$BASE/slurmctld.pid" slurmctld || break
  sleep 0.25
done
case "$(state)" in
  idle|mixed|allocated|completing) ;;
  *) fail "node $HOST is not up (state: '$(state)')" ;;
esac
timeout 5 sinfo >&2
echo "slurm_up.sh: $BASE: slurmctld :$CTLD_PORT, slurmd :$SLURMD_PORT$( [ "$ACCT" = 1 ] &&
  echo ", slurmdbd :$DBD_PORT, MariaDB :$DB_PORT")" >&2
echo "export SLURM_CONF=$SLURM_CONF"
