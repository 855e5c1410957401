#!/usr/bin/env bash
# local_cluster.sh -- a real, single-node SLURM cluster on this machine.
#
# What it is for:
#   * CI: exercise peftx's SLURM path (sbatch --array sweeps, requeue,
#     signal-based preemption) against the real Slurm daemons, not a mock.
#   * Users who want to try the SLURM path on one machine before moving to a
#     real cluster.
#
# It installs Debian's slurm-wlm, munge, slurmdbd and mariadb-server, writes
# /etc/slurm/slurm.conf for a one-node cluster (ClusterName=peftx-local,
# partition "debug") and /etc/slurm/slurmdbd.conf, and runs munged, a MariaDB
# server, slurmdbd, slurmctld and slurmd directly as daemons (no systemd
# needed, so it works in containers). With accounting, `sacct` knows every
# job (peftx asks it why a task died: OUT_OF_MEMORY, TIMEOUT, ...), and a job
# that outgrows its --mem is killed (JobAcctGatherParams=OverMemoryKill), as
# on a real cluster (in memory cgroups where the machine allows, else by
# polling). PEFTX_SLURM_ACCOUNTING=0 runs without slurmdbd (then peftx falls
# back to `scontrol show job`). Must be run as root.
#
# Usage: scripts/slurm/local_cluster.sh {install|start|stop|status}
#
# Environment overrides (all optional):
#   PEFTX_SLURM_CPUS           CPUs advertised for the node   (default: nproc)
#   PEFTX_SLURM_MEM_MB         RealMemory in MB               (default: free -m total minus max(5%, 256 MB))
#   PEFTX_SLURM_NODE           node name                      (default: hostname -s)
#   PEFTX_SLURM_KILL_WAIT      seconds between SIGTERM and SIGKILL on cancel/requeue (default: 10)
#   PEFTX_SLURM_CRED_EXPIRE    AuthInfo cred_expire; also how long a requeued job
#                              waits before it may start again (default: 10; Slurm's is 120)
#   PEFTX_SLURM_START_TIMEOUT  seconds to wait for the node to become idle (default: 60)
#   PEFTX_SLURM_ACCOUNTING     1: slurmdbd + MariaDB, sacct works (default); 0: none
#   PEFTX_SLURM_CGROUP         auto (default): memory cgroups if /sys/fs/cgroup/memory is writable; 1; 0
# Setting CPUs/memory above the real values is allowed (SlurmdParameters=
# config_overrides), e.g. to simulate a bigger node.
set -euo pipefail

CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
STATE_DIR=/var/spool/slurm-peftx          # ctld/ and d/ below
LOG_DIR=/var/log/slurm-peftx
RUN_DIR=/run/slurm-peftx
CTLD_PID=$RUN_DIR/slurmctld.pid
SLURMD_PID=$RUN_DIR/slurmd.pid
MUNGE_KEY=/etc/munge/munge.key
MUNGE_RUN=/run/munge
MUNGE_PID=$MUNGE_RUN/munged.pid
DBD_CONF=$CONF_DIR/slurmdbd.conf
DBD_PID=$RUN_DIR/slurmdbd.pid
DB_DIR=/var/lib/mysql
DB_RUN=/run/mysqld
DB_PID=$DB_RUN/mysqld.pid
DB_SOCKET=$DB_RUN/mysqld.sock
DB_PASS=peftx-local-slurmdbd            # a test database reachable through a local socket only

NODE=${PEFTX_SLURM_NODE:-$(hostname -s)}
KILL_WAIT=${PEFTX_SLURM_KILL_WAIT:-10}
CRED_EXPIRE=${PEFTX_SLURM_CRED_EXPIRE:-10}
START_TIMEOUT=${PEFTX_SLURM_START_TIMEOUT:-60}
ACCOUNTING=${PEFTX_SLURM_ACCOUNTING:-1}

log() { echo "[local_cluster] $*" >&2; }
die() { echo "[local_cluster] ERROR: $*" >&2; exit 1; }

need_root() { [[ $(id -u) -eq 0 ]] || die "must run as root"; }

# pid_alive PIDFILE -> 0 if the pid in PIDFILE is a live process
pid_alive() {
  local pid
  [[ -s $1 ]] || return 1
  pid=$(<"$1")
  [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null
}

# stop_pidfile NAME PIDFILE: SIGTERM, wait up to 10 s, then SIGKILL.
stop_pidfile() {
  local name=$1 pidfile=$2 pid i
  if ! pid_alive "$pidfile"; then rm -f "$pidfile"; return 0; fi
  pid=$(<"$pidfile")
  log "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name did not exit, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

cmd_install() {
  need_root
  local pkgs="slurm-wlm munge"
  (( ACCOUNTING )) && pkgs="$pkgs slurmdbd mariadb-server"
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null &&
     command -v sbatch >/dev/null && command -v munged >/dev/null &&
     { (( !ACCOUNTING )) || { command -v slurmdbd >/dev/null && command -v mariadbd >/dev/null; }; }; then
    log "$pkgs already installed"
    return 0
  fi
  log "installing $pkgs (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $pkgs >/dev/null
  log "installed: $(slurmctld -V)"
}

start_munge() {
  if [[ ! -s $MUNGE_KEY ]]; then
    log "creating munge key $MUNGE_KEY"
    install -d -o munge -g munge -m 0700 /etc/munge
    if command -v mungekey >/dev/null; then
      mungekey --create --keyfile="$MUNGE_KEY" --force
    else
      dd if=/dev/urandom of="$MUNGE_KEY" bs=1 count=1024 status=none
    fi
  fi
  # munged refuses to start unless the key and its dirs are owned by the
  # user it runs as; Debian's package owns them by "munge".
  chown munge:munge "$MUNGE_KEY"; chmod 0400 "$MUNGE_KEY"
  install -d -o munge -g munge -m 0755 "$MUNGE_RUN"
  install -d -o munge -g munge -m 0700 /var/log/munge
  install -d -o munge -g munge -m 0711 /var/lib/munge

  if pid_alive "$MUNGE_PID" && munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "munged already running"
    return 0
  fi
  rm -f "$MUNGE_PID" "$MUNGE_RUN"/munge.socket.2*   # stale leftovers
  # Started by root, dropping to the "munge" user like the systemd unit does
  # (munged as uid 0 rejects the package's munge-owned key/log dirs).
  runuser -u munge -- munged
  local i
  for ((i = 0; i < 25; i++)); do
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && { log "munged up"; return 0; }
    sleep 0.2
  done
  die "munged did not come up; see /var/log/munge/munged.log"
}

# ---- accounting: MariaDB (its local socket only) + slurmdbd ----

start_mariadb() {
  if pid_alive "$DB_PID" && mariadb-admin --socket="$DB_SOCKET" ping >/dev/null 2>&1; then
    log "mariadb already running"; return 0
  fi
  install -d -o mysql -g mysql -m 0755 "$DB_RUN"
  install -d -m 0755 "$LOG_DIR"
  if [[ ! -d $DB_DIR/mysql ]]; then
    log "initialising $DB_DIR"
    mariadb-install-db --user=mysql --datadir="$DB_DIR" --auth-root-authentication-method=socket >/dev/null
  fi
  touch "$LOG_DIR/mariadb.log" && chown mysql:mysql "$LOG_DIR/mariadb.log"
  runuser -u mysql -- mariadbd --datadir="$DB_DIR" --socket="$DB_SOCKET" --pid-file="$DB_PID" \
    --bind-address=127.0.0.1 --innodb-buffer-pool-size=64M --log-error="$LOG_DIR/mariadb.log" \
    >/dev/null 2>&1 </dev/null &
  local i
  for ((i = 0; i < 60; i++)); do
    mariadb-admin --socket="$DB_SOCKET" ping >/dev/null 2>&1 && break
    sleep 0.5
  done
  mariadb-admin --socket="$DB_SOCKET" ping >/dev/null 2>&1 || die "mariadb did not come up; see $LOG_DIR/mariadb.log"
  mariadb --socket="$DB_SOCKET" -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  log "mariadb up"
}

render_dbd_conf() {
  printf '%s\n' "# Generated by scripts/slurm/local_cluster.sh -- accounting for the peftx test cluster." \
    "AuthType=auth/munge" "DbdHost=localhost" "SlurmUser=root" "PidFile=$DBD_PID" \
    "LogFile=$LOG_DIR/slurmdbd.log" "StorageType=accounting_storage/mysql" "StorageLoc=slurm_acct_db" \
    "StorageUser=slurm" "StoragePass=$DB_PASS" "StorageHost=localhost" "StoragePort=3306"
}

start_slurmdbd() {
  install -d -m 0755 "$CONF_DIR" "$LOG_DIR" "$RUN_DIR"
  render_dbd_conf >"$DBD_CONF.tmp"
  chmod 0600 "$DBD_CONF.tmp"
  mv -f "$DBD_CONF.tmp" "$DBD_CONF"
  if ! pid_alive "$DBD_PID"; then
    slurmdbd || die "slurmdbd failed to start; see $LOG_DIR/slurmdbd.log"
  fi
  local i
  for ((i = 0; i < 60; i++)); do
    sacctmgr -n list cluster >/dev/null 2>&1 && break
    sleep 0.5
  done
  sacctmgr -n list cluster >/dev/null 2>&1 || die "slurmdbd does not answer; see $LOG_DIR/slurmdbd.log"
  sacctmgr -n -P list cluster format=cluster | grep -qx peftx-local ||
    sacctmgr -i add cluster peftx-local >/dev/null
  log "slurmdbd up (sacct works)"
}

# render_conf: print the slurm.conf for this machine on stdout.
render_conf() {
  local cpus mem total
  cpus=${PEFTX_SLURM_CPUS:-$(nproc)}
  total=$(free -m | awk '/^Mem:/ {print $2}')
  # Leave ~5% (at least 256 MB) for the OS and the daemons.
  mem=${PEFTX_SLURM_MEM_MB:-$(( total - (total / 20 > 256 ? total / 20 : 256) ))}
  (( mem > 0 )) || die "computed RealMemory=$mem MB; set PEFTX_SLURM_MEM_MB"
  # Without a default, a job that does not pass --mem is given the whole
  # node's memory, so array tasks would run one at a time.
  local def_mem=$(( mem / cpus ))
  cat <<EOF
# Generated by scripts/slurm/local_cluster.sh -- single-node peftx test cluster.
# Regenerated on every 'start'; edit the script, not this file.
ClusterName=peftx-local
SlurmctldHost=${NODE}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire also delays the restart of a requeued job (Slurm default 120 s).
AuthInfo=cred_expire=$CRED_EXPIRE
CredType=cred/munge
MpiDefault=none
SwitchType=switch/none

$(tracking_conf)
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
# Schedule every few seconds (defaults 60/30 s) so requeued jobs restart fast.
SchedulerParameters=sched_interval=2,bf_interval=5
# Trust the CPUs/RealMemory below even if they differ from the hardware.
SlurmdParameters=config_overrides

$(accounting_conf)
JobCompType=jobcomp/none

StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/d
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info

ReturnToService=2
JobRequeue=1
KillWait=$KILL_WAIT
# Keep finished jobs visible to 'scontrol show job' for 10 min (without accounting, all there is).
MinJobAge=600

NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP DefMemPerCPU=$def_mem
EOF
}

# Memory limits: with writable cgroup-v1 memory controllers (most containers and hosts), jobs run in
# cgroups that enforce --mem, and a job that outgrows it ends OUT_OF_MEMORY, as on real clusters.
# Without them, jobacct_gather samples memory every second and kills the job (state FAILED).
use_cgroup() {
  case ${PEFTX_SLURM_CGROUP:-auto} in
    1) return 0 ;; 0) return 1 ;;
  esac
  [[ -w /sys/fs/cgroup/memory && -e /sys/fs/cgroup/memory/memory.limit_in_bytes ]]
}

tracking_conf() {
  if use_cgroup; then
    printf '%s\n' "ProctrackType=proctrack/cgroup" "TaskPlugin=task/cgroup"
  else
    printf '%s\n' "ProctrackType=proctrack/linuxproc" "TaskPlugin=task/none"
  fi
}

write_cgroup_conf() {
  use_cgroup || return 0
  printf '%s\n' "# Generated by scripts/slurm/local_cluster.sh" "CgroupPlugin=cgroup/v1" "CgroupAutomount=yes" \
    "ConstrainRAMSpace=yes" "ConstrainSwapSpace=yes" "AllowedSwapSpace=0" >"$CONF_DIR/cgroup.conf"
}

accounting_conf() {
  local gather="jobacct_gather/linux" params="JobAcctGatherParams=OverMemoryKill"
  use_cgroup && gather="jobacct_gather/cgroup" params=""
  if (( ACCOUNTING )); then
    printf '%s\n' "AccountingStorageType=accounting_storage/slurmdbd" "AccountingStorageHost=localhost" \
      "JobAcctGatherType=$gather" "JobAcctGatherFrequency=task=1" $params
  else
    printf '%s\n' "JobAcctGatherType=jobacct_gather/none" "AccountingStorageType=accounting_storage/none"
  fi
}

# conf_is_current: 0 if $CONF already equals what render_conf prints.
conf_is_current() { cmp -s <(render_conf) "$CONF"; }

write_conf() {
  install -d -m 0755 "$CONF_DIR" "$LOG_DIR" "$RUN_DIR" \
    "$STATE_DIR" "$STATE_DIR/ctld" "$STATE_DIR/d"
  write_cgroup_conf
  if ! conf_is_current; then
    render_conf >"$CONF.tmp"
    chmod 0644 "$CONF.tmp"
    mv -f "$CONF.tmp" "$CONF"
    log "wrote $CONF: $(grep '^NodeName=' "$CONF")"
  fi
}

node_state() { sinfo -h -N -n "$NODE" -o %t 2>/dev/null | head -n1; }

cmd_start() {
  need_root
  command -v slurmctld >/dev/null || die "slurm not installed; run: $0 install"
  local t0=$SECONDS
  start_munge
  # sacctmgr (below) reads slurm.conf: bring it up to date first, unless the daemons run on the old one
  pid_alive "$CTLD_PID" && pid_alive "$SLURMD_PID" || write_conf
  if (( ACCOUNTING )); then
    command -v slurmdbd >/dev/null || die "slurmdbd not installed; run: $0 install"
    start_mariadb
    start_slurmdbd
  fi

  if pid_alive "$CTLD_PID" && pid_alive "$SLURMD_PID" && scontrol ping >/dev/null 2>&1; then
    log "slurmctld and slurmd already running"
    conf_is_current ||
      log "WARNING: settings changed since the daemons started; run '$0 stop' then '$0 start' to apply them"
  else
    write_conf
    # Restart whatever half is left so both read the same config.
    stop_pidfile slurmd "$SLURMD_PID"
    stop_pidfile slurmctld "$CTLD_PID"
    # -i: ignore unreadable/stale state files instead of refusing to start.
    slurmctld -i || die "slurmctld failed to start; see $LOG_DIR/slurmctld.log"
    slurmd -N "$NODE" || die "slurmd failed to start; see $LOG_DIR/slurmd.log"
  fi

  local state="" resumed=0
  while (( SECONDS - t0 < START_TIMEOUT )); do
    state=$(node_state)
    case $state in
      idle|mix|alloc|comp) log "node $NODE is $state ($((SECONDS - t0))s)"; sinfo; return 0 ;;
      drain*|down*|drng*|inval*|fail*)
        # e.g. a node left DOWN/DRAINED in the saved state of an earlier run
        if (( !resumed )) && pid_alive "$SLURMD_PID"; then
          log "node is '$state', resuming it"
          scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true
          resumed=1
        fi ;;
    esac
    pid_alive "$CTLD_PID" || die "slurmctld exited; see $LOG_DIR/slurmctld.log"
    pid_alive "$SLURMD_PID" || die "slurmd exited; see $LOG_DIR/slurmd.log"
    sleep 1
  done
  die "node $NODE not idle after ${START_TIMEOUT}s (state='${state:-none}'); see $LOG_DIR/*.log and 'scontrol show node $NODE'"
}

cmd_stop() {
  need_root
  if pid_alive "$CTLD_PID"; then
    # Don't leave orphaned job steps behind: cancel everything first.
    if [[ -n $(squeue -h -o %i 2>/dev/null) ]]; then
      log "cancelling remaining jobs"
      squeue -h -o %i | xargs -r scancel 2>/dev/null || true
      local i
      for ((i = 0; i < 30; i++)); do
        [[ -z $(squeue -h -o %i 2>/dev/null) ]] && break
        sleep 0.5
      done
    fi
  fi
  stop_pidfile slurmd "$SLURMD_PID"
  stop_pidfile slurmctld "$CTLD_PID"
  stop_pidfile slurmdbd "$DBD_PID"
  stop_pidfile mariadb "$DB_PID"
  stop_pidfile munged "$MUNGE_PID"
  log "stopped"
}

cmd_status() {
  local rc=0 name pidfile
  for name in munged mariadb slurmdbd slurmctld slurmd; do
    case $name in
      munged) pidfile=$MUNGE_PID ;; slurmctld) pidfile=$CTLD_PID ;; slurmd) pidfile=$SLURMD_PID ;;
      mariadb) pidfile=$DB_PID ;; slurmdbd) pidfile=$DBD_PID ;;
    esac
    if [[ $name == mariadb || $name == slurmdbd ]] && (( !ACCOUNTING )); then continue; fi
    if pid_alive "$pidfile"; then
      echo "$name: running (pid $(<"$pidfile"))"
    else
      echo "$name: stopped"; rc=1
    fi
  done
  if (( rc == 0 )); then sinfo; squeue; fi
  return "$rc"
}

case ${1:-} in
  install) cmd_install ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) echo "usage: $0 {install|start|stop|status}" >&2; exit 2 ;;
esac
